package smime

import (
	"bytes"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"unicode/utf8"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// maxCSRBytes bounds one PKCS#10 request; real ones are under 4 KiB.
const maxCSRBytes = 64 << 10

var oidChallengePassword = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 7}

// CSR is a PKCS#10 certification request whose self-signature has been
// checked.
type CSR struct {
	// Request is the parsed request. Its public key is proven possessed by
	// the sender; its subject and extensions are the sender's wishes only.
	Request *x509.CertificateRequest
	// ChallengePassword is the PKCS#9 challengePassword attribute (the
	// enrollment code), or "" when the request has none.
	ChallengePassword string
}

// ParseCSR parses a DER PKCS#10 request, checks its self-signature and
// extracts its challengePassword.
func ParseCSR(der []byte) (*CSR, error) {
	if len(der) > maxCSRBytes {
		return nil, fmt.Errorf("%w: certification request is %d bytes, the limit is %d", ErrLimit, len(der), maxCSRBytes)
	}
	req, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCSR, err)
	}
	if err := req.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: self-signature does not verify: %v", ErrBadCSR, err)
	}
	pw, err := challengePassword(req.RawTBSCertificateRequest)
	if err != nil {
		return nil, err
	}
	return &CSR{Request: req, ChallengePassword: pw}, nil
}

// challengePassword reads the attributes of a CertificationRequestInfo
// (RFC 2986 4.1), which crypto/x509 does not expose, and returns the
// challengePassword (RFC 2985 5.4.1): a DirectoryString, accepted here as
// PrintableString, UTF8String or IA5String (which some tools write).
func challengePassword(tbs []byte) (string, error) {
	bad := func(what string) (string, error) {
		return "", fmt.Errorf("%w: %s", ErrBadCSR, what)
	}
	in := cryptobyte.String(tbs)
	var info cryptobyte.String
	if !in.ReadASN1(&info, cbasn1.SEQUENCE) ||
		!info.SkipASN1(cbasn1.INTEGER) || !info.SkipASN1(cbasn1.SEQUENCE) || !info.SkipASN1(cbasn1.SEQUENCE) {
		return bad("cannot read CertificationRequestInfo")
	}
	var attrs cryptobyte.String
	var present bool
	if !info.ReadOptionalASN1(&attrs, &present, cbasn1.Tag(0).Constructed().ContextSpecific()) {
		return bad("cannot read attributes")
	}
	found := false
	var pw string
	for !attrs.Empty() {
		var attr, values cryptobyte.String
		var oid asn1.ObjectIdentifier
		if !attrs.ReadASN1(&attr, cbasn1.SEQUENCE) || !attr.ReadASN1ObjectIdentifier(&oid) || !attr.ReadASN1(&values, cbasn1.SET) {
			return bad("malformed attribute")
		}
		if !oid.Equal(oidChallengePassword) {
			continue
		}
		if found {
			return bad("more than one challengePassword attribute")
		}
		found = true
		var v cryptobyte.String
		var tag cbasn1.Tag
		if !values.ReadAnyASN1(&v, &tag) || !values.Empty() {
			return bad("challengePassword must have exactly one value")
		}
		switch tag {
		case cbasn1.PrintableString, cbasn1.UTF8String, cbasn1.IA5String:
		default:
			return bad(fmt.Sprintf("challengePassword has ASN.1 tag %d; use PrintableString or UTF8String", tag))
		}
		if !utf8.Valid(v) || (tag != cbasn1.UTF8String && !isASCII(v)) {
			return bad("challengePassword is not valid text")
		}
		pw = string(v)
	}
	return pw, nil
}

func isASCII(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}

// maxPEMCSRs bounds the CSR blocks read from one text: more than one is
// already ambiguous, and each costs a signature check.
const maxPEMCSRs = 10

// csrsFromPEM returns the certification requests in PEM blocks of text
// ("CERTIFICATE REQUEST", or the older "NEW CERTIFICATE REQUEST"). Only
// blocks whose BEGIN line starts a line count, so quoted replies ("> ")
// are skipped; other block types are ignored; a block of the right type
// that does not parse is an error. The text is scanned line by line, once:
// pem.Decode alone rescans the rest of the input for every BEGIN, which is
// quadratic on hostile input.
func csrsFromPEM(text []byte) ([]*CSR, error) {
	var out []*CSR
	start := -1 // offset of the current BEGIN line, -1 outside a block
	for off := 0; off < len(text); {
		end := bytes.IndexByte(text[off:], '\n')
		next := len(text)
		if end >= 0 {
			next = off + end + 1
		}
		line := bytes.TrimRight(text[off:next], " \t\r\n")
		switch {
		case bytes.Equal(line, []byte("-----BEGIN CERTIFICATE REQUEST-----")),
			bytes.Equal(line, []byte("-----BEGIN NEW CERTIFICATE REQUEST-----")):
			start = off
		case start >= 0 && bytes.HasPrefix(line, []byte("-----END ")):
			if next-start > 2*maxCSRBytes {
				return nil, fmt.Errorf("%w: PEM block of %d bytes", ErrLimit, next-start)
			}
			block, _ := pem.Decode(text[start:next])
			start = -1
			if block == nil {
				return nil, fmt.Errorf("%w: PEM certification request block does not decode", ErrBadCSR)
			}
			if len(out) == maxPEMCSRs {
				return nil, fmt.Errorf("%w: more than %d certification requests", ErrLimit, maxPEMCSRs)
			}
			c, err := ParseCSR(block.Bytes)
			if err != nil {
				return nil, err
			}
			out = append(out, c)
		}
		off = next
	}
	return out, nil
}

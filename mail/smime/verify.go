package smime

import (
	"crypto"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/smallstep/pkcs7"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// VerifyOptions says what a signature is checked against.
type VerifyOptions struct {
	// Roots are the trust anchors. Required: a nil pool is an error, never
	// the system roots.
	Roots *x509.CertPool
	// Intermediates are extra CA certificates for building the chain, in
	// addition to those the message carries. Optional.
	Intermediates *x509.CertPool
	// At is the time at which the signer's chain must be valid: the time
	// the message was received. Required. The signingTime attribute inside
	// the signature is chosen by the signer and is never used for this.
	At time.Time
	// Cache, if set, remembers signers whose chain verified (see
	// ChainCache). Optional.
	Cache *ChainCache
	// Issued, if set, reports whether the caller itself issued the signer
	// certificate, byte for byte (kms: a certificate in its store that it
	// did not import). Such a certificate's CA signature is not checked
	// again when Cache holds the proven chain above its issuer: it was
	// checked when it was made, and the caller's record is the authority
	// on what it issued. Its validity at At, its key usages and its
	// critical extensions are still checked, and any failure goes through
	// the full verification, so errors are the same either way. Issued is
	// called at most once a verification, after the signature itself
	// verified, and may look the certificate up. Optional.
	Issued func(signer *x509.Certificate) bool
}

// Signature is the result of a successful verification.
type Signature struct {
	// Signer is the certificate that made the signature.
	Signer *x509.Certificate
	// Chain is the verified chain from Signer to a root in Roots.
	Chain []*x509.Certificate
	// Certificates are all the certificates the SignedData carried.
	Certificates []*x509.Certificate
	// Content is the signed content: for a detached signature the content
	// that verified (see Request.Verify for line-ending fallbacks), for an
	// opaque one the encapsulated content.
	Content []byte
	// SigningTime is the signer's signingTime attribute, or the zero time
	// when there is none. It is the signer's claim, for display and logs.
	SigningTime time.Time
	// Hash is the digest algorithm of the signature.
	Hash crypto.Hash
	// ReplayID identifies this signature for replay detection: the same
	// signed request, however re-sent or re-encoded, has the same ReplayID.
	// It is SHA-256 over the signer's issuer and serial number and the
	// signed attributes (which hold the content digest and the signing
	// time), or the content digest when there are no signed attributes. The
	// signature value itself is not used because ECDSA signatures are
	// malleable: anyone can turn one valid signature into another.
	ReplayID [32]byte
}

// VerifyDetached verifies a detached CMS signature (the
// application/pkcs7-signature part of multipart/signed) over content.
func VerifyDetached(sig, content []byte, opts VerifyOptions) (*Signature, error) {
	sd, err := parseSigned(sig)
	if err != nil {
		return nil, err
	}
	if len(sd.content) != 0 {
		return nil, fmt.Errorf("%w: signature is not detached (it encapsulates %d bytes of content); use VerifyOpaque", ErrMalformed, len(sd.content))
	}
	return verifySigned(sd, content, opts)
}

// VerifyOpaque verifies a CMS SignedData that encapsulates its content
// (application/pkcs7-mime; smime-type=signed-data) and returns the content
// in Signature.Content.
func VerifyOpaque(cms []byte, opts VerifyOptions) (*Signature, error) {
	sd, err := parseSigned(cms)
	if err != nil {
		return nil, err
	}
	if len(sd.content) == 0 {
		return nil, fmt.Errorf("%w: SignedData encapsulates no content (a detached signature?)", ErrMalformed)
	}
	return verifySigned(sd, sd.content, opts)
}

// parseSigned checks the CMS input against the limits and parses it as
// SignedData.
func parseSigned(cms []byte) (*signedData, error) {
	der, ctype, err := toDER(cms)
	if err != nil {
		return nil, err
	}
	if !ctype.Equal(oidSignedData) {
		return nil, fmt.Errorf("%w: CMS content type is %s, not signed-data", ErrNotSigned, ctype)
	}
	return parseSignedData(der)
}

// parseLibrary runs the wrapped parser, turning its errors (and, should it
// have one on hostile input, a panic) into ErrMalformed.
func parseLibrary(der []byte) (p7 *pkcs7.PKCS7, err error) {
	defer func() {
		if r := recover(); r != nil {
			p7, err = nil, fmt.Errorf("%w: CMS parser failed: %v", ErrMalformed, r)
		}
	}()
	p7, err = pkcs7.Parse(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return p7, nil
}

func verifySigned(sd *signedData, content []byte, opts VerifyOptions) (*Signature, error) {
	if opts.Roots == nil {
		return nil, errors.New("smime: VerifyOptions.Roots is nil; pass the trusted roots")
	}
	if opts.At.IsZero() {
		return nil, errors.New("smime: VerifyOptions.At is zero; pass the receipt time")
	}
	switch len(sd.signers) {
	case 0:
		return nil, fmt.Errorf("%w: SignedData has no signer (certs-only?)", ErrNotSigned)
	case 1:
	default:
		return nil, fmt.Errorf("%w: SignedData has %d signers; exactly one is accepted", ErrUnsupported, len(sd.signers))
	}
	si := &sd.signers[0]
	var signer *x509.Certificate
	for _, c := range sd.certificates {
		if si.matches(c) {
			signer = c
			break
		}
	}
	if signer == nil {
		return nil, fmt.Errorf("%w: the signer's certificate is not included in the signature", ErrUntrustedSigner)
	}
	h, err := digestHash(si.digestAlgorithm)
	if err != nil {
		return nil, err
	}
	contentDigest := hashOf(h, content)
	res := &Signature{Signer: signer, Certificates: sd.certificates, Content: content, Hash: h}

	// What the signature covers: the DER SET OF signed attributes when there
	// are any (RFC 5652 5.4), the content itself otherwise.
	covered := contentDigest
	replayInput := contentDigest
	if si.hasSignedAttrs {
		attrs := si.signedAttrs
		st, err := checkSignedAttrs(attrs, contentDigest)
		if err != nil {
			return nil, err
		}
		res.SigningTime = st
		der, err := marshalSignedAttrs(attrs)
		if err != nil {
			return nil, err
		}
		covered = hashOf(h, der)
		replayInput = der
	}
	if err := checkSignature(signer.PublicKey, si.signatureAlgorithm, h, covered, si.signature); err != nil {
		return nil, err
	}
	res.ReplayID = replayID(signer.RawIssuer, signer.SerialNumber.Bytes(), replayInput)

	chain, err := verifyChain(signer, sd.certificates, opts)
	if err != nil {
		var exp *SignerExpiredError
		if errors.As(err, &exp) {
			exp.ReplayID = res.ReplayID
		}
		return nil, err
	}
	res.Chain = chain
	return res, nil
}

// SignerHasAddress reports whether the signer certificate names addr as
// an rfc822Name, comparing the domain without regard to case and the local
// part exactly (RFC 5280 7.5). Use it to check that the sender's address
// and the address on record are the certificate's (SPEC 4.2).
func (s *Signature) SignerHasAddress(addr string) bool {
	for _, e := range s.Signer.EmailAddresses {
		if sameAddress(e, addr) {
			return true
		}
	}
	return false
}

func sameAddress(a, b string) bool {
	ia, ib := strings.LastIndexByte(a, '@'), strings.LastIndexByte(b, '@')
	return ia > 0 && ib > 0 && a[:ia] == b[:ib] && strings.EqualFold(a[ia+1:], b[ib+1:])
}

func hashOf(h crypto.Hash, b []byte) []byte {
	d := h.New()
	d.Write(b)
	return d.Sum(nil)
}

type signedAttr struct {
	oid    asn1.ObjectIdentifier
	values []byte // the contents of the SET OF values
	set    []byte // the SET as received
}

// checkSignedAttrs checks the attributes RFC 5652 11 requires (content type
// id-data, message digest equal to the content's) and returns the signing
// time, if any.
func checkSignedAttrs(attrs []signedAttr, contentDigest []byte) (time.Time, error) {
	var signingTime time.Time
	seen := map[string]bool{}
	for _, a := range attrs {
		key := a.oid.String()
		if seen[key] && (a.oid.Equal(oidAttrDigest) || a.oid.Equal(oidAttrContentType) || a.oid.Equal(oidAttrSigningTime)) {
			return time.Time{}, fmt.Errorf("%w: signed attribute %s appears twice", ErrMalformed, key)
		}
		seen[key] = true
		v := cryptobyte.String(a.values)
		switch {
		case a.oid.Equal(oidAttrContentType):
			var ct asn1.ObjectIdentifier
			if !v.ReadASN1ObjectIdentifier(&ct) || !v.Empty() {
				return time.Time{}, fmt.Errorf("%w: bad content-type attribute", ErrMalformed)
			}
			if !ct.Equal(oidData) {
				return time.Time{}, fmt.Errorf("%w: signed content type is %s, not data", ErrUnsupported, ct)
			}
		case a.oid.Equal(oidAttrDigest):
			var d []byte
			if !v.ReadASN1Bytes(&d, cbasn1.OCTET_STRING) || !v.Empty() {
				return time.Time{}, fmt.Errorf("%w: bad message-digest attribute", ErrMalformed)
			}
			if subtle.ConstantTimeCompare(d, contentDigest) != 1 {
				return time.Time{}, fmt.Errorf("%w: content digest does not match the signed digest (content altered)", ErrBadSignature)
			}
		case a.oid.Equal(oidAttrSigningTime):
			var t time.Time
			ok := false
			switch {
			case v.PeekASN1Tag(cbasn1.UTCTime):
				ok = v.ReadASN1UTCTime(&t)
			case v.PeekASN1Tag(cbasn1.GeneralizedTime):
				ok = v.ReadASN1GeneralizedTime(&t)
			}
			if !ok || !v.Empty() {
				return time.Time{}, fmt.Errorf("%w: bad signing-time attribute", ErrMalformed)
			}
			signingTime = t.UTC()
		}
	}
	if !seen[oidAttrContentType.String()] || !seen[oidAttrDigest.String()] {
		return time.Time{}, fmt.Errorf("%w: signed attributes lack content-type or message-digest", ErrMalformed)
	}
	return signingTime, nil
}

// marshalSignedAttrs rebuilds the DER SET OF attributes the signature covers,
// in the order received.
func marshalSignedAttrs(attrs []signedAttr) ([]byte, error) {
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
		for _, a := range attrs {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1ObjectIdentifier(a.oid)
				b.AddBytes(a.set)
			})
		}
	})
	der, err := b.Bytes()
	if err != nil {
		return nil, fmt.Errorf("%w: signed attributes: %v", ErrMalformed, err)
	}
	return der, nil
}

func replayID(issuer, serial, signed []byte) [32]byte {
	d := sha256.New()
	for _, f := range [][]byte{[]byte("kms smime replay v1"), issuer, serial, signed} {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(f)))
		d.Write(n[:])
		d.Write(f)
	}
	var id [32]byte
	d.Sum(id[:0])
	return id
}

// verifyChain validates the signer at opts.At for email protection (RFC
// 8550 4.4: an extended key usage extension, when present, must allow
// emailProtection or any usage; a key usage extension, when present, must
// allow digitalSignature or nonRepudiation).
func verifyChain(signer *x509.Certificate, carried []*x509.Certificate, opts VerifyOptions) ([]*x509.Certificate, error) {
	if signer.KeyUsage != 0 && signer.KeyUsage&(x509.KeyUsageDigitalSignature|x509.KeyUsageContentCommitment) == 0 {
		return nil, fmt.Errorf("%w: signer certificate key usage does not allow digital signatures", ErrUntrustedSigner)
	}
	if chain := opts.Cache.lookup(signer, opts.Roots, opts.At); chain != nil {
		return chain, nil
	}
	if opts.Issued != nil {
		// A renewal's signer is new every time (the certificate the last
		// renewal issued), so viaIssuer below would pay a public-key
		// operation and crypto/x509's chain building for each request:
		// ~2% of the daemon's CPU under kms-load.
		if chain := opts.Cache.issuedLeaf(signer, opts.Roots, opts.At); chain != nil && opts.Issued(signer) {
			return chain, nil
		}
	}
	if chain := opts.Cache.viaIssuer(signer, opts.Roots, opts.At); chain != nil {
		opts.Cache.store(signer, opts.Roots, chain)
		return chain, nil
	}
	chain, err := buildChain(signer, carried, opts)
	if err == nil {
		opts.Cache.store(signer, opts.Roots, chain)
	}
	return chain, err
}

// buildChain verifies signer's chain to opts.Roots at opts.At.
func buildChain(signer *x509.Certificate, carried []*x509.Certificate, opts VerifyOptions) ([]*x509.Certificate, error) {
	inter := x509.NewCertPool()
	if opts.Intermediates != nil {
		inter = opts.Intermediates.Clone()
	}
	for _, c := range carried {
		if c != signer {
			inter.AddCert(c)
		}
	}
	vo := x509.VerifyOptions{
		Roots:         opts.Roots,
		Intermediates: inter,
		CurrentTime:   opts.At,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection},
	}
	chains, err := signer.Verify(vo)
	if err != nil {
		if opts.At.After(signer.NotAfter) {
			// Tell a lapsed certificate from a foreign one: does the chain
			// hold while the signer was still valid?
			vo.CurrentTime = signer.NotAfter
			if _, err2 := signer.Verify(vo); err2 == nil {
				return nil, &SignerExpiredError{Signer: signer}
			}
		}
		return nil, fmt.Errorf("%w: %v", ErrUntrustedSigner, err)
	}
	return chains[0], nil
}

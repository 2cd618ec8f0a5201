package smime

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"math/big"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// signedData is the part of a CMS SignedData (RFC 5652 5.1) that
// verification needs.
//
// It is parsed here rather than by the wrapped pkcs7 library: toDER has
// already checked the input against the limits and converted it to DER, and
// the library would convert it again (its BER-to-DER pass re-encodes every
// element: ~3% of the daemon's CPU a renewal under load) and then decode it
// with encoding/asn1's reflection. The library also returns an empty
// structure for SignedData it cannot decode; this parser says what is wrong.
type signedData struct {
	// content is the encapsulated content (eContent), nil for a detached
	// signature.
	content      []byte
	certificates []*x509.Certificate
	signers      []signerInfo
}

// signerInfo is one SignerInfo (RFC 5652 5.3).
type signerInfo struct {
	// The signer is named either by issuer (DER Name) and serial number,
	// or by subject key identifier.
	issuer       []byte
	serial       *big.Int
	subjectKeyID []byte

	digestAlgorithm pkix.AlgorithmIdentifier
	// signedAttrs are the signed attributes; hasSignedAttrs tells an absent
	// SET from an empty one (which RFC 5652 forbids).
	signedAttrs        []signedAttr
	hasSignedAttrs     bool
	signatureAlgorithm pkix.AlgorithmIdentifier
	signature          []byte
}

// matches reports whether c is the certificate the SignerInfo names.
func (si *signerInfo) matches(c *x509.Certificate) bool {
	if si.subjectKeyID != nil {
		return len(c.SubjectKeyId) > 0 && string(c.SubjectKeyId) == string(si.subjectKeyID)
	}
	return c.SerialNumber.Cmp(si.serial) == 0 && string(c.RawIssuer) == string(si.issuer)
}

// Context-specific tags of SignedData and SignerInfo.
var (
	// [0], constructed: ContentInfo's content and eContent (explicit),
	// certificates and signedAttrs (implicit).
	tagContext0 = cbasn1.Tag(0).Constructed().ContextSpecific()
	// [1], constructed: crls and unsignedAttrs.
	tagContext1 = cbasn1.Tag(1).Constructed().ContextSpecific()
	// [0], primitive: a signer named by subjectKeyIdentifier.
	tagSKI = cbasn1.Tag(0).ContextSpecific()
)

// parseSignedData parses a DER ContentInfo holding SignedData, as toDER
// returns it.
func parseSignedData(der []byte) (*signedData, error) {
	in := cryptobyte.String(der)
	var ci, sd cryptobyte.String
	var ctype asn1.ObjectIdentifier
	if !in.ReadASN1(&ci, cbasn1.SEQUENCE) || !in.Empty() ||
		!ci.ReadASN1ObjectIdentifier(&ctype) ||
		!ci.ReadASN1(&sd, tagContext0) || !ci.Empty() {
		return nil, malformed("ContentInfo")
	}
	if !ctype.Equal(oidSignedData) {
		return nil, fmt.Errorf("%w: CMS content type is %s, not signed-data", ErrNotSigned, ctype)
	}
	var body, digestAlgs, encap, signers cryptobyte.String
	var version int
	if !sd.ReadASN1(&body, cbasn1.SEQUENCE) || !sd.Empty() ||
		!body.ReadASN1Integer(&version) ||
		!body.ReadASN1(&digestAlgs, cbasn1.SET) ||
		!body.ReadASN1(&encap, cbasn1.SEQUENCE) {
		return nil, malformed("SignedData")
	}
	out := &signedData{}
	var err error
	if out.content, err = parseEncapsulated(encap); err != nil {
		return nil, err
	}
	var certs cryptobyte.String
	var hasCerts bool
	if !body.ReadOptionalASN1(&certs, &hasCerts, tagContext0) ||
		!body.SkipOptionalASN1(tagContext1) || // CRLs: revocation is kms's own business
		!body.ReadASN1(&signers, cbasn1.SET) || !body.Empty() {
		return nil, malformed("SignedData")
	}
	if out.certificates, err = parseCertificateSet(certs); err != nil {
		return nil, err
	}
	for !signers.Empty() {
		var si cryptobyte.String
		if !signers.ReadASN1(&si, cbasn1.SEQUENCE) {
			return nil, malformed("SignerInfo")
		}
		s, err := parseSignerInfo(si)
		if err != nil {
			return nil, err
		}
		out.signers = append(out.signers, s)
	}
	return out, nil
}

// parseEncapsulated returns eContent of an EncapsulatedContentInfo, nil
// when it is absent (a detached signature). toDER has joined a constructed
// OCTET STRING into one.
func parseEncapsulated(encap cryptobyte.String) ([]byte, error) {
	var ctype asn1.ObjectIdentifier
	var wrapped cryptobyte.String
	var present bool
	if !encap.ReadASN1ObjectIdentifier(&ctype) ||
		!encap.ReadOptionalASN1(&wrapped, &present, tagContext0) || !encap.Empty() {
		return nil, malformed("EncapsulatedContentInfo")
	}
	if !present {
		return nil, nil
	}
	var content []byte
	if !wrapped.ReadASN1Bytes(&content, cbasn1.OCTET_STRING) || !wrapped.Empty() {
		return nil, malformed("eContent (not an OCTET STRING)")
	}
	if content == nil {
		content = []byte{} // present but empty: not detached
	}
	return content, nil
}

// parseCertificateSet parses the certificates field. Choices other than a
// plain certificate (attribute certificates, RFC 5652 10.2.2) are skipped:
// nothing here uses them.
func parseCertificateSet(set cryptobyte.String) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for !set.Empty() {
		var elem cryptobyte.String
		var tag cbasn1.Tag
		if !set.ReadAnyASN1Element(&elem, &tag) {
			return nil, malformed("certificates")
		}
		if tag != cbasn1.SEQUENCE {
			continue
		}
		c, err := x509.ParseCertificate(elem)
		if err != nil {
			return nil, fmt.Errorf("%w: a certificate in the signature: %v", ErrMalformed, err)
		}
		certs = append(certs, c)
	}
	return certs, nil
}

// parseSignerInfo parses the contents of one SignerInfo.
func parseSignerInfo(si cryptobyte.String) (signerInfo, error) {
	var s signerInfo
	var version int
	if !si.ReadASN1Integer(&version) {
		return s, malformed("SignerInfo version")
	}
	switch {
	case si.PeekASN1Tag(cbasn1.SEQUENCE):
		var ias cryptobyte.String
		var issuer cryptobyte.String
		s.serial = new(big.Int)
		if !si.ReadASN1(&ias, cbasn1.SEQUENCE) ||
			!ias.ReadASN1Element(&issuer, cbasn1.SEQUENCE) ||
			!ias.ReadASN1Integer(s.serial) || !ias.Empty() {
			return s, malformed("SignerInfo issuerAndSerialNumber")
		}
		s.issuer = issuer
	case si.PeekASN1Tag(tagSKI):
		var ski []byte
		if !si.ReadASN1Bytes(&ski, tagSKI) || len(ski) == 0 {
			return s, malformed("SignerInfo subjectKeyIdentifier")
		}
		s.subjectKeyID = ski
	default:
		return s, malformed("SignerInfo signer identifier")
	}
	var err error
	if s.digestAlgorithm, err = readAlgorithm(&si, "digestAlgorithm"); err != nil {
		return s, err
	}
	var attrs cryptobyte.String
	if !si.ReadOptionalASN1(&attrs, &s.hasSignedAttrs, tagContext0) {
		return s, malformed("SignerInfo signedAttrs")
	}
	for !attrs.Empty() {
		var a, set cryptobyte.String
		var oid asn1.ObjectIdentifier
		if !attrs.ReadASN1(&a, cbasn1.SEQUENCE) || !a.ReadASN1ObjectIdentifier(&oid) ||
			!a.ReadASN1Element(&set, cbasn1.SET) || !a.Empty() {
			return s, malformed("signed attribute")
		}
		s.signedAttrs = append(s.signedAttrs, signedAttr{oid: oid, values: contentsOf(set), set: set})
	}
	if s.hasSignedAttrs && len(s.signedAttrs) == 0 {
		return s, malformed("SignerInfo signedAttrs (present but empty)")
	}
	if s.signatureAlgorithm, err = readAlgorithm(&si, "signatureAlgorithm"); err != nil {
		return s, err
	}
	if !si.ReadASN1Bytes(&s.signature, cbasn1.OCTET_STRING) ||
		!si.SkipOptionalASN1(tagContext1) || !si.Empty() {
		return s, malformed("SignerInfo signature")
	}
	return s, nil
}

// contentsOf returns the contents of one DER element (its identifier and
// length octets cut off); elem must be a well-formed element, as cryptobyte
// returned it.
func contentsOf(elem cryptobyte.String) []byte {
	var contents cryptobyte.String
	var tag cbasn1.Tag
	elem.ReadAnyASN1(&contents, &tag)
	return contents
}

// readAlgorithm reads an AlgorithmIdentifier, keeping its parameters as
// received (RSA-PSS needs them).
func readAlgorithm(s *cryptobyte.String, what string) (pkix.AlgorithmIdentifier, error) {
	var alg pkix.AlgorithmIdentifier
	var seq cryptobyte.String
	if !s.ReadASN1(&seq, cbasn1.SEQUENCE) || !seq.ReadASN1ObjectIdentifier(&alg.Algorithm) {
		return alg, malformed(what)
	}
	if !seq.Empty() {
		var params cryptobyte.String
		var tag cbasn1.Tag
		if !seq.ReadAnyASN1Element(&params, &tag) || !seq.Empty() {
			return alg, malformed(what)
		}
		if _, err := asn1.Unmarshal(params, &alg.Parameters); err != nil {
			return alg, malformed(what)
		}
	}
	return alg, nil
}

func malformed(what string) error {
	return fmt.Errorf("%w: bad %s in the CMS SignedData", ErrMalformed, what)
}

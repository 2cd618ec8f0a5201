// Package certder reads single fields of a DER certificate without parsing
// the whole of it: the hot paths of a renewal need one field of a
// certificate they already trust or will compare byte for byte, and
// crypto/x509's full parse was a noticeable part of a renewal's cost.
package certder

import (
	"crypto"
	"crypto/x509"
	"errors"
	"math/big"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

var errMalformed = errors.New("malformed certificate")

// SerialHex returns a certificate's serial number in lower-case hex without
// leading zeros (kms's stored form, as fmt's %x gives it), or "" if it
// cannot be read or is negative. Nothing else of the certificate is
// checked: a caller that needs more compares the DER with one it trusts.
func SerialHex(der []byte) string {
	tbs, ok := afterVersion(der)
	serial := new(big.Int)
	if !ok || !tbs.ReadASN1Integer(serial) || serial.Sign() < 0 {
		return ""
	}
	return serial.Text(16)
}

// PublicKey returns a certificate's subject public key, parsed as
// x509.ParsePKIXPublicKey parses it: a key of an algorithm crypto/x509 does
// not know is an error here, where x509.ParseCertificate would return the
// certificate with a nil key.
func PublicKey(der []byte) (crypto.PublicKey, error) {
	tbs, ok := afterVersion(der)
	var spki cryptobyte.String
	if !ok ||
		!tbs.SkipASN1(cbasn1.INTEGER) || // serialNumber
		!tbs.SkipASN1(cbasn1.SEQUENCE) || // signature
		!tbs.SkipASN1(cbasn1.SEQUENCE) || // issuer
		!tbs.SkipASN1(cbasn1.SEQUENCE) || // validity
		!tbs.SkipASN1(cbasn1.SEQUENCE) || // subject
		!tbs.ReadASN1Element(&spki, cbasn1.SEQUENCE) {
		return nil, errMalformed
	}
	return x509.ParsePKIXPublicKey(spki)
}

// afterVersion returns the TBSCertificate from its serialNumber on
// (RFC 5280 4.1): the version field is absent in a v1 certificate.
func afterVersion(der []byte) (cryptobyte.String, bool) {
	input := cryptobyte.String(der)
	var cert, tbs cryptobyte.String
	ok := input.ReadASN1(&cert, cbasn1.SEQUENCE) && cert.ReadASN1(&tbs, cbasn1.SEQUENCE) &&
		tbs.SkipOptionalASN1(cbasn1.Tag(0).Constructed().ContextSpecific()) // version
	return tbs, ok
}

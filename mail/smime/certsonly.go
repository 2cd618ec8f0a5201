package smime

import (
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/smallstep/pkcs7"
)

// CertsOnly makes a degenerate SignedData holding certs and no signer: the
// body of an `application/pkcs7-mime; smime-type=certs-only` part (RFC 8551
// 3.6), which mail clients import as a certificate bundle.
func CertsOnly(certs ...*x509.Certificate) ([]byte, error) {
	certs = dedupCerts(certs)
	if len(certs) == 0 {
		return nil, errors.New("smime: CertsOnly needs at least one certificate")
	}
	var raw []byte
	for _, c := range certs {
		raw = append(raw, c.Raw...)
	}
	out, err := pkcs7.DegenerateCertificate(raw)
	if err != nil {
		return nil, fmt.Errorf("smime: encoding certs-only: %w", err)
	}
	return out, nil
}

// ParseCertsOnly returns the certificates of a certs-only SignedData (DER or
// BER). Any signature in it is ignored: the certificates are not verified.
func ParseCertsOnly(cms []byte) ([]*x509.Certificate, error) {
	sd, err := parseSigned(cms)
	if errors.Is(err, ErrNotSigned) {
		return nil, fmt.Errorf("%w: not a certs-only SignedData: %v", ErrMalformed, err)
	}
	if err != nil {
		return nil, err
	}
	if len(sd.certificates) == 0 {
		return nil, fmt.Errorf("%w: certs-only object holds no certificate", ErrMalformed)
	}
	return sd.certificates, nil
}

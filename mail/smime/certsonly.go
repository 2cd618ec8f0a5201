package smime

import (
	"crypto/x509"
	"errors"
	"fmt"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// CertsOnly makes a degenerate SignedData holding certs and no signer: the
// body of an `application/pkcs7-mime; smime-type=certs-only` part (RFC 8551
// 3.6), which mail clients import as a certificate bundle.
//
// It writes the same bytes as the pkcs7 library's DegenerateCertificate
// (including its empty crls field), directly: the library's reflection
// encoder was ~7% of the bytes the daemon allocates a renewal.
func CertsOnly(certs ...*x509.Certificate) ([]byte, error) {
	certs = dedupCerts(certs)
	if len(certs) == 0 {
		return nil, errors.New("smime: CertsOnly needs at least one certificate")
	}
	size := 64
	for _, c := range certs {
		size += len(c.Raw)
	}
	b := cryptobyte.NewBuilder(make([]byte, 0, size))
	empty := func(*cryptobyte.Builder) {}
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { // ContentInfo
		b.AddASN1ObjectIdentifier(oidSignedData)
		b.AddASN1(tagContext0, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { // SignedData
				b.AddASN1Int64(1)            // version
				b.AddASN1(cbasn1.SET, empty) // digestAlgorithms
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
					b.AddASN1ObjectIdentifier(oidData) // no content
				})
				b.AddASN1(tagContext0, func(b *cryptobyte.Builder) { // certificates
					for _, c := range certs {
						b.AddBytes(c.Raw)
					}
				})
				b.AddASN1(tagContext1, empty) // crls
				b.AddASN1(cbasn1.SET, empty)  // signerInfos
			})
		})
	})
	out, err := b.Bytes()
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

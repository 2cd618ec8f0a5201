package smime

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"sort"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// Signer is the identity that signs outgoing mail: the KMS certificate,
// its key, and the CA certificates that lead to the root.
type Signer struct {
	// Key signs. Any crypto.Signer with an RSA or ECDSA key works, so the
	// key can live in an HSM.
	Key crypto.Signer
	// Cert is the signer's certificate; its public key must be Key's.
	Cert *x509.Certificate
	// Chain holds the intermediate CA certificates (and optionally the
	// root) to include in every signature, issuer first.
	Chain []*x509.Certificate
}

// SignDetached makes a detached CMS SignedData over content with SHA-256
// (RSA PKCS#1 v1.5 or ECDSA), for the application/pkcs7-signature part of
// multipart/signed. The certificate set holds s.Cert, s.Chain and extra
// (for a certificate reply, the user's new certificate, so that a mail
// client that collects certificates from signed mail picks it up). The
// signingTime attribute is signingTime, from the caller's clock.
func SignDetached(content []byte, s Signer, extra []*x509.Certificate, signingTime time.Time) ([]byte, error) {
	if s.Key == nil || s.Cert == nil {
		return nil, errors.New("smime: Signer needs both Key and Cert")
	}
	if signingTime.IsZero() {
		return nil, errors.New("smime: signing time is zero; pass the clock's time")
	}
	pub, ok := s.Key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(s.Cert.PublicKey) {
		return nil, errors.New("smime: Signer.Key does not match the public key of Signer.Cert")
	}
	var sigAlg func(*cryptobyte.Builder)
	switch s.Cert.PublicKey.(type) {
	case *rsa.PublicKey:
		// rsaEncryption with the digest named by digestAlgorithm: what
		// RFC 8551 mail clients expect.
		sigAlg = func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(oidRSA)
			b.AddASN1NULL()
		}
	case *ecdsa.PublicKey:
		sigAlg = func(b *cryptobyte.Builder) { b.AddASN1ObjectIdentifier(oidECDSAWithSHA256) }
	default:
		return nil, fmt.Errorf("%w: signer key type %T; use RSA or ECDSA", ErrUnsupported, s.Cert.PublicKey)
	}

	digest := hashOf(crypto.SHA256, content)
	attrs, err := signedAttrsDER(digest, signingTime.UTC())
	if err != nil {
		return nil, err
	}
	sig, err := s.Key.Sign(rand.Reader, hashOf(crypto.SHA256, attrs), crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("smime: signing with the KMS key: %w", err)
	}

	certs := dedupCerts(append(append([]*x509.Certificate{s.Cert}, s.Chain...), extra...))
	sha256Alg := func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { b.AddASN1ObjectIdentifier(oidSHA256) })
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { // ContentInfo
		b.AddASN1ObjectIdentifier(oidSignedData)
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { // SignedData
				b.AddASN1Int64(1)
				b.AddASN1(cbasn1.SET, sha256Alg)
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { b.AddASN1ObjectIdentifier(oidData) })
				b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
					for _, c := range certs {
						b.AddBytes(c.Raw)
					}
				})
				b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
					b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { // SignerInfo
						b.AddASN1Int64(1)
						b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
							b.AddBytes(s.Cert.RawIssuer)
							b.AddASN1BigInt(s.Cert.SerialNumber)
						})
						sha256Alg(b)
						// signedAttrs is [0] IMPLICIT: the SET with its tag replaced.
						b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
							b.AddBytes(setContents(attrs))
						})
						b.AddASN1(cbasn1.SEQUENCE, sigAlg)
						b.AddASN1OctetString(sig)
					})
				})
			})
		})
	})
	out, err := b.Bytes()
	if err != nil {
		return nil, fmt.Errorf("smime: encoding SignedData: %w", err)
	}
	return out, nil
}

// signedAttrsDER encodes the DER SET OF signed attributes: content type,
// signing time, message digest and S/MIME capabilities (which tell mail
// clients to encrypt to the KMS with AES).
func signedAttrsDER(digest []byte, at time.Time) ([]byte, error) {
	attr := func(oid asn1.ObjectIdentifier, value func(*cryptobyte.Builder)) ([]byte, error) {
		var b cryptobyte.Builder
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(oid)
			b.AddASN1(cbasn1.SET, value)
		})
		return b.Bytes()
	}
	var encoded [][]byte
	for _, a := range []struct {
		oid   asn1.ObjectIdentifier
		value func(*cryptobyte.Builder)
	}{
		{oidAttrContentType, func(b *cryptobyte.Builder) { b.AddASN1ObjectIdentifier(oidData) }},
		{oidAttrSigningTime, func(b *cryptobyte.Builder) {
			// RFC 5652 11.3: UTCTime for 1950 to 2049, GeneralizedTime otherwise.
			if y := at.Year(); y >= 1950 && y < 2050 {
				b.AddASN1UTCTime(at.Truncate(time.Second))
			} else {
				b.AddASN1GeneralizedTime(at.Truncate(time.Second))
			}
		}},
		{oidAttrDigest, func(b *cryptobyte.Builder) { b.AddASN1OctetString(digest) }},
		{oidAttrCapabilities, func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				for _, oid := range []asn1.ObjectIdentifier{oidAES256CBC, oidAES128CBC} {
					b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { b.AddASN1ObjectIdentifier(oid) })
				}
			})
		}},
	} {
		e, err := attr(a.oid, a.value)
		if err != nil {
			return nil, fmt.Errorf("smime: encoding signed attribute: %w", err)
		}
		encoded = append(encoded, e)
	}
	// DER orders the elements of a SET OF by their encodings.
	sort.Slice(encoded, func(i, j int) bool { return bytes.Compare(encoded[i], encoded[j]) < 0 })
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
		for _, e := range encoded {
			b.AddBytes(e)
		}
	})
	return b.Bytes()
}

// setContents strips the tag and length from a DER element.
func setContents(der []byte) []byte {
	s := cryptobyte.String(der)
	var inner cryptobyte.String
	var tag cbasn1.Tag
	s.ReadAnyASN1(&inner, &tag)
	return inner
}

func dedupCerts(in []*x509.Certificate) []*x509.Certificate {
	var out []*x509.Certificate
	for _, c := range in {
		if c == nil {
			continue
		}
		dup := false
		for _, o := range out {
			if bytes.Equal(o.Raw, c.Raw) {
				dup = true
				break
			}
		}
		if !dup {
			out = append(out, c)
		}
	}
	return out
}

package mail

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"fmt"
	"math/big"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// This file builds what a user's mail client sends: PKCS#10 requests, CMS
// signatures and whole messages. It is written from the RFCs, independently
// of mail/smime, so that it can make exactly the broken and hostile variants
// the tests need (a SHA-1 digest, a missing certificate, a bad
// self-signature) and so that a bug shared by the KMS's reader and writer
// cannot hide itself. The valid messages it makes are checked by the
// control rows of TestHostileRequests, which must be honoured.

// Object identifiers of the structures built here.
var (
	e2eOIDData          = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
	e2eOIDSignedData    = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}
	e2eOIDContentType   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 3}
	e2eOIDDigest        = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 4}
	e2eOIDSigningTime   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 5}
	e2eOIDChallenge     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 7}
	e2eOIDSHA1          = asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}
	e2eOIDSHA256        = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
	e2eOIDRSA           = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}
	e2eOIDSHA256WithRSA = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}
	e2eOIDECDSAWithSHA1 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 1}
	e2eOIDECDSAWithS256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
)

// e2eKey makes a key: "p256", "p224" (a curve kms must refuse), "rsa1024"
// (too weak) or "rsa2048".
func e2eKey(t testing.TB, kind string) crypto.Signer {
	t.Helper()
	var (
		k   crypto.Signer
		err error
	)
	switch kind {
	case "p256":
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "p224":
		k, err = ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	case "rsa1024":
		k, err = rsa.GenerateKey(rand.Reader, 1024)
	case "rsa2048":
		k, err = rsa.GenerateKey(rand.Reader, 2048)
	default:
		t.Fatalf("e2eKey: unknown kind %q", kind)
	}
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// e2eSign signs digest (made with h) with key and returns the signature and
// the AlgorithmIdentifier OID naming it.
func e2eSign(t testing.TB, key crypto.Signer, h crypto.Hash, digest []byte) ([]byte, asn1.ObjectIdentifier) {
	t.Helper()
	sig, err := key.Sign(rand.Reader, digest, h)
	if err != nil {
		t.Fatal(err)
	}
	switch key.Public().(type) {
	case *rsa.PublicKey:
		if h == crypto.SHA256 {
			return sig, e2eOIDSHA256WithRSA
		}
		return sig, e2eOIDRSA // rsaEncryption: the digest algorithm names the hash
	default:
		if h == crypto.SHA1 {
			return sig, e2eOIDECDSAWithSHA1
		}
		return sig, e2eOIDECDSAWithS256
	}
}

func e2eDigest(h crypto.Hash, b []byte) []byte {
	if h == crypto.SHA1 {
		d := sha1.Sum(b)
		return d[:]
	}
	d := sha256.Sum256(b)
	return d[:]
}

// e2eCSR builds a DER PKCS#10 request for key, with code as the
// challengePassword attribute unless it is empty, self-signed with SHA-256.
func e2eCSR(t testing.TB, key crypto.Signer, cn, code string) []byte {
	t.Helper()
	name, err := asn1.Marshal(pkix.Name{CommonName: cn}.ToRDNSequence())
	if err != nil {
		t.Fatal(err)
	}
	spki, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	var tb cryptobyte.Builder
	tb.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1Int64(0)
		b.AddBytes(name)
		b.AddBytes(spki)
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			if code == "" {
				return
			}
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1ObjectIdentifier(e2eOIDChallenge)
				b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
					b.AddASN1(cbasn1.UTF8String, func(b *cryptobyte.Builder) { b.AddBytes([]byte(code)) })
				})
			})
		})
	})
	tbs := tb.BytesOrPanic()
	sig, alg := e2eSign(t, key, crypto.SHA256, e2eDigest(crypto.SHA256, tbs))
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(tbs)
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(alg)
			if alg.Equal(e2eOIDSHA256WithRSA) {
				b.AddASN1NULL()
			}
		})
		b.AddASN1BitString(sig)
	})
	return b.BytesOrPanic()
}

// cmsOptions vary a CMS signature from the valid default (SHA-256, the
// signer's certificate included, content detached).
type cmsOptions struct {
	hash    crypto.Hash // crypto.SHA1 for a weak signature; default SHA-256
	noCerts bool        // leave the signer's certificate out
	opaque  bool        // encapsulate the content (smime-type=signed-data)
	at      time.Time   // signingTime; zero leaves the attribute out
}

// e2eCMS makes a CMS SignedData (RFC 5652) over content with key and its
// certificate cert, as a mail client does: with signed attributes
// content-type, message-digest and signing-time.
func e2eCMS(t testing.TB, content []byte, key crypto.Signer, cert *x509.Certificate, o cmsOptions) []byte {
	t.Helper()
	h := o.hash
	if h == 0 {
		h = crypto.SHA256
	}
	digestOID := e2eOIDSHA256
	if h == crypto.SHA1 {
		digestOID = e2eOIDSHA1
	}
	attr := func(oid asn1.ObjectIdentifier, value func(*cryptobyte.Builder)) []byte {
		var b cryptobyte.Builder
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(oid)
			b.AddASN1(cbasn1.SET, value)
		})
		return b.BytesOrPanic()
	}
	attrs := [][]byte{
		attr(e2eOIDContentType, func(b *cryptobyte.Builder) { b.AddASN1ObjectIdentifier(e2eOIDData) }),
		attr(e2eOIDDigest, func(b *cryptobyte.Builder) { b.AddASN1OctetString(e2eDigest(h, content)) }),
	}
	if !o.at.IsZero() {
		attrs = append(attrs, attr(e2eOIDSigningTime, func(b *cryptobyte.Builder) { b.AddASN1UTCTime(o.at.UTC().Truncate(time.Second)) }))
	}
	// DER sorts a SET OF by the encodings of its elements.
	sort.Slice(attrs, func(i, j int) bool { return bytes.Compare(attrs[i], attrs[j]) < 0 })
	var set cryptobyte.Builder
	set.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
		for _, a := range attrs {
			b.AddBytes(a)
		}
	})
	setDER := set.BytesOrPanic()
	sig, sigAlg := e2eSign(t, key, h, e2eDigest(h, setDER))
	algID := func(oid asn1.ObjectIdentifier, null bool) func(*cryptobyte.Builder) {
		return func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1ObjectIdentifier(oid)
				if null {
					b.AddASN1NULL()
				}
			})
		}
	}
	_, rsaKey := key.Public().(*rsa.PublicKey)
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { // ContentInfo
		b.AddASN1ObjectIdentifier(e2eOIDSignedData)
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { // SignedData
				b.AddASN1Int64(1)
				b.AddASN1(cbasn1.SET, algID(digestOID, false))
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { // EncapsulatedContentInfo
					b.AddASN1ObjectIdentifier(e2eOIDData)
					if o.opaque {
						b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
							b.AddASN1OctetString(content)
						})
					}
				})
				if !o.noCerts {
					b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes(cert.Raw) })
				}
				b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
					b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { // SignerInfo
						b.AddASN1Int64(1)
						b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
							b.AddBytes(cert.RawIssuer)
							b.AddASN1BigInt(cert.SerialNumber)
						})
						algID(digestOID, false)(b)
						b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
							for _, a := range attrs {
								b.AddBytes(a)
							}
						})
						algID(sigAlg, rsaKey)(b)
						b.AddASN1OctetString(sig)
					})
				})
			})
		})
	})
	return b.BytesOrPanic()
}

// e2eMsgSeq numbers the messages a test builds, for unique Message-IDs.
var e2eMsgSeq atomic.Int64

// e2eHeader writes the header of a message From from (verbatim: it may
// be a display form, a list, or empty to leave From out), with a fresh
// Message-ID and the extra lines (each ending CRLF) before the MIME fields.
func e2eHeader(from, subject, extra string) string {
	var b strings.Builder
	if from != "" {
		b.WriteString("From: " + from + "\r\n")
	}
	fmt.Fprintf(&b, "To: kms@example.com\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <hostile-%d@client.example.net>\r\n%sMIME-Version: 1.0\r\n",
		subject, t0.Format(time.RFC1123Z), e2eMsgSeq.Add(1), extra)
	return b.String()
}

// e2eText is the inner entity of a same-key renewal: a short text part.
func e2eText(text string) []byte {
	return []byte("Content-Type: text/plain; charset=utf-8\r\n\r\n" + text + "\r\n")
}

// e2eCSRParts is a multipart/mixed inner entity with a text part and each
// CSR as an application/pkcs10 part (RFC 5967).
func e2eCSRParts(csrs ...[]byte) []byte {
	var b strings.Builder
	b.WriteString("Content-Type: multipart/mixed; boundary=\"csr-parts\"\r\n\r\n--csr-parts\r\n")
	b.WriteString("Content-Type: text/plain\r\n\r\nPlease certify my key.\r\n")
	for _, c := range csrs {
		b.WriteString("--csr-parts\r\nContent-Type: application/pkcs10; name=req.p10\r\nContent-Transfer-Encoding: base64\r\n\r\n")
		b.WriteString(e2eBase64(c))
	}
	b.WriteString("--csr-parts--\r\n")
	return []byte(b.String())
}

// e2eBase64 encodes b in lines of 76 characters, each ending CRLF.
func e2eBase64(b []byte) string {
	enc := base64.StdEncoding.EncodeToString(b)
	var out strings.Builder
	for len(enc) > 76 {
		out.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	out.WriteString(enc + "\r\n")
	return out.String()
}

// e2ePlain is an unsigned message whose body is the entity inner (its own
// Content-Type header first).
func e2ePlain(from, subject, extra string, inner []byte) []byte {
	return append([]byte(e2eHeader(from, subject, extra)), inner...)
}

// e2eSigned is a multipart/signed message: inner as the first part and the
// detached signature sig (DER) as the second.
func e2eSigned(from, subject, extra string, inner, sig []byte) []byte {
	var b bytes.Buffer
	b.WriteString(e2eHeader(from, subject, extra))
	b.WriteString("Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256; boundary=\"sig-boundary\"\r\n\r\n")
	b.WriteString("This is an S/MIME signed message.\r\n\r\n--sig-boundary\r\n")
	b.Write(inner)
	b.WriteString("\r\n--sig-boundary\r\nContent-Type: application/pkcs7-signature; name=smime.p7s\r\nContent-Transfer-Encoding: base64\r\n\r\n")
	b.WriteString(e2eBase64(sig))
	b.WriteString("--sig-boundary--\r\n")
	return b.Bytes()
}

// e2eOpaque is an application/pkcs7-mime; smime-type=signed-data message
// carrying der.
func e2eOpaque(from, subject, extra string, der []byte) []byte {
	return append([]byte(e2eHeader(from, subject, extra)+
		"Content-Type: application/pkcs7-mime; smime-type=signed-data; name=smime.p7m\r\nContent-Transfer-Encoding: base64\r\n\r\n"),
		e2eBase64(der)...)
}

// e2eForeignCA is a CA kms does not know, with a certificate it issued
// for email (as anyone can make one).
func e2eForeignCA(t testing.TB, email string, key crypto.Signer, now time.Time) *x509.Certificate {
	t.Helper()
	caKey := e2eKey(t, "p256")
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Evil Root"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(5, 0, 0), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: email},
		EmailAddresses: []string{email}, NotBefore: now.Add(-time.Hour), NotAfter: now.AddDate(1, 0, 0),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// e2eBERBomb is BER nested depth deep with indefinite lengths: 2 bytes a
// level, so a small message asks a naive parser for deep recursion.
func e2eBERBomb(depth int) []byte {
	b := make([]byte, 0, 4*depth)
	for range depth {
		b = append(b, 0x30, 0x80)
	}
	for range depth {
		b = append(b, 0, 0)
	}
	return b
}

// e2eBERMany is a SEQUENCE of n NULLs: shallow, but many elements.
func e2eBERMany(n int) []byte {
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		for range n {
			b.AddASN1NULL()
		}
	})
	return b.BytesOrPanic()
}

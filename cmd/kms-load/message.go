package main

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"fmt"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"

	"github.com/kmsmail/kms/mail/smime"
)

// What a user's mail client sends: the enrollment request (SPEC 4.1) and
// the signed same-key renewal request (SPEC 4.2).

var (
	oidChallengePassword = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 7}
	oidECDSAWithSHA256   = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	oidSHA256WithRSA     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}
)

// certificationRequest returns a DER PKCS#10 request for key whose
// challengePassword is code. crypto/x509 cannot write that attribute.
func certificationRequest(key crypto.Signer, email, code string) ([]byte, error) {
	name, err := asn1.Marshal(pkix.Name{CommonName: email}.ToRDNSequence())
	if err != nil {
		return nil, err
	}
	spki, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		return nil, err
	}
	var tb cryptobyte.Builder
	tb.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1Int64(0)
		b.AddBytes(name)
		b.AddBytes(spki)
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1ObjectIdentifier(oidChallengePassword)
				b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
					b.AddASN1(cbasn1.UTF8String, func(b *cryptobyte.Builder) { b.AddBytes([]byte(code)) })
				})
			})
		})
	})
	tbs, err := tb.Bytes()
	if err != nil {
		return nil, err
	}
	digest := sha256.Sum256(tbs)
	sig, err := key.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("sign the certification request: %w", err)
	}
	alg := oidECDSAWithSHA256
	if _, ok := key.Public().(*rsa.PublicKey); ok {
		alg = oidSHA256WithRSA
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(tbs)
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(alg)
			if alg.Equal(oidSHA256WithRSA) {
				b.AddASN1NULL()
			}
		})
		b.AddASN1BitString(sig)
	})
	return b.Bytes()
}

// header writes the message header fields every request carries.
func header(b *bytes.Buffer, from, to, subject, messageID string, now time.Time) {
	fmt.Fprintf(b, "From: %s\r\nTo: %s\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <%s>\r\nMIME-Version: 1.0\r\n",
		from, to, subject, now.Format(time.RFC1123Z), messageID)
}

// enrollmentMessage is an unsigned message with the CSR as an
// application/pkcs10 part (RFC 5967).
func enrollmentMessage(from, to, messageID string, csr []byte, now time.Time) []byte {
	var b bytes.Buffer
	header(&b, from, to, "enrollment", messageID, now)
	b.WriteString("Content-Type: application/pkcs10; name=req.p10\r\nContent-Transfer-Encoding: base64\r\n\r\n")
	writeBase64(&b, csr)
	return b.Bytes()
}

// renewalBody is the signed part of a renewal request.
var renewalBody = []byte("Content-Type: text/plain; charset=utf-8\r\n\r\nPlease renew my certificate.\r\n")

// renewalMessage is a multipart/signed same-key renewal request, signed
// with key and its current certificate cert, as mail clients send it.
func renewalMessage(from, to, messageID string, key crypto.Signer, cert *x509.Certificate, now time.Time) ([]byte, error) {
	sig, err := smime.SignDetached(renewalBody, smime.Signer{Key: key, Cert: cert}, nil, now)
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	header(&b, from, to, "Re: renew", messageID, now)
	b.WriteString("Content-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256; boundary=\"kms-load\"\r\n\r\n")
	b.WriteString("--kms-load\r\n")
	b.Write(renewalBody)
	b.WriteString("\r\n--kms-load\r\nContent-Type: application/pkcs7-signature; name=smime.p7s\r\nContent-Transfer-Encoding: base64\r\n\r\n")
	writeBase64(&b, sig)
	b.WriteString("--kms-load--\r\n")
	return b.Bytes(), nil
}

func writeBase64(b *bytes.Buffer, data []byte) {
	enc := base64.StdEncoding.EncodeToString(data)
	for len(enc) > 76 {
		b.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	b.WriteString(enc + "\r\n")
}

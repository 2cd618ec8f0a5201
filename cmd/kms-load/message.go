package main

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"time"

	"github.com/kmsmail/kms/mail/smime"
)

// What a user's mail client sends: the enrollment request (SPEC 4.1) and
// the signed same-key renewal request (SPEC 4.2).

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

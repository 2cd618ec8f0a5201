package demo

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"net"
	"net/mail"
	"net/smtp"
	"strings"
	"time"

	"github.com/kmsmail/kms/mail/smime"
)

// This file is the users' side: a minimal S/MIME mail client that makes a
// key and a certification request, mails it over SMTP, takes the
// certificate out of kms's reply, and signs a renewal request with it, as
// Thunderbird or Outlook would.

// user is Alice or Bob: a key, and the certificate kms issued for it.
type user struct {
	name, email string
	key         *ecdsa.PrivateKey
	cert        *x509.Certificate
	chain       []*x509.Certificate // the CA certificates that came with it, issuer first
}

// newKey makes the user a fresh ECDSA P-256 key, as at enrollment.
func (u *user) newKey() error {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("%s's key: %w", u.email, err)
	}
	u.key, u.cert, u.chain = k, nil, nil
	return nil
}

// certificationRequest returns a DER PKCS#10 request (RFC 2986) for key,
// with subject CN=name and the enrollment code as the PKCS#9
// challengePassword attribute (RFC 2985 5.4.1). crypto/x509 cannot write
// that attribute: its deprecated Attributes field encodes each value as a
// SET of type-and-value SEQUENCEs, where challengePassword is a single
// DirectoryString. So the request is built here, as openssl req does.
func certificationRequest(key *ecdsa.PrivateKey, name, code string) ([]byte, error) {
	return smime.CreateCSR(key, name, code)
}

// enrollmentMail is a message carrying a certification request with code:
// pasted into the text as PEM (what a person does by hand), or attached as
// application/pkcs10 (RFC 5967, what a tool does).
func (u *user) enrollmentMail(code string, attach bool, now time.Time) ([]byte, error) {
	der, err := certificationRequest(u.key, u.name, code)
	if err != nil {
		return nil, fmt.Errorf("%s's certification request: %w", u.email, err)
	}
	var b bytes.Buffer
	u.header(&b, "Certificate request", now)
	text := "Hello kms,\r\n\r\nhere is my certificate request.\r\n\r\n" + strings.Fields(u.name)[0] + "\r\n"
	if !attach {
		b.WriteString("Content-Type: text/plain; charset=us-ascii\r\n\r\n")
		b.WriteString(text + "\r\n")
		b.Write(bytes.ReplaceAll(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), []byte("\n"), []byte("\r\n")))
		return b.Bytes(), nil
	}
	boundary := "=_" + rand.Text()
	fmt.Fprintf(&b, "Content-Type: multipart/mixed; boundary=%q\r\n\r\n", boundary)
	fmt.Fprintf(&b, "--%s\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n%s\r\n", boundary, text)
	fmt.Fprintf(&b, "--%s\r\nContent-Type: application/pkcs10; name=%s.p10\r\n"+
		"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=%s.p10\r\n\r\n",
		boundary, u.local(), u.local())
	enc := base64.StdEncoding.EncodeToString(der)
	for len(enc) > 76 {
		b.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	fmt.Fprintf(&b, "%s\r\n--%s--\r\n", enc, boundary)
	return b.Bytes(), nil
}

// renewalMail is a reply to a kms message, signed with the user's current
// certificate (multipart/signed, detached CMS): exactly what a mail client
// sends when the user clicks Reply, then Sign, then Send. smime.Compose
// writes what kms writes, and that is a client's format too.
func (u *user) renewalMail(to *received, now time.Time) ([]byte, error) {
	if u.cert == nil {
		return nil, fmt.Errorf("%s has no certificate to sign with", u.email)
	}
	return smime.Compose(smime.Message{
		From:      mail.Address{Name: u.name, Address: u.email},
		To:        []mail.Address{{Address: KMSAddress}},
		Subject:   "Re: " + to.subject,
		Date:      now,
		MessageID: strings.ToLower(rand.Text()) + "@" + Domain,
		InReplyTo: []string{to.messageID}, References: []string{to.messageID},
		// A person sent this, not a program: without "no", Compose would
		// mark it auto-generated and kms would rightly not answer it.
		AutoSubmitted: "no",
		Text:          "Please renew my certificate.\n\n" + strings.Fields(u.name)[0] + "\n",
	}, smime.Signer{Key: u.key, Cert: u.cert, Chain: u.chain})
}

// header writes the RFC 5322 header of a message from u to kms.
func (u *user) header(b *bytes.Buffer, subject string, now time.Time) {
	from := mail.Address{Name: u.name, Address: u.email}
	fmt.Fprintf(b, "From: %s\r\nTo: %s\r\nSubject: %s\r\nDate: %s\r\nMessage-ID: <%s@%s>\r\nMIME-Version: 1.0\r\n",
		from.String(), KMSAddress, subject, now.Format(time.RFC1123Z), strings.ToLower(rand.Text()), Domain)
}

// local is the local part of the user's address.
func (u *user) local() string { return u.email[:strings.IndexByte(u.email, '@')] }

// take installs the certificate a kms reply carries: the one for u's
// address and key, which must chain to the kms root and be good for
// S/MIME. It returns the certificate.
func (u *user) take(m *received, tr trust, now time.Time) (*x509.Certificate, error) {
	var mine *x509.Certificate
	var chain []*x509.Certificate
	for _, c := range m.certs {
		switch {
		case c.IsCA:
			if !bytes.Equal(c.RawIssuer, c.RawSubject) {
				chain = append(chain, c)
			}
		case hasAddress(c, u.email) && u.key.PublicKey.Equal(c.PublicKey):
			mine = c
		}
	}
	if mine == nil {
		return nil, fmt.Errorf("kms's reply %q to %s carries no certificate for %s's key", m.subject, m.to, u.email)
	}
	inter := x509.NewCertPool()
	for _, c := range chain {
		inter.AddCert(c)
	}
	if _, err := mine.Verify(x509.VerifyOptions{Roots: tr.roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}}); err != nil {
		return nil, fmt.Errorf("%s's new certificate %x does not verify against the kms root: %w", u.email, mine.SerialNumber, err)
	}
	u.cert, u.chain = mine, chain
	return mine, nil
}

func hasAddress(c *x509.Certificate, addr string) bool {
	for _, a := range c.EmailAddresses {
		if strings.EqualFold(a, addr) {
			return true
		}
	}
	return false
}

// send submits msg to kms over SMTP, as a mail client hands mail to its
// server, within a deadline so that a stuck daemon fails the step instead
// of hanging the demo.
func send(ctx context.Context, smtpAddr, from string, msg []byte) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", smtpAddr)
	if err != nil {
		return fmt.Errorf("SMTP to kms at %s: %w", smtpAddr, err)
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	c, err := smtp.NewClient(conn, "localhost")
	if err != nil {
		conn.Close()
		return fmt.Errorf("SMTP to kms at %s: %w", smtpAddr, err)
	}
	defer c.Close()
	err = c.Hello("client.example.com")
	if err == nil {
		err = c.Mail(from)
	}
	if err == nil {
		err = c.Rcpt(KMSAddress)
	}
	if err == nil {
		err = writeData(c, msg)
	}
	if err == nil {
		err = c.Quit()
	}
	if err != nil {
		return fmt.Errorf("SMTP to kms at %s, from %s: %w", smtpAddr, from, err)
	}
	return nil
}

func writeData(c *smtp.Client, msg []byte) error {
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(msg); err != nil {
		w.Close()
		return err
	}
	return w.Close()
}

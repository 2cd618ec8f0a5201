package mail

import (
	"context"
	"crypto/x509"
	"fmt"
	"net/mail"
	"strings"

	"github.com/kmsmail/kms/clock"
	"github.com/kmsmail/kms/kms"
	"github.com/kmsmail/kms/mail/smime"
)

// CertSource finds a certificate kms issued, for the certificate reply.
type CertSource interface {
	GetCert(ctx context.Context, serial string) (*kms.Certificate, error)
}

// SignedRenderer renders queued mail as complete KMS-signed messages (SPEC
// 4.3, 4.4): a letter for a person and, for a certificate reply, a
// certs-only attachment with the new certificate and its chain, which is
// also in the signature's certificate set.
type SignedRenderer struct {
	Identity   Identity
	Chain      []*x509.Certificate // issuing CA, then root
	Certs      CertSource
	KMSAddress string
	Clock      clock.Clock
}

// Render implements Renderer.
func (r *SignedRenderer) Render(ctx context.Context, m kms.OutboxMessage) ([]byte, error) {
	now := r.Clock.Now()
	l, err := writeLetter(m.Kind, letterData{Payload: m.Payload, KMSAddress: r.KMSAddress, Now: now, Recipient: m.To})
	if err != nil {
		return nil, err
	}
	cert, key := r.Identity.KMS()
	msg := smime.Message{
		From:      mail.Address{Name: "kms", Address: r.KMSAddress},
		To:        []mail.Address{{Address: m.To}},
		Subject:   l.Subject,
		Date:      now,
		MessageID: strings.Trim(m.MessageID, "<>"),
		Text:      l.Text,
	}
	msg.AutoSubmitted = "auto-generated"
	if m.InReplyTo != "" {
		id := strings.Trim(m.InReplyTo, "<>")
		msg.InReplyTo, msg.References = []string{id}, []string{id}
		msg.AutoSubmitted = "auto-replied"
	}
	if m.Kind == kms.MailCertificate {
		issued := m.Issued // handed over with the reply (kms.Handoff)
		if issued == nil {
			c, err := r.Certs.GetCert(ctx, m.Payload.Serial)
			if err != nil {
				return nil, fmt.Errorf("certificate reply %d: %w", m.ID, err)
			}
			if issued, err = x509.ParseCertificate(c.DER); err != nil {
				return nil, fmt.Errorf("certificate reply %d: stored certificate: %w", m.ID, err)
			}
		}
		msg.Certs = append([]*x509.Certificate{issued}, r.Chain...)
	}
	return smime.Compose(msg, smime.Signer{Key: key, Cert: cert, Chain: r.Chain})
}

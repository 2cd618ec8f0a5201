package kms

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/kmsmail/kms/internal/certder"
	"github.com/kmsmail/kms/kms/ca"
	"github.com/kmsmail/kms/policy"
)

// Renew issues a same-key successor to the current certificate serial, as
// asked by a request signed with it.
func (s *Service) Renew(ctx context.Context, serial string, req Request) (*Certificate, error) {
	return s.renew(ctx, serial, nil, req)
}

// Rekey issues a successor to the current certificate serial for a new key.
func (s *Service) Rekey(ctx context.Context, serial string, pub crypto.PublicKey, req Request) (*Certificate, error) {
	if pub == nil {
		return nil, errors.New("rekey: no public key")
	}
	return s.renew(ctx, serial, pub, req)
}

func (s *Service) renew(ctx context.Context, serial string, newKey crypto.PublicKey, req Request) (*Certificate, error) {
	op := "renewal"
	if newKey != nil {
		op = "rekey"
	}
	now := s.clock.Now()
	old := req.Signer.trackedRow(serial)
	if old == nil {
		var err error
		if old, err = s.store.certBySerial(ctx, s.store.q(nil), serial, false); err != nil {
			return nil, s.refused(ctx, req.Actor, op, "", serial, err)
		}
	}
	u := &User{ID: old.userID, Email: old.Email, State: old.userState}
	if err := checkRenewable(u, old, now); err != nil {
		return nil, s.refused(ctx, req.Actor, op, u.Email, serial, s.replayOr(ctx, req, err))
	}
	pol := s.policies.For(u.Email[strings.LastIndexByte(u.Email, '@')+1:])
	pub := newKey
	keySince := now
	if newKey == nil {
		if pol.NeedsRekey(old.KeySince, now) {
			return nil, s.refused(ctx, req.Actor, op, u.Email, serial,
				fmt.Errorf("key certified since %s: %w", old.KeySince.Format("2006-01-02"), ErrRekeyRequired))
		}
		key, err := certder.PublicKey(old.DER)
		if err != nil {
			return nil, fmt.Errorf("certificate %s: stored DER unreadable: %w", serial, err)
		}
		pub, keySince = key, old.KeySince
	}
	if err := pol.CheckKey(pub); err != nil {
		return nil, s.refused(ctx, req.Actor, op, u.Email, serial, err)
	}
	cert, err := s.sign(u.Email, pub, now, pol)
	if err != nil {
		return nil, err
	}
	row := newCertRow(cert, u.ID, now, keySince)
	if newKey != nil && string(row.keyHash) == string(old.keyHash) {
		row.KeySince = old.KeySince // a "rekey" to the same key is a renewal
	}
	reply := s.reserveReply()
	err = s.store.tx(ctx, func(tx *sql.Tx) error {
		// The predecessor must still be current and its owner still
		// active: one statement checks both and supersedes it.
		res, err := s.store.q(tx).ExecContext(ctx, `UPDATE certificates SET state = 'superseded', superseded_by = $1, next_reminder_at = NULL
			WHERE serial = $2 AND state = 'current' AND user_id IN (SELECT id FROM users WHERE id = $3 AND state = 'active')`,
			row.Serial, serial, u.ID)
		if err := oneRow(res, err, "certificate "+serial+" is no longer current, or its user no longer active"); err != nil {
			return err
		}
		return s.recordIssue(ctx, tx, row, cert, &reply, op, req, pol, now)
	})
	handedOver := s.settleReply(&reply, err == nil)
	if err != nil {
		return nil, s.refused(ctx, req.Actor, op, u.Email, serial, err)
	}
	s.issued(u.Email, row, op, req.Actor, handedOver)
	return &row.Certificate, nil
}

// replayOr returns ErrReplay if req's signature was already used for an
// issuance, and err otherwise. A replay is always refused by the state
// checks (the certificate it renewed is no longer current), so the replay
// record is only read on that path, where it gives the true reason; on the
// way to an issuance, the insert in recordIssue is the guard.
func (s *Service) replayOr(ctx context.Context, req Request, err error) error {
	if len(req.SignatureDigest) == 0 {
		return err
	}
	var n int
	if qerr := s.store.q(nil).QueryRowContext(ctx, `SELECT COUNT(*) FROM seen_signatures WHERE digest = $1`, req.SignatureDigest).Scan(&n); qerr != nil || n == 0 {
		return err
	}
	return fmt.Errorf("%w (%v)", ErrReplay, err)
}

// checkRenewable applies SPEC 4.2's state rules to a renewal request.
func checkRenewable(u *User, c *certRow, now time.Time) error {
	switch {
	case c.State == CertRevoked:
		return fmt.Errorf("certificate %s was revoked (%s): %w", c.Serial, c.RevocationReason, ErrCertState)
	case !now.Before(c.NotAfter) || c.State == CertExpired:
		return fmt.Errorf("certificate %s expired %s: %w", c.Serial, c.NotAfter.Format(time.RFC3339), ErrLapsed)
	case u.State != UserActive:
		return fmt.Errorf("%s is %s: %w", u.Email, u.State, ErrUserState)
	case c.State != CertCurrent:
		return fmt.Errorf("certificate %s is %s (by %s); sign with your newest certificate: %w", c.Serial, c.State, c.SupersededBy, ErrCertState)
	case now.Before(c.NotBefore):
		return fmt.Errorf("certificate %s is not valid before %s: %w", c.Serial, c.NotBefore.Format(time.RFC3339), ErrCertState)
	}
	return nil
}

// sign has the CA issue a certificate for email and pub under pol.
func (s *Service) sign(email string, pub crypto.PublicKey, now time.Time, pol policy.Policy) (*x509.Certificate, error) {
	cert, err := s.issuer.Issue(ca.Request{Email: email, PublicKey: pub, NotBefore: now, NotAfter: pol.Lifetime.AddTo(now)})
	if err != nil {
		return nil, fmt.Errorf("issue certificate for %s: %w", email, err)
	}
	return cert, nil
}

// newCertRow turns a freshly issued certificate into a row.
func newCertRow(cert *x509.Certificate, userID int64, now, keySince time.Time) *certRow {
	h := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	email := ""
	if len(cert.EmailAddresses) > 0 {
		email = strings.ToLower(cert.EmailAddresses[0])
	}
	return &certRow{
		Certificate: Certificate{
			Serial:    SerialHex(cert),
			Email:     email,
			State:     CertCurrent,
			NotBefore: cert.NotBefore.UTC(),
			NotAfter:  cert.NotAfter.UTC(),
			IssuedAt:  now,
			KeySince:  keySince,
			DER:       cert.Raw,
		},
		keyHash: h[:],
		userID:  userID,
	}
}

// recordIssue writes a new current certificate with its first reminder, the
// certificate reply, the replay record and the audit record. With a
// reservation in reply, the reply is queued claimed and kept in reply.msg,
// to be handed over once the transaction commits.
func (s *Service) recordIssue(ctx context.Context, tx *sql.Tx, row *certRow, cert *x509.Certificate, reply *replyClaim, op string, req Request, pol policy.Policy, now time.Time) error {
	reply.msg = nil // the transaction may run again
	var next *time.Time
	if due, ok := pol.Reminders.Next(row.NotBefore, row.NotAfter, time.Time{}); ok {
		next = &due
	}
	row.NextReminderAt = next
	q := s.store.q(tx)
	if err := insertCert(ctx, q, row, next); err != nil {
		return err
	}
	if len(req.SignatureDigest) > 0 {
		if _, err := q.ExecContext(ctx, `INSERT INTO seen_signatures (digest, serial, seen_at) VALUES ($1, $2, $3)`,
			req.SignatureDigest, row.Serial, ms(now)); err != nil {
			if isUniqueViolation(err) {
				return ErrReplay
			}
			return err
		}
	}
	if err := finishInbound(ctx, q, req.InboundID, InboundDone, op+" "+row.Serial, now); err != nil {
		return err
	}
	mail := outboxMail{Kind: MailCertificate, To: row.Email, InReplyTo: req.MessageID,
		Payload: OutboxPayload{Email: row.Email, Serial: row.Serial, NotAfter: row.NotAfter, Operation: op, Subject: req.Subject}}
	m, err := s.store.queueOutbox(ctx, tx, mail, s.msgDom, now, reply.lease)
	if err != nil {
		return err
	}
	if reply.lease > 0 {
		m.Issued = cert
		reply.msg = m
	}
	detail := "not_after " + row.NotAfter.Format(time.RFC3339)
	if req.Answers != "" {
		detail += "; answers a " + string(req.Answers)
	}
	return insertAudit(ctx, q, auditEntry{Actor: req.Actor, Action: "issue:" + op, Email: row.Email, Serial: row.Serial,
		Detail: detail}, now)
}

// oneRow turns an UPDATE that matched no row into ErrConflict: the row
// changed between the read and the transaction.

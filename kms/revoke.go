package kms

import (
	"strconv"

	"context"
	"crypto/sha256"
	"crypto/x509"
	"database/sql"
	"errors"
	"fmt"
	"github.com/kmsmail/kms/kms/ca"
	"strings"
	"time"
)

// Revoke revokes a certificate for an RFC 5280 reason code. Revoking the
// user's current certificate leaves them without a usable certificate, so
// they become lapsed: only an administrator's re-enrollment brings them
// back, exactly as after an expiry.
func (s *Service) Revoke(ctx context.Context, serial string, reason int, actor string) (*Certificate, error) {
	serial, err := NormalizeSerial(serial)
	if err != nil {
		return nil, err
	}
	if _, err := ca.ParseReason(strconv.Itoa(reason)); err != nil {
		return nil, fmt.Errorf("revoke %s: %w", serial, err)
	}
	now := s.clock.Now()
	var out *Certificate
	err = s.store.tx(ctx, func(tx *sql.Tx) error {
		c, err := s.store.certBySerial(ctx, tx, serial, true)
		if err != nil {
			return err
		}
		if c.State == CertRevoked {
			return fmt.Errorf("certificate %s was already revoked on %s: %w", serial, c.RevokedAt.Format(time.RFC3339), ErrCertState)
		}
		if err := s.revokeRow(ctx, tx, c, reason, actor, now); err != nil {
			return err
		}
		out = &c.Certificate
		return nil
	})
	if err != nil {
		return nil, s.refused(ctx, actor, "revoke", "", serial, err)
	}
	s.log.Info("audit", "action", "revoke", "actor", actor, "serial", serial, "email", out.Email, "reason", ReasonName(reason))
	if s.metrics != nil {
		s.metrics.Revoked.WithLabelValues(ReasonName(reason)).Inc()
	}
	s.crlStale()
	s.mailQueued()
	return out, nil
}

// revokeRow revokes c inside tx, lapses its user if it was their current
// certificate, and queues the revocation notice.
func (s *Service) revokeRow(ctx context.Context, tx *sql.Tx, c *certRow, reason int, actor string, now time.Time) error {
	if _, err := tx.ExecContext(ctx, `UPDATE certificates SET state = 'revoked', revoked_at = $1, revocation_reason = $2,
		next_reminder_at = NULL WHERE serial = $3`, ms(now), reason, c.Serial); err != nil {
		return err
	}
	if c.State == CertCurrent {
		if _, err := tx.ExecContext(ctx, `UPDATE users SET state = 'lapsed', updated_at = $1 WHERE id = $2 AND state = 'active'`, ms(now), c.userID); err != nil {
			return err
		}
	}
	c.State = CertRevoked
	c.RevokedAt = &now
	c.RevocationReason = ReasonName(reason)
	if err := s.store.insertOutbox(ctx, tx, outboxMail{Kind: MailRevocation, To: c.Email,
		Payload: OutboxPayload{Email: c.Email, Serial: c.Serial, NotAfter: c.NotAfter, Reason: ReasonName(reason)}}, s.msgDom, now); err != nil {
		return err
	}
	return insertAudit(ctx, tx, auditEntry{Actor: actor, Action: "revoke", Email: c.Email, Serial: c.Serial, Detail: ReasonName(reason)}, now)
}

// Disable switches a user off: outstanding codes are cancelled, reminders
// stop, and every certificate that is still valid is revoked for reason
// (affiliationChanged when the caller passes -1), because a disabled user's
// key must no longer be trusted for their address.
func (s *Service) Disable(ctx context.Context, addr string, reason int, actor string) (*User, error) {
	email, err := NormalizeAddress(addr)
	if err != nil {
		return nil, err
	}
	if reason < 0 {
		reason = ca.ReasonAffiliationChanged
	}
	now := s.clock.Now()
	var u *User
	err = s.store.tx(ctx, func(tx *sql.Tx) error {
		u, err = s.store.userByEmail(ctx, tx, email, true)
		if err != nil {
			return err
		}
		if u.State == UserDisabled {
			return fmt.Errorf("%s is already disabled: %w", email, ErrUserState)
		}
		rows, err := tx.QueryContext(ctx, `SELECT `+certColumns+` FROM certificates c JOIN users u ON u.id = c.user_id
			WHERE c.user_id = $1 AND c.state IN ('current', 'superseded') AND c.not_after > $2`, u.ID, ms(now))
		if err != nil {
			return err
		}
		var live []*certRow
		for rows.Next() {
			c, err := scanCert(rows)
			if err != nil {
				rows.Close()
				return err
			}
			live = append(live, c)
		}
		rows.Close()
		for _, c := range live {
			if err := s.revokeRow(ctx, tx, c, reason, actor, now); err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, `UPDATE enrollment_codes SET state = 'cancelled' WHERE user_id = $1 AND state = 'outstanding'`, u.ID); err != nil {
			return err
		}
		if err := setUserState(ctx, tx, u.ID, UserDisabled, now); err != nil {
			return err
		}
		u.State, u.UpdatedAt = UserDisabled, now
		return insertAudit(ctx, tx, auditEntry{Actor: actor, Action: "disable", Email: email,
			Detail: fmt.Sprintf("%d certificates revoked", len(live))}, now)
	})
	if err != nil {
		return nil, s.refused(ctx, actor, "disable", email, "", err)
	}
	s.log.Info("audit", "action", "disable", "actor", actor, "email", email)
	s.crlStale()
	s.mailQueued()
	return u, nil
}

// Import starts tracking a certificate kms did not issue (a migration from
// another CA). Its single rfc822Name must be in a served domain and it must
// not have expired. The user is created active, or an invited, lapsed or
// disabled user becomes active; a user who already holds a current
// certificate is refused, so an import never silently replaces one.
func (s *Service) Import(ctx context.Context, der []byte, actor string) (*Certificate, error) {
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("import: not a DER or PEM X.509 certificate: %w", err)
	}
	if len(cert.EmailAddresses) != 1 {
		return nil, fmt.Errorf("import: certificate %x names %d mail addresses; kms tracks certificates for exactly one", cert.SerialNumber, len(cert.EmailAddresses))
	}
	email, _, err := s.checkAddress(cert.EmailAddresses[0])
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	now := s.clock.Now()
	if !now.Before(cert.NotAfter) {
		return nil, fmt.Errorf("import: certificate %x expired on %s: %w", cert.SerialNumber, cert.NotAfter.Format(time.RFC3339), ErrCertState)
	}
	pol := s.policies.For(email[strings.LastIndexByte(email, '@')+1:])
	h := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	row := &certRow{Certificate: Certificate{Serial: SerialHex(cert), Email: email, State: CertCurrent,
		NotBefore: cert.NotBefore.UTC(), NotAfter: cert.NotAfter.UTC(), IssuedAt: now, KeySince: cert.NotBefore.UTC(),
		Imported: true, DER: cert.Raw}, keyHash: h[:]}
	err = s.store.tx(ctx, func(tx *sql.Tx) error {
		// Importing what kms already tracks (again, after a revocation or a
		// lapse) is refused as such, not as a conflict to retry.
		if old, err := s.store.certBySerial(ctx, tx, row.Serial, false); err == nil {
			return fmt.Errorf("import: certificate %s of %s is already tracked (%s): %w", row.Serial, old.Email, old.State, ErrCertState)
		}
		u, err := s.store.userByEmail(ctx, tx, email, true)
		switch {
		case errors.Is(err, ErrNotFound):
			if err := tx.QueryRowContext(ctx, `INSERT INTO users (email, state, created_at, updated_at)
				VALUES ($1, 'active', $2, $2) RETURNING id`, email, ms(now)).Scan(&row.userID); err != nil {
				return err
			}
		case err != nil:
			return err
		case u.State == UserActive:
			return fmt.Errorf("%s already holds a current certificate: %w", email, ErrAlreadyActive)
		default:
			row.userID = u.ID
			if err := setUserState(ctx, tx, u.ID, UserActive, now); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, `UPDATE enrollment_codes SET state = 'cancelled' WHERE user_id = $1 AND state = 'outstanding'`, u.ID); err != nil {
				return err
			}
		}
		var next *time.Time
		if due, ok := pol.Reminders.Next(row.NotBefore, row.NotAfter, time.Time{}); ok {
			next = &due
		}
		row.NextReminderAt = next
		if err := insertCert(ctx, tx, row, next); err != nil {
			return err
		}
		return insertAudit(ctx, tx, auditEntry{Actor: actor, Action: "import", Email: email, Serial: row.Serial,
			Detail: "issuer " + cert.Issuer.String()}, now)
	})
	if err != nil {
		return nil, s.refused(ctx, actor, "import", email, row.Serial, err)
	}
	s.log.Info("audit", "action", "import", "actor", actor, "email", email, "serial", row.Serial)
	return &row.Certificate, nil
}

package kms

import (
	"context"
	"database/sql"
	"time"
)

// ExpireDue moves certificates whose validity has ended to expired. A user
// whose current certificate expired unrenewed becomes lapsed, and one lapse
// notice goes to the user and one to the administrators, in the same
// transaction as the state change (SPEC 4.4), so a crash can neither lose
// nor repeat them. It returns how many users lapsed.
func (s *Service) ExpireDue(ctx context.Context) (int, error) {
	now := s.clock.Now()
	// Superseded certificates expire silently: their user renewed.
	if err := s.store.tx(ctx, func(tx *sql.Tx) error {
		_, err := tx.ExecContext(ctx, `UPDATE certificates SET state = 'expired', next_reminder_at = NULL
			WHERE state = 'superseded' AND not_after <= $1`, ms(now))
		return err
	}); err != nil {
		return 0, err
	}
	lapsed := 0
	for {
		// A bounded batch per round keeps each write transaction short, so
		// requests by mail are not held up behind a mass expiry.
		rows, err := s.store.db.QueryContext(ctx, `SELECT c.serial FROM certificates c
			WHERE c.state = 'current' AND c.not_after <= $1 ORDER BY c.not_after LIMIT 200`, ms(now))
		if err != nil {
			return lapsed, err
		}
		var serials []string
		for rows.Next() {
			var serial string
			if err := rows.Scan(&serial); err != nil {
				rows.Close()
				return lapsed, err
			}
			serials = append(serials, serial)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return lapsed, err
		}
		if len(serials) == 0 {
			return lapsed, nil
		}
		for _, serial := range serials {
			did, err := s.expireOne(ctx, serial, now)
			if err != nil {
				return lapsed, err
			}
			if did {
				lapsed++
			}
		}
	}
}

// expireOne expires one current certificate and lapses its user.
func (s *Service) expireOne(ctx context.Context, serial string, now time.Time) (bool, error) {
	lapsed := false
	var email string
	err := s.store.tx(ctx, func(tx *sql.Tx) error {
		lapsed = false // the transaction may run again
		c, err := s.store.certBySerial(ctx, tx, serial, true)
		if err != nil {
			return err
		}
		if c.State != CertCurrent || c.NotAfter.After(now) {
			return nil // renewed or revoked meanwhile
		}
		email = c.Email
		if _, err := tx.ExecContext(ctx, `UPDATE certificates SET state = 'expired', next_reminder_at = NULL WHERE serial = $1`, serial); err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `UPDATE users SET state = 'lapsed', updated_at = $1 WHERE id = $2 AND state = 'active'`, ms(now), c.userID)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return insertAudit(ctx, tx, auditEntry{Actor: "system", Action: "expire", Email: c.Email, Serial: serial}, now)
		}
		lapsed = true
		p := OutboxPayload{Email: c.Email, Serial: serial, NotAfter: c.NotAfter}
		if err := s.store.insertOutbox(ctx, tx, outboxMail{Kind: MailLapse, To: c.Email, Payload: p}, s.msgDom, now); err != nil {
			return err
		}
		if s.admin != "" {
			if err := s.store.insertOutbox(ctx, tx, outboxMail{Kind: MailLapseAdmin, To: s.admin, Payload: p}, s.msgDom, now); err != nil {
				return err
			}
		}
		return insertAudit(ctx, tx, auditEntry{Actor: "system", Action: "lapse", Email: c.Email, Serial: serial,
			Detail: "expired " + c.NotAfter.Format(time.RFC3339)}, now)
	})
	if err == nil && lapsed {
		s.log.Info("audit", "action", "lapse", "actor", "system", "email", email, "serial", serial)
		if s.metrics != nil {
			s.metrics.Lapsed.Inc()
		}
		s.mailQueued()
	}
	return lapsed, err
}

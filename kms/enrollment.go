package kms

import (
	"context"
	"crypto"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/kmsmail/kms/enroll"
)

// Enroll creates an invited user with a one-time code, or re-enrolls a lapsed
// or disabled one. An invited user gets a fresh code and the old one stops
// working (the administrator lost it, or it expired). A user who holds a
// current certificate is refused: they renew by mail.
func (s *Service) Enroll(ctx context.Context, addr, name, actor string) (*Enrollment, error) {
	email, domain, err := s.checkAddress(addr)
	if err != nil {
		return nil, s.refused(ctx, actor, "enroll", addr, "", err)
	}
	code, err := enroll.NewCode()
	if err != nil {
		return nil, err
	}
	now := s.clock.Now()
	pol := s.policies.For(domain)
	expires := pol.Enrollment.CodeTTL.AddTo(now)
	action := "enroll"
	err = s.store.tx(ctx, func(tx *sql.Tx) error {
		// The transaction may run again: it starts from the caller's values.
		action = "enroll"
		name := name
		u, err := s.store.userByEmail(ctx, tx, email, true)
		switch {
		case errors.Is(err, ErrNotFound):
			if err := tx.QueryRowContext(ctx, `INSERT INTO users (email, name, state, created_at, updated_at)
				VALUES ($1, $2, 'invited', $3, $3) RETURNING id`, email, name, ms(now)).Scan(new(int64)); err != nil {
				return err
			}
			u, err = s.store.userByEmail(ctx, tx, email, false)
			if err != nil {
				return err
			}
		case err != nil:
			return err
		case u.State == UserActive:
			return fmt.Errorf("%s holds a current certificate and renews by mail; to replace it, revoke it first (kms cert revoke): %w", email, ErrAlreadyActive)
		default:
			action = "re-enroll"
			if name == "" {
				name = u.Name
			}
			if _, err := tx.ExecContext(ctx, `UPDATE users SET state = 'invited', name = $1, updated_at = $2 WHERE id = $3`, name, ms(now), u.ID); err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, `UPDATE enrollment_codes SET state = 'cancelled' WHERE user_id = $1 AND state = 'outstanding'`, u.ID); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO enrollment_codes (user_id, code_hash, state, created_at, expires_at)
			VALUES ($1, $2, 'outstanding', $3, $4)`, u.ID, enroll.Hash(code), ms(now), ms(expires)); err != nil {
			return err
		}
		invitation := OutboxPayload{Email: email}
		if pol.Enrollment.MailCode {
			invitation.Code = code
		}
		if err := s.store.insertOutbox(ctx, tx, outboxMail{Kind: MailInvitation, To: email,
			Payload: invitation}, s.msgDom, now); err != nil {
			return err
		}
		return insertAudit(ctx, tx, auditEntry{Actor: actor, Action: action, Email: email,
			Detail: "code expires " + expires.Format(time.RFC3339)}, now)
	})
	if err != nil {
		s.refused(ctx, actor, "enroll", email, "", err)
		return nil, err
	}
	s.log.Info("audit", "action", action, "actor", actor, "email", email, "code_expires", expires)
	s.mailQueued()
	return &Enrollment{Email: email, Code: code, Expires: expires}, nil
}

// EnrollByCode redeems a one-time code: the invited user's first
// certificate, for pub. A wrong code counts against the code's attempts in a
// transaction of its own, so the count survives the failed request.
func (s *Service) EnrollByCode(ctx context.Context, addr, code string, pub crypto.PublicKey, req Request) (*Certificate, error) {
	email, domain, err := s.checkAddress(addr)
	if err != nil {
		return nil, s.refused(ctx, req.Actor, "enroll-by-mail", addr, "", err)
	}
	now := s.clock.Now()
	pol := s.policies.For(domain)
	u, err := s.store.userByEmail(ctx, s.store.db, email, false)
	if err != nil {
		return nil, s.refused(ctx, req.Actor, "enroll-by-mail", email, "", err)
	}
	if u.State != UserInvited {
		return nil, s.refused(ctx, req.Actor, "enroll-by-mail", email, "",
			fmt.Errorf("%s is %s, not invited: %w", email, u.State, ErrNoCode))
	}
	codeID, err := s.checkCode(ctx, u, code, now, pol.Enrollment.MaxAttempts)
	if err != nil {
		return nil, s.refused(ctx, req.Actor, "enroll-by-mail", email, "", err)
	}
	if err := pol.CheckKey(pub); err != nil {
		return nil, s.refused(ctx, req.Actor, "enroll-by-mail", email, "", err)
	}
	cert, err := s.sign(email, pub, now, pol)
	if err != nil {
		return nil, err
	}
	row := newCertRow(cert, u.ID, now, now)
	reply := s.reserveReply()
	err = s.store.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE enrollment_codes SET state = 'used', used_at = $1 WHERE id = $2 AND state = 'outstanding'`, ms(now), codeID)
		if err := oneRow(res, err, "enrollment code already used"); err != nil {
			return err
		}
		res, err = tx.ExecContext(ctx, `UPDATE users SET state = 'active', updated_at = $1 WHERE id = $2 AND state = 'invited'`, ms(now), u.ID)
		if err := oneRow(res, err, "user no longer invited"); err != nil {
			return err
		}
		return s.recordIssue(ctx, tx, row, cert, &reply, "enrollment", req, pol, now)
	})
	handedOver := s.settleReply(&reply, err == nil)
	if err != nil {
		return nil, s.refused(ctx, req.Actor, "enroll-by-mail", email, "", err)
	}
	s.issued(email, row, "enrollment", req.Actor, handedOver)
	return &row.Certificate, nil
}

// checkCode finds the user's outstanding code and checks input against it.
// The read, the check and the count of a wrong try share one transaction, so
// parallel guesses cannot slip past max_attempts.
func (s *Service) checkCode(ctx context.Context, u *User, input string, now time.Time, maxAttempts int) (int64, error) {
	var (
		id       int64
		checkErr error
	)
	err := s.store.tx(ctx, func(tx *sql.Tx) error {
		var (
			expires  int64
			attempts int
			hash     []byte
		)
		err := tx.QueryRowContext(ctx, `SELECT id, code_hash, expires_at, attempts FROM enrollment_codes
			WHERE user_id = $1 AND state = 'outstanding' ORDER BY id DESC LIMIT 1`+s.store.dialect.lockRow, u.ID).Scan(&id, &hash, &expires, &attempts)
		if errors.Is(err, sql.ErrNoRows) {
			checkErr = fmt.Errorf("%s: %w", u.Email, ErrNoCode)
			return nil
		}
		if err != nil {
			return err
		}
		c := enroll.Code{Hash: hash, ExpiresAt: fromMS(expires), Attempts: attempts}
		checkErr = c.Check(input, now, maxAttempts)
		if errors.Is(checkErr, enroll.ErrCodeWrong) || errors.Is(checkErr, enroll.ErrMalformedCode) {
			_, err := tx.ExecContext(ctx, `UPDATE enrollment_codes SET attempts = attempts + 1 WHERE id = $1`, id)
			return err
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	if checkErr != nil {
		return 0, fmt.Errorf("%s: %w", u.Email, checkErr)
	}
	return id, nil
}

package kms

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/kmsmail/kms/internal/certder"
)

// UserDetail is a user with their certificates, newest first.
type UserDetail struct {
	User
	Certificates []Certificate `json:"certificates"`
	CodeExpires  *time.Time    `json:"code_expires,omitempty"` // of the outstanding enrollment code
}

// ListUsers returns users ordered by address, optionally only those in state.
func (s *Service) ListUsers(ctx context.Context, state UserState) ([]User, error) {
	query := `SELECT ` + userColumns + ` FROM users`
	var args []any
	if state != "" {
		query += ` WHERE state = $1`
		args = append(args, string(state))
	}
	rows, err := s.store.db.QueryContext(ctx, query+` ORDER BY email`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []User{}
	for rows.Next() {
		u, err := scanUser(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, *u)
	}
	return out, rows.Err()
}

// GetUser returns one user with their certificates.
func (s *Service) GetUser(ctx context.Context, addr string) (*UserDetail, error) {
	email, err := NormalizeAddress(addr)
	if err != nil {
		return nil, err
	}
	u, err := s.store.userByEmail(ctx, s.store.db, email, false)
	if err != nil {
		return nil, err
	}
	certs, err := s.ListCerts(ctx, CertFilter{Email: email})
	if err != nil {
		return nil, err
	}
	d := &UserDetail{User: *u, Certificates: certs}
	var exp int64
	err = s.store.db.QueryRowContext(ctx, `SELECT expires_at FROM enrollment_codes WHERE user_id = $1 AND state = 'outstanding'
		ORDER BY id DESC LIMIT 1`, u.ID).Scan(&exp)
	if err == nil {
		t := fromMS(exp)
		d.CodeExpires = &t
	}
	return d, nil
}

// CertFilter selects certificates for ListCerts. Zero fields select all.
type CertFilter struct {
	Email string
	State CertState
	// ExpiringWithin selects certificates that are current or superseded and
	// expire within this long from now (and have not yet expired).
	ExpiringWithin time.Duration
}

// ListCerts returns certificates, soonest expiry first.
func (s *Service) ListCerts(ctx context.Context, f CertFilter) ([]Certificate, error) {
	var (
		where []string
		args  []any
	)
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	if f.Email != "" {
		email, err := NormalizeAddress(f.Email)
		if err != nil {
			return nil, err
		}
		where = append(where, "u.email = "+arg(email))
	}
	if f.State != "" {
		where = append(where, "c.state = "+arg(string(f.State)))
	}
	if f.ExpiringWithin > 0 {
		now := s.clock.Now()
		where = append(where, "c.state IN ('current', 'superseded')",
			"c.not_after > "+arg(ms(now)), "c.not_after <= "+arg(ms(now.Add(f.ExpiringWithin))))
	}
	query := `SELECT ` + certColumns + ` FROM certificates c JOIN users u ON u.id = c.user_id`
	if len(where) > 0 {
		query += ` WHERE ` + strings.Join(where, " AND ")
	}
	rows, err := s.store.db.QueryContext(ctx, query+` ORDER BY c.not_after, c.serial`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []Certificate{}
	for rows.Next() {
		c, err := scanCert(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, c.Certificate)
	}
	return out, rows.Err()
}

// GetCert returns one certificate by serial (any spelling NormalizeSerial accepts).
func (s *Service) GetCert(ctx context.Context, serial string) (*Certificate, error) {
	serial, err := NormalizeSerial(serial)
	if err != nil {
		return nil, err
	}
	c, err := s.store.certBySerial(ctx, s.store.q(nil), serial, false)
	if err != nil {
		return nil, err
	}
	return &c.Certificate, nil
}

// CertForSigner finds the tracked certificate whose DER is der, the check a
// renewal request's signer must pass ("a certificate this KMS tracks").
func (s *Service) CertForSigner(ctx context.Context, der []byte) (*Certificate, error) {
	c, err := s.store.certBySerial(ctx, s.store.q(nil), certder.SerialHex(der), false)
	if err != nil {
		return nil, err
	}
	if string(c.DER) != string(der) {
		return nil, fmt.Errorf("certificate with serial %s differs from the one kms tracks: %w", c.Serial, ErrNotFound)
	}
	out := c.Certificate
	out.tracked = c
	return &out, nil
}

// Counts returns how many certificates are in each state and users in each
// state, for metrics and the health view.
func (s *Service) Counts(ctx context.Context) (certs map[CertState]int, users map[UserState]int, err error) {
	certs, users = map[CertState]int{}, map[UserState]int{}
	rows, err := s.store.db.QueryContext(ctx, `SELECT state, COUNT(*) FROM certificates GROUP BY state`)
	if err != nil {
		return nil, nil, err
	}
	for rows.Next() {
		var st string
		var n int
		if err := rows.Scan(&st, &n); err != nil {
			rows.Close()
			return nil, nil, err
		}
		certs[CertState(st)] = n
	}
	rows.Close()
	rows, err = s.store.db.QueryContext(ctx, `SELECT state, COUNT(*) FROM users GROUP BY state`)
	if err != nil {
		return nil, nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var st string
		var n int
		if err := rows.Scan(&st, &n); err != nil {
			return nil, nil, err
		}
		users[UserState(st)] = n
	}
	return certs, users, rows.Err()
}

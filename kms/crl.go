package kms

import (
	"context"
	"database/sql"
	"fmt"
	"math/big"
	"sync"
	"time"

	"github.com/kmsmail/kms/kms/ca"
)

// CRLSigner signs certificate revocation lists; *ca.Authority implements it.
type CRLSigner interface {
	CRL(entries []ca.Revoked, number *big.Int, thisUpdate, nextUpdate time.Time) ([]byte, error)
}

// CRL validity: the S/MIME Baseline Requirements ask for a new CRL at least
// every seven days with nextUpdate at most ten days after thisUpdate. kms
// publishes one valid for seven days and refreshes it daily and at every
// revocation.
const (
	crlValidity = 7 * 24 * time.Hour
	crlRefresh  = 24 * time.Hour
)

// crlCache holds the newest CRL so /crl serves it without signing per request.
type crlCache struct {
	mu         sync.Mutex
	der        []byte
	thisUpdate time.Time
	stale      bool
}

// crlStale marks the cached CRL out of date after a revocation.
func (s *Service) crlStale() {
	s.crl.mu.Lock()
	s.crl.stale = true
	s.crl.mu.Unlock()
}

// CRL returns the current CRL in DER, signing a new one when the cached one
// is older than a day or a revocation happened since.
func (s *Service) CRL(ctx context.Context) ([]byte, error) {
	s.crl.mu.Lock()
	defer s.crl.mu.Unlock()
	now := s.clock.Now()
	if s.crl.der != nil && !s.crl.stale && now.Sub(s.crl.thisUpdate) < crlRefresh && !now.Before(s.crl.thisUpdate) {
		return s.crl.der, nil
	}
	if s.crlSigner == nil {
		return nil, fmt.Errorf("crl: no CRL signer configured")
	}
	entries, err := s.revokedEntries(ctx, now)
	if err != nil {
		return nil, err
	}
	var number int64
	err = s.store.tx(ctx, func(tx *sql.Tx) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO counters (name, value) VALUES ('crl_number', 0) ON CONFLICT (name) DO NOTHING`); err != nil {
			return err
		}
		return tx.QueryRowContext(ctx, `UPDATE counters SET value = value + 1 WHERE name = 'crl_number' RETURNING value`).Scan(&number)
	})
	if err != nil {
		return nil, fmt.Errorf("crl: number: %w", err)
	}
	der, err := s.crlSigner.CRL(entries, big.NewInt(number), now, now.Add(crlValidity))
	if err != nil {
		return nil, fmt.Errorf("crl: sign: %w", err)
	}
	s.crl.der, s.crl.thisUpdate, s.crl.stale = der, now, false
	return der, nil
}

// revokedEntries lists revoked certificates kms issued that have not yet
// expired; an expired certificate needs no CRL entry (RFC 5280 5.1.2.6).
func (s *Service) revokedEntries(ctx context.Context, now time.Time) ([]ca.Revoked, error) {
	rows, err := s.store.db.QueryContext(ctx, `SELECT serial, revoked_at, revocation_reason FROM certificates
		WHERE revoked_at IS NOT NULL AND imported = 0 AND not_after > $1 ORDER BY revoked_at`, ms(now))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []ca.Revoked
	for rows.Next() {
		var (
			serial string
			at     int64
			reason int
		)
		if err := rows.Scan(&serial, &at, &reason); err != nil {
			return nil, err
		}
		n, ok := new(big.Int).SetString(serial, 16)
		if !ok {
			return nil, fmt.Errorf("crl: stored serial %q is not hexadecimal", serial)
		}
		out = append(out, ca.Revoked{Serial: n, At: fromMS(at), Reason: reason})
	}
	return out, rows.Err()
}

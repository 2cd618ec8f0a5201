package kms

import (
	"context"
	"crypto/sha256"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestMigrationMovesReceivedMail: a message received before migration 3
// (when its bytes were in the inbound row) is still there, byte for byte,
// for the worker that claims it after the upgrade; and a duplicate of it
// is still recognised.
func TestMigrationMovesReceivedMail(t *testing.T) {
	type target struct{ driver, dsn string }
	targets := []target{{"sqlite", filepath.Join(t.TempDir(), "kms.db")}}
	if dsn := os.Getenv("KMS_TEST_POSTGRES"); dsn != "" {
		targets = append(targets, target{"postgres", newPostgresDatabase(t, dsn)})
	}
	for _, tg := range targets {
		t.Run(tg.driver, func(t *testing.T) {
			ctx := context.Background()
			old, err := openStore(ctx, tg.driver, tg.dsn, nil, 2)
			if err != nil {
				t.Fatal(err)
			}
			raw := []byte("From: ann@example.com\r\nSubject: renew\r\n\r\nbody before the upgrade\r\n")
			now := time.Date(2026, 11, 1, 9, 0, 0, 0, time.UTC)
			if _, err := old.db.ExecContext(ctx, `INSERT INTO inbound (digest, mail_from, remote_addr, raw, state, received_at, next_attempt_at)
				VALUES ($1, 'ann@example.com', '192.0.2.1:25', $2, 'pending', $3, $3)`, digestOf(raw), raw, ms(now)); err != nil {
				t.Fatal(err)
			}
			if v, err := old.SchemaVersion(ctx); err != nil || v != 2 {
				t.Fatalf("before the upgrade: schema version %d, %v", v, err)
			}
			old.Close()

			s, err := OpenStore(ctx, tg.driver, tg.dsn)
			if err != nil {
				t.Fatalf("upgrade: %v", err)
			}
			defer s.Close()
			if v, err := s.SchemaVersion(ctx); err != nil || v < 3 {
				t.Fatalf("after the upgrade: schema version %d, %v", v, err)
			}
			got, err := s.ClaimInbound(ctx, now.Add(time.Minute), time.Minute, 10)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 || string(got[0].Raw) != string(raw) || got[0].MailFrom != "ann@example.com" {
				t.Fatalf("claimed after the upgrade: %+v", got)
			}
			_, dup, err := s.AcceptInbound(ctx, raw, "ann@example.com", "192.0.2.1:25", now.Add(time.Hour))
			if err != nil || !dup {
				t.Fatalf("the same message again after the upgrade: duplicate %v, %v", dup, err)
			}
		})
	}
}

func digestOf(raw []byte) []byte {
	d := sha256.Sum256(raw)
	return d[:]
}

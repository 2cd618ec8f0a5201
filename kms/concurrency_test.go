package kms

import (
	"context"
	"fmt"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"
)

// TestConcurrentFirstUse: on a freshly opened store, more concurrent
// transactions than the store has connections, each using statements not
// yet prepared, all complete. Preparing a statement for the cache from
// inside a transaction used to wait for a second connection, and with
// every connection held by such a transaction PostgreSQL deadlocked.
func TestConcurrentFirstUse(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
		defer cancel()
		n := 4 * maxConns
		var g errgroup.Group
		for i := range n {
			g.Go(func() error {
				email := fmt.Sprintf("burst%d@example.com", i)
				en, err := e.svc.Enroll(ctx, email, "", "test")
				if err != nil {
					return fmt.Errorf("enroll %s: %w", email, err)
				}
				c, err := e.svc.EnrollByCode(ctx, email, en.Code, newKey(t).Public(), Request{Actor: "test", MessageID: fmt.Sprintf("<burst%d@test>", i)})
				if err != nil {
					return fmt.Errorf("enroll by code %s: %w", email, err)
				}
				_, err = e.svc.Renew(ctx, c.Serial, Request{Actor: "test", MessageID: fmt.Sprintf("<renew%d@test>", i)})
				return err
			})
		}
		if err := g.Wait(); err != nil {
			t.Fatal(err)
		}
		if got := e.count(`SELECT COUNT(*) FROM certificates WHERE state = 'current'`); got != n {
			t.Fatalf("%d current certificates, want %d", got, n)
		}
	})
}

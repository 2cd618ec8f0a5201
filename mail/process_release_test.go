package mail

import (
	"context"
	"crypto"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/kmsmail/kms/clock"
	"github.com/kmsmail/kms/kms"
	"github.com/kmsmail/kms/policy"
)

// blockingLifecycle stands in for kms.Service: its first GetUser call
// (a refusal looking up the sender) blocks until the processor's context
// ends, so that a shutdown finds one message in progress and others claimed
// and waiting.
type blockingLifecycle struct {
	entered chan struct{}
}

func (b *blockingLifecycle) GetUser(ctx context.Context, addr string) (*kms.UserDetail, error) {
	select {
	case b.entered <- struct{}{}:
	default:
	}
	<-ctx.Done()
	return nil, ctx.Err()
}

func (b *blockingLifecycle) EnrollByCode(context.Context, string, string, crypto.PublicKey, kms.Request) (*kms.Certificate, error) {
	return nil, fmt.Errorf("not in this test")
}
func (b *blockingLifecycle) Renew(context.Context, string, kms.Request) (*kms.Certificate, error) {
	return nil, fmt.Errorf("not in this test")
}
func (b *blockingLifecycle) Rekey(context.Context, string, crypto.PublicKey, kms.Request) (*kms.Certificate, error) {
	return nil, fmt.Errorf("not in this test")
}
func (b *blockingLifecycle) CertForSigner(context.Context, []byte) (*kms.Certificate, error) {
	return nil, kms.ErrNotFound
}
func (b *blockingLifecycle) RefuseInbound(context.Context, int64, *kms.Reply, string) error {
	return fmt.Errorf("not in this test")
}
func (b *blockingLifecycle) Policies() policy.Set { return policy.Set{Default: policy.Default()} }

// TestProcessorReleasesClaimsAtShutdown: messages the processor claimed but
// had not finished when it was stopped can be claimed again at once, not
// after their lease, and their attempt is not counted.
func TestProcessorReleasesClaimsAtShutdown(t *testing.T) {
	ctx := context.Background()
	store, err := kms.OpenStore(ctx, "sqlite", filepath.Join(t.TempDir(), "kms.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	clk := clock.NewFake(t0)
	const n = 5
	for i := range n {
		// Unsigned, no CSR: the processor refuses it, looking up the sender.
		raw := fmt.Sprintf("From: ann@example.com\r\nTo: kms@example.com\r\nSubject: %d\r\nMessage-ID: <m%d@example.com>\r\n\r\nhello\r\n", i, i)
		if _, _, err := store.AcceptInbound(ctx, []byte(raw), "ann@example.com", "192.0.2.1:25", clk.Now()); err != nil {
			t.Fatal(err)
		}
	}
	life := &blockingLifecycle{entered: make(chan struct{}, 1)}
	p := NewProcessor(ProcessorOptions{Service: life, Queue: store, Clock: clk, Workers: 1, Poll: time.Hour})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- p.Run(runCtx) }()
	select {
	case <-life.entered: // one message in progress, the rest claimed behind it
	case <-time.After(30 * time.Second):
		t.Fatal("the processor never started on a message")
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	again, err := store.ClaimInbound(ctx, clk.Now(), time.Minute, 2*n)
	if err != nil {
		t.Fatal(err)
	}
	if len(again) != n {
		t.Fatalf("after the shutdown %d of %d messages could be claimed; the rest wait for their lease", len(again), n)
	}
	for _, m := range again {
		if m.Attempts != 1 {
			t.Errorf("message %d: %d attempts, want 1 (the shutdown's does not count)", m.ID, m.Attempts)
		}
	}
}

package kms

import (
	"testing"
	"time"
)

// TestReleaseClaims: claimed inbound and outbox rows that were never
// finished (their process died) can be claimed again at once after
// ReleaseClaims, instead of after their lease; finished rows stay finished.
func TestReleaseClaims(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		now := e.clock.Now()
		for _, raw := range []string{"one", "two"} {
			if _, _, err := e.store.AcceptInbound(e.ctx, []byte("Subject: "+raw+"\r\n\r\n"+raw), "ann@example.com", "192.0.2.1:25", now); err != nil {
				t.Fatal(err)
			}
		}
		e.activeUser("bob@example.com") // queues an invitation and a certificate reply
		in, err := e.store.ClaimInbound(e.ctx, now, time.Hour, 10)
		if err != nil || len(in) != 2 {
			t.Fatalf("claim inbound: %d rows, %v", len(in), err)
		}
		if err := e.store.FinishInbound(e.ctx, in[0].ID, InboundDone, "test", now); err != nil {
			t.Fatal(err)
		}
		out, err := e.store.ClaimOutbox(e.ctx, now, time.Hour, 10)
		if err != nil || len(out) != 2 {
			t.Fatalf("claim outbox: %d rows, %v", len(out), err)
		}
		if err := e.store.MarkSent(e.ctx, out[0].ID, now); err != nil {
			t.Fatal(err)
		}
		// Within the lease nothing can be claimed.
		if again, err := e.store.ClaimInbound(e.ctx, now, time.Hour, 10); err != nil || len(again) != 0 {
			t.Fatalf("inbound claimed twice within its lease: %d rows, %v", len(again), err)
		}

		n, err := e.store.ReleaseClaims(e.ctx)
		if err != nil || n != 2 {
			t.Fatalf("released %d claims, %v; want the unfinished inbound and outbox rows", n, err)
		}
		again, err := e.store.ClaimInbound(e.ctx, now, time.Hour, 10)
		if err != nil || len(again) != 1 || again[0].ID != in[1].ID || string(again[0].Raw) != string(in[1].Raw) {
			t.Fatalf("after release, inbound claim: %+v, %v; want the unfinished message", again, err)
		}
		if again[0].Attempts != 2 {
			t.Errorf("the released message has %d attempts, want 2 (the lost one counts)", again[0].Attempts)
		}
		outAgain, err := e.store.ClaimOutbox(e.ctx, now, time.Hour, 10)
		if err != nil || len(outAgain) != 1 || outAgain[0].ID != out[1].ID {
			t.Fatalf("after release, outbox claim: %+v, %v; want the undelivered mail", outAgain, err)
		}
	})
}

// TestReleaseInbound: a message given back at shutdown is claimable at once
// with its attempt undone; a finished one stays finished.
func TestReleaseInbound(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		now := e.clock.Now()
		for _, raw := range []string{"one", "two"} {
			if _, _, err := e.store.AcceptInbound(e.ctx, []byte(raw), "ann@example.com", "", now); err != nil {
				t.Fatal(err)
			}
		}
		in, err := e.store.ClaimInbound(e.ctx, now, time.Hour, 10)
		if err != nil || len(in) != 2 {
			t.Fatalf("claim: %d rows, %v", len(in), err)
		}
		if err := e.store.FinishInbound(e.ctx, in[0].ID, InboundDone, "test", now); err != nil {
			t.Fatal(err)
		}
		if err := e.store.ReleaseInbound(e.ctx, []int64{in[0].ID, in[1].ID}); err != nil {
			t.Fatal(err)
		}
		again, err := e.store.ClaimInbound(e.ctx, now, time.Hour, 10)
		if err != nil || len(again) != 1 || again[0].ID != in[1].ID || again[0].Attempts != 1 {
			t.Fatalf("after release: %+v, %v; want the unfinished message, first attempt", again, err)
		}
		if n := e.count(`SELECT COUNT(*) FROM inbound WHERE id = $1 AND state = 'done'`, in[0].ID); n != 1 {
			t.Fatal("releasing touched a finished message")
		}
	})
}

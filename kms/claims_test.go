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

// TestAcceptInboundClaimed: a message stored for a hand-over in memory is
// claimed from the start (no claim from the table takes it within its
// lease, and none has to step over it), is claimable again when the lease
// runs out (its worker died), and is due at once again when its claim is
// given back, at shutdown or at start-up. A duplicate is not claimed.
func TestAcceptInboundClaimed(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		now := e.clock.Now()
		const lease = 2 * time.Minute
		accept := func(raw string) int64 {
			t.Helper()
			id, dup, err := e.store.AcceptInboundClaimed(e.ctx, []byte(raw), "ann@example.com", "192.0.2.1:25", now, lease)
			if err != nil || dup {
				t.Fatalf("accept %q: duplicate %v, %v", raw, dup, err)
			}
			return id
		}
		a, b := accept("Subject: a\r\n\r\na"), accept("Subject: b\r\n\r\nb")
		if n := e.count(`SELECT COUNT(*) FROM inbound WHERE attempts = 1 AND claimed_until = next_attempt_at AND claimed_until = $1`, now.Add(lease).UnixMilli()); n != 2 {
			t.Fatalf("%d rows claimed for the lease with their attempt counted, want 2", n)
		}
		if _, dup, err := e.store.AcceptInboundClaimed(e.ctx, []byte("Subject: a\r\n\r\na"), "ann@example.com", "192.0.2.1:25", now, lease); err != nil || !dup {
			t.Fatalf("the same bytes again: duplicate %v, %v", dup, err)
		}
		if got, err := e.store.ClaimInbound(e.ctx, now.Add(lease-time.Millisecond), time.Hour, 10); err != nil || len(got) != 0 {
			t.Fatalf("claimed within the hand-over's lease: %d rows, %v", len(got), err)
		}

		// Given back at shutdown: due at once, the attempt undone.
		if err := e.store.ReleaseInbound(e.ctx, []int64{a}); err != nil {
			t.Fatal(err)
		}
		got, err := e.store.ClaimInbound(e.ctx, now, time.Hour, 10)
		if err != nil || len(got) != 1 || got[0].ID != a || got[0].Attempts != 1 {
			t.Fatalf("after ReleaseInbound: %+v, %v; want message %d, attempt 1", got, err, a)
		}
		// Given back at start-up (a crash): due at once, the attempt kept.
		if n, err := e.store.ReleaseClaims(e.ctx); err != nil || n != 2 {
			t.Fatalf("ReleaseClaims released %d, %v; want 2", n, err)
		}
		got, err = e.store.ClaimInbound(e.ctx, now, time.Hour, 10)
		if err != nil || len(got) != 2 || got[0].ID != a || got[1].ID != b || got[1].Attempts != 2 {
			t.Fatalf("after ReleaseClaims: %+v, %v; want messages %d and %d, the second at attempt 2", got, err, a, b)
		}
		// Once due again, a released row is in received order, not at the
		// end of its lease.
		if n := e.count(`SELECT COUNT(*) FROM inbound WHERE next_attempt_at = received_at`); n != 2 {
			t.Errorf("%d released rows due when received, want 2", n)
		}
	})
}

// TestAcceptInboundClaimedLeaseRunsOut: a handed-over message whose worker
// died is claimed from the table when its lease ends.
func TestAcceptInboundClaimedLeaseRunsOut(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		now := e.clock.Now()
		id, _, err := e.store.AcceptInboundClaimed(e.ctx, []byte("Subject: a\r\n\r\na"), "ann@example.com", "192.0.2.1:25", now, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		got, err := e.store.ClaimInbound(e.ctx, now.Add(time.Minute), time.Hour, 10)
		if err != nil || len(got) != 1 || got[0].ID != id || got[0].Attempts != 2 {
			t.Fatalf("at the end of the lease: %+v, %v; want message %d at attempt 2", got, err, id)
		}
	})
}

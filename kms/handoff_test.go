package kms

import (
	"errors"
	"sync"
	"testing"
	"time"
)

// recordingHandoff is a Handoff with room for `room` mails that keeps what
// it is given.
type recordingHandoff struct {
	mu        sync.Mutex
	room      int
	reserved  int
	cancelled int
	delivered []OutboxMessage
}

func (h *recordingHandoff) Reserve() (time.Duration, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.reserved >= h.room {
		return 0, false
	}
	h.reserved++
	return 10 * time.Minute, true
}

func (h *recordingHandoff) Cancel() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.reserved--
	h.cancelled++
}

func (h *recordingHandoff) Deliver(m OutboxMessage) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.delivered = append(h.delivered, m)
}

// TestHandoffOfCertificateReplies: an issued certificate's reply is queued
// already claimed and handed over after the commit, with the certificate
// attached; a refused renewal gives its reservation back and hands nothing
// over; with no room left the reply is queued unclaimed in the table.
func TestHandoffOfCertificateReplies(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		h := &recordingHandoff{room: 3}
		e.svc.SetHandoff(h)
		first := e.activeUser("alice@example.com") // reservation 1: the enrollment's reply
		renewed, err := e.svc.Renew(e.ctx, first.Serial, Request{Actor: "test", MessageID: "<renew@test>", SignatureDigest: []byte("sig-1")})
		if err != nil {
			t.Fatal(err)
		}
		if len(h.delivered) != 2 {
			t.Fatalf("%d mails handed over, want 2 (enrollment and renewal replies)", len(h.delivered))
		}
		for i, want := range []*Certificate{first, renewed} {
			m := h.delivered[i]
			if m.Kind != MailCertificate || m.To != "alice@example.com" || m.Payload.Serial != want.Serial || m.Attempts != 1 || m.ID == 0 {
				t.Errorf("handed over %+v, want the certificate reply for %s", m, want.Serial)
			}
			if m.Issued == nil || SerialHex(m.Issued) != want.Serial || string(m.Issued.Raw) != string(want.DER) {
				t.Errorf("reply %d carries certificate %v, want %s", m.ID, m.Issued, want.Serial)
			}
			var claimed int64
			var attempts int
			var msgID, state string
			if err := e.store.db.QueryRowContext(e.ctx, `SELECT claimed_until, attempts, message_id, state FROM outbox WHERE id = $1`, m.ID).
				Scan(&claimed, &attempts, &msgID, &state); err != nil {
				t.Fatal(err)
			}
			if want := ms(e.clock.Now().Add(10 * time.Minute)); claimed != want || attempts != 1 || msgID != m.MessageID || state != "pending" {
				t.Errorf("row %d: claimed_until %d attempts %d message_id %s state %s; want claimed until %d, 1 attempt, %s, pending",
					m.ID, claimed, attempts, msgID, state, want, m.MessageID)
			}
		}

		// A replay is refused in the transaction (the signature's record
		// exists): its reservation is given back.
		_, err = e.svc.Renew(e.ctx, renewed.Serial, Request{Actor: "test", MessageID: "<replay@test>", SignatureDigest: []byte("sig-1")})
		if !errors.Is(err, ErrReplay) {
			t.Fatalf("replay: %v, want ErrReplay", err)
		}
		// A renewal of the superseded certificate fails in the transaction.
		_, err = e.svc.Renew(e.ctx, first.Serial, Request{Actor: "test", MessageID: "<old@test>", SignatureDigest: []byte("sig-2")})
		if err == nil {
			t.Fatal("renewal of a superseded certificate succeeded")
		}
		// A renewal that fails inside its transaction (its received
		// message was already processed) gives its reservation back.
		in, _, err := e.store.AcceptInbound(e.ctx, []byte("Subject: x\r\n\r\nx\r\n"), "alice@example.com", "127.0.0.1:1", e.clock.Now())
		if err != nil {
			t.Fatal(err)
		}
		if err := e.store.FinishInbound(e.ctx, in, InboundRefused, "test", e.clock.Now()); err != nil {
			t.Fatal(err)
		}
		_, err = e.svc.Renew(e.ctx, renewed.Serial, Request{Actor: "test", InboundID: in, SignatureDigest: []byte("sig-4")})
		if !errors.Is(err, ErrConflict) {
			t.Fatalf("renewal for a processed message: %v, want ErrConflict", err)
		}
		if len(h.delivered) != 2 || h.reserved != 2 || h.cancelled != 2 {
			t.Fatalf("after three refusals: %d handed over, %d reserved, %d cancelled; want 2, 2, 2", len(h.delivered), h.reserved, h.cancelled)
		}
		if n := e.count(`SELECT COUNT(*) FROM outbox WHERE kind = 'certificate'`); n != 2 {
			t.Errorf("%d certificate replies queued after the refusals, want 2", n)
		}

		// One reservation left, then none: the next reply goes to the table.
		if _, err := e.svc.Renew(e.ctx, renewed.Serial, Request{Actor: "test", SignatureDigest: []byte("sig-3")}); err != nil {
			t.Fatal(err)
		}
		bob := e.activeUser("bob@example.com")
		if len(h.delivered) != 3 {
			t.Fatalf("%d handed over, want 3", len(h.delivered))
		}
		if n := e.count(`SELECT COUNT(*) FROM outbox WHERE kind = 'certificate' AND claimed_until = 0 AND attempts = 0 AND payload LIKE $1`,
			"%"+bob.Serial+"%"); n != 1 {
			t.Errorf("bob's reply: %d unclaimed rows in the table, want 1", n)
		}
		if n := e.count(`SELECT COUNT(*) FROM outbox WHERE kind = 'certificate'`); n != 4 {
			t.Errorf("%d certificate replies queued, want 4", n)
		}
	})
}

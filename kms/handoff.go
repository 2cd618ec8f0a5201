package kms

import (
	"context"
	"crypto/x509"
	"database/sql"
	"encoding/json"
	"time"
)

// Handoff carries certificate replies from the transaction that queues them
// straight to a delivery worker. Without it the worker finds each reply by
// claiming it from the outbox table and reads the certificate back from the
// store: two statements and a certificate parse a renewal, ~6% of the
// daemon's CPU under a burst of renewals (kms-load, 2 cores).
//
// The reply is still written to the outbox in the issuing transaction, so
// delivery stays at least once across a crash: the row is inserted already
// claimed for Reserve's lease, and a worker that dies with it in memory
// leaves it to be claimed again when the lease runs out (on SQLite, at the
// next start-up).
type Handoff interface {
	// Reserve asks for room for one mail in memory. When ok is false the
	// mail goes through the outbox table as usual; lease is how long a
	// handed-over row is claimed for.
	Reserve() (lease time.Duration, ok bool)
	// Cancel gives back a reservation that was not used: the transaction
	// failed, or queued no mail.
	Cancel()
	// Deliver hands over a committed mail under a reservation. It does not
	// block.
	Deliver(m OutboxMessage)
}

// SetHandoff makes the service hand its certificate replies to h. Call it
// before the service is used.
func (s *Service) SetHandoff(h Handoff) { s.handoff = h }

// replyClaim is a reservation for handing one certificate reply over; the
// zero value (no handoff, or no room) queues the reply in the table.
type replyClaim struct {
	lease time.Duration // zero: not reserved
	msg   *OutboxMessage
}

// reserveReply asks the handoff, if any, for room. It is called outside
// the transaction, which may run more than once.
func (s *Service) reserveReply() replyClaim {
	if s.handoff == nil {
		return replyClaim{}
	}
	lease, ok := s.handoff.Reserve()
	if !ok || lease <= 0 {
		return replyClaim{}
	}
	return replyClaim{lease: lease}
}

// settleReply hands the reply over if the transaction committed one, and
// otherwise gives the reservation back.
func (s *Service) settleReply(c *replyClaim, committed bool) {
	if c.lease == 0 {
		return
	}
	if committed && c.msg != nil {
		s.handoff.Deliver(*c.msg)
		return
	}
	s.handoff.Cancel()
}

// insertClaimedOutbox queues m in tx already claimed until now+lease, as
// ClaimOutbox would have left it, and returns the row as the delivery
// worker sees it, with the issued certificate attached.
func (s *Store) insertClaimedOutbox(ctx context.Context, tx *sql.Tx, m outboxMail, cert *x509.Certificate, msgDomain string, now time.Time, lease time.Duration) (*OutboxMessage, error) {
	payload, err := json.Marshal(m.Payload)
	if err != nil {
		return nil, err
	}
	out := &OutboxMessage{Kind: m.Kind, To: m.To, MessageID: newMessageID(msgDomain, now), InReplyTo: m.InReplyTo,
		Payload: m.Payload, Attempts: 1, CreatedAt: now, Issued: cert}
	err = s.q(tx).QueryRowContext(ctx, `INSERT INTO outbox
		(kind, recipient, message_id, in_reply_to, payload, state, created_at, next_attempt_at, claimed_until, attempts)
		VALUES ($1, $2, $3, $4, $5, 'pending', $6, $6, $7, 1) RETURNING id`,
		string(m.Kind), m.To, out.MessageID, m.InReplyTo, string(payload), ms(now), ms(now.Add(lease))).Scan(&out.ID)
	if err != nil {
		return nil, err
	}
	return out, nil
}

package kms

import "time"

// Handoff carries certificate replies from the transaction that queues them
// straight to a delivery worker. Without it the worker finds each reply by
// claiming it from the outbox table and reads the certificate back from the
// store: two statements and a certificate parse a renewal, ~4% of the
// daemon's CPU in a profile under a burst of renewals (kms-load, 2 cores).
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
// otherwise gives the reservation back. It reports whether it handed over.
func (s *Service) settleReply(c *replyClaim, committed bool) (handedOver bool) {
	if c.lease == 0 {
		return false
	}
	if committed && c.msg != nil {
		s.handoff.Deliver(*c.msg)
		return true
	}
	s.handoff.Cancel()
	return false
}

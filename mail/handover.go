package mail

import (
	"sync"
	"sync/atomic"
	"time"
)

// handover carries rows from the transaction that writes them straight to
// the worker that acts on them, in memory, instead of the worker claiming
// them from their table: received messages from the SMTP listener to the
// request processor (InboundHandoff), certificate replies from the issuing
// transaction to the delivery worker (kms.Handoff).
//
// The row is still written, claimed for lease in the same transaction, so
// that nothing is lost in a crash: the claim runs out, or a SQLite daemon
// gives back every claim when it starts. The protocol:
//
//   - Reserve, before the transaction, promises room for one row;
//   - Cancel gives the promise back when the transaction failed or wrote
//     no row to hand over;
//   - Deliver, after the commit, puts the row in memory; it never blocks,
//     since room was promised;
//   - the worker takes rows with take, and stop ends the hand-over: rows
//     still waiting, and any delivered later, are given back to the table
//     at once (release), so that they need not wait for their lease.
type handover[T any] struct {
	lease   time.Duration
	items   chan T
	id      func(T) int64     // the row's id, to give its claim back
	since   func(T) time.Time // when the row was written (and claimed)
	release func(ids []int64) // gives claims back to the table
	wake    func()            // tells the worker that a row is waiting
	expired func()            // counts a row left to the table (see take)
	mu      sync.Mutex        // orders Deliver against stop
	stopped bool              // guarded by mu
	// reserved counts the room promised and not yet taken back out.
	reserved atomic.Int64
}

// handoverRoom is how many rows may wait in memory; beyond it, rows wait in
// their table to be claimed. Each is a reply or a received message of at
// most maxHandedOverBytes (larger ones are not handed over).
const handoverRoom = 1024

func newHandover[T any](lease time.Duration, id func(T) int64, since func(T) time.Time) *handover[T] {
	nop := func() {}
	return &handover[T]{lease: lease, items: make(chan T, handoverRoom), id: id, since: since,
		release: func([]int64) {}, wake: nop, expired: nop}
}

// Reserve promises room in memory for one row, to be claimed for the
// returned lease; ok is false when there is none, and the row goes through
// its table.
func (h *handover[T]) Reserve() (lease time.Duration, ok bool) {
	if h.reserved.Add(1) > handoverRoom {
		h.reserved.Add(-1)
		return 0, false
	}
	return h.lease, true
}

// Cancel gives back a promise that was not used.
func (h *handover[T]) Cancel() { h.reserved.Add(-1) }

// Deliver takes a committed, claimed row under a promise. After stop, the
// claim is given back instead.
func (h *handover[T]) Deliver(v T) {
	h.mu.Lock()
	if h.stopped {
		h.mu.Unlock()
		h.reserved.Add(-1)
		h.release([]int64{h.id(v)})
		return
	}
	h.items <- v
	h.mu.Unlock()
	h.wake()
}

// waiting reports whether a row is waiting to be taken.
func (h *handover[T]) waiting() bool { return len(h.items) > 0 }

// take returns a waiting row, if any. A row that has waited more than
// half its lease is not returned but left to a claim from the table once
// the lease is over (and counted by expired): its claim could otherwise
// run out while it is being worked on, and a claim from the table take it
// a second time.
func (h *handover[T]) take(now time.Time) (v T, ok bool) {
	for {
		select {
		case v = <-h.items:
		default:
			return v, false
		}
		h.reserved.Add(-1)
		if now.Sub(h.since(v)) <= h.lease/2 {
			return v, true
		}
		h.expired()
	}
}

// start (re)opens the hand-over when its worker starts.
func (h *handover[T]) start() {
	h.mu.Lock()
	h.stopped = false
	h.mu.Unlock()
}

// stop ends the hand-over: the rows still waiting are given back to the
// table, and so will any Deliver after it.
func (h *handover[T]) stop() {
	h.mu.Lock()
	h.stopped = true
	var ids []int64
	for len(h.items) > 0 {
		v := <-h.items
		h.reserved.Add(-1)
		ids = append(ids, h.id(v))
	}
	h.mu.Unlock()
	if len(ids) > 0 {
		h.release(ids)
	}
}

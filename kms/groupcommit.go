package kms

import (
	"context"
	"database/sql"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
)

// groupCommit runs SQLite write transactions that arrive together in one
// database transaction, each inside its own savepoint, and commits them
// with one fsync. SQLite allows one writer at a time, and with
// synchronous=FULL every commit waits for the disk; under concurrent load
// (SMTP sessions storing mail, workers issuing and delivering) most of a
// write's latency is that wait. Batching keeps every caller's guarantee:
// its function's effects are committed if and only if it returned nil and
// the batch's COMMIT succeeded, and the caller returns only after the
// commit is durable.
//
// The first caller to find no commit in progress becomes the leader and
// runs the batch; callers arriving meanwhile queue up, and when the leader
// is done it hands leadership to the first of them, who runs everything
// queued so far. Waiting on a Go channel is a hand-off, where waiting in
// SQLite's busy handler would be a sleep.
type groupCommit struct {
	mu      sync.Mutex
	busy    bool
	pending []*groupReq
	commits atomic.Int64 // database transactions committed (or rolled back)
	txs     atomic.Int64 // callers' transactions carried by them
}

type groupReq struct {
	ctx  context.Context
	fn   func(*sql.Tx) error
	done chan error    // the result, once the batch has committed
	lead chan struct{} // closed when this request is to run the next batch
}

// maxGroup bounds a batch, so one commit does not hold the lock for long.
const maxGroup = 64

func (g *groupCommit) run(ctx context.Context, s *Store, fn func(*sql.Tx) error) error {
	req := &groupReq{ctx: ctx, fn: fn, done: make(chan error, 1), lead: make(chan struct{})}
	g.mu.Lock()
	g.pending = append(g.pending, req)
	if g.busy {
		g.mu.Unlock()
		select {
		case err := <-req.done:
			return err
		case <-req.lead:
		}
		g.mu.Lock()
	}
	g.busy = true
	batch := g.pending
	if len(batch) > maxGroup {
		batch = batch[:maxGroup]
	}
	g.pending = append([]*groupReq(nil), g.pending[len(batch):]...)
	g.mu.Unlock()

	runBatch(s, batch)
	g.commits.Add(1)
	g.txs.Add(int64(len(batch)))

	g.mu.Lock()
	if len(g.pending) > 0 {
		close(g.pending[0].lead) // it stays busy: the next leader takes over
	} else {
		g.busy = false
	}
	g.mu.Unlock()
	return <-req.done
}

// runBatch runs the batch's functions in one transaction and reports each
// result. A lone function runs without a savepoint.
func runBatch(s *Store, batch []*groupReq) {
	results := make([]error, len(batch))
	finish := func(commitErr error) {
		for i, r := range batch {
			if results[i] == nil {
				results[i] = commitErr
			}
			r.done <- results[i]
		}
	}
	tx, err := s.db.BeginTx(context.Background(), nil)
	if err != nil {
		for i := range results {
			results[i] = fmt.Errorf("store: begin: %w", err)
		}
		finish(nil)
		return
	}
	for i, r := range batch {
		if err := r.ctx.Err(); err != nil {
			results[i] = err
			continue
		}
		if len(batch) == 1 {
			results[i] = protect(r.fn, tx)
			break
		}
		var fatal error
		results[i], fatal = inSavepoint(s.q(tx), tx, r.fn)
		if fatal != nil {
			// The transaction is in an unknown state: undo all of it.
			tx.Rollback()
			for j := range results {
				results[j] = fatal
			}
			finish(nil)
			return
		}
	}
	if len(batch) == 1 && results[0] != nil {
		tx.Rollback()
		finish(nil)
		return
	}
	if err := tx.Commit(); err != nil {
		finish(fmt.Errorf("store: commit: %w", err))
		return
	}
	finish(nil)
}

// inSavepoint runs fn so that its changes are undone if it fails, without
// undoing the rest of the transaction. fatal reports a failure of the
// savepoint itself, after which the transaction cannot be trusted. The
// savepoint statements run without the caller's context: a caller that
// gives up must not leave its half-done work in the batch.
func inSavepoint(q cached, tx *sql.Tx, fn func(*sql.Tx) error) (ferr, fatal error) {
	bg := context.Background()
	if _, err := q.ExecContext(bg, "SAVEPOINT grp"); err != nil {
		return nil, fmt.Errorf("store: savepoint: %w", err)
	}
	ferr = protect(fn, tx)
	if ferr != nil {
		if _, err := q.ExecContext(bg, "ROLLBACK TO SAVEPOINT grp"); err != nil {
			return ferr, fmt.Errorf("store: rollback to savepoint: %w (after %v)", err, ferr)
		}
	}
	if _, err := q.ExecContext(bg, "RELEASE SAVEPOINT grp"); err != nil {
		return ferr, fmt.Errorf("store: release savepoint: %w", err)
	}
	return ferr, nil
}

// protect runs fn and turns a panic into an error, so that a bug in one
// caller's function (an HTTP handler recovers its panics) cannot leave the
// group commit waiting forever and every later write with it.
func protect(fn func(*sql.Tx) error, tx *sql.Tx) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("store: panic in transaction: %v\n%s", p, debug.Stack())
		}
	}()
	return fn(tx)
}

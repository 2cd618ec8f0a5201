package kms

import (
	"context"
	"database/sql"
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
)

// groupCommit runs SQLite write transactions that arrive together in one
// database transaction and commits them with one fsync. SQLite allows one
// writer at a time, and with synchronous=FULL every commit waits for the
// disk; under concurrent load (SMTP sessions storing mail, workers issuing
// and delivering) most of a write's latency is that wait. Batching keeps
// every caller's guarantee: its function's effects are committed if and
// only if it returned nil and the batch's COMMIT succeeded, and the caller
// returns only after the commit is durable.
//
// A batch runs in at most two passes. The first runs the functions one
// after the other on one transaction, as they are, and commits if all of
// them return nil. Only when one fails (an error or a panic) is that
// transaction rolled back and the batch run a second time, in a new
// transaction with each function in a savepoint of its own, so that the
// failing ones are undone without undoing the others; each caller gets the
// second pass's result. A savepoint around every function was what it cost
// to get there in one pass, and in a CPU profile of the daemon under load
// those savepoints were about 2% of its CPU: the statements themselves and
// SQLite's sub-journal, which copies every page first written inside a
// savepoint. Failures are rare, so paying for isolation only when one
// happens is cheaper. The price is that a function may run twice: it must
// be re-runnable, as PostgreSQL's retries of serialization failures
// already require (Store.tx), so a second run must not depend on Go state
// the first one left behind.
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
	// One yield before taking the batch: goroutines that are runnable now
	// and about to write get to queue first. On an idle daemon there are
	// none and Gosched returns at once; under load the commit waits one
	// round of the run queue and carries more. Under kms-load (2 CPUs)
	// transactions a commit went from ~5 to ~8, and the daemon's CPU a
	// renewal from 2.74-2.78 to 2.64-2.70 ms: each commit costs an fsync
	// (~65 µs of CPU in the kernel on the test VM, beside the wait),
	// SQLite's commit work and the write-lock system calls.
	g.mu.Unlock()
	runtime.Gosched()
	g.mu.Lock()
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
// result: all together first, and only if one of them fails, again with
// each in a savepoint (see groupCommit). A lone function needs neither: it
// runs without a savepoint, and its failure rolls the transaction back.
func runBatch(s *Store, batch []*groupReq) {
	results := make([]error, len(batch))
	switch {
	case len(batch) == 1:
		results[0] = runAlone(s, batch[0])
	case !runTogether(s, batch, results):
		runIsolated(s, batch, results)
	}
	for i, r := range batch {
		r.done <- results[i]
	}
}

// runAlone runs a batch's only function in a transaction of its own.
func runAlone(s *Store, r *groupReq) error {
	tx, err := s.db.BeginTx(context.Background(), nil)
	if err != nil {
		return fmt.Errorf("store: begin: %w", err)
	}
	if err := r.ctx.Err(); err != nil {
		tx.Rollback()
		return err
	}
	if err := protect(r.fn, tx); err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("store: commit: %w", err)
	}
	return nil
}

// runTogether is the first pass: the batch's functions on one transaction
// without savepoints, committed if none fails. It reports false, with
// nothing written, when one failed and the batch is to run again isolated;
// otherwise it has filled in results. It stops at the first failure: what
// follows would be rolled back anyway, and a failed statement may have
// ended the transaction, after which later statements would each commit
// on their own.
func runTogether(s *Store, batch []*groupReq, results []error) bool {
	tx, err := s.db.BeginTx(context.Background(), nil)
	if err != nil {
		fill(results, fmt.Errorf("store: begin: %w", err))
		return true
	}
	for i, r := range batch {
		if err := r.ctx.Err(); err != nil {
			results[i] = err // it did not run: nothing to undo
			continue
		}
		if ferr := protect(r.fn, tx); ferr != nil {
			if err := tx.Rollback(); err != nil {
				// Whether the first pass's writes are gone is unknown: a
				// second pass must not add to them.
				fill(results, fmt.Errorf("store: rollback: %w (after %v)", err, ferr))
				return true
			}
			return false
		}
	}
	if err := tx.Commit(); err != nil {
		fillNil(results, fmt.Errorf("store: commit: %w", err))
	}
	return true
}

// runIsolated is the second pass: the batch's functions on a new
// transaction, each in a savepoint of its own, so that a failing one is
// undone without undoing the others.
func runIsolated(s *Store, batch []*groupReq, results []error) {
	clear(results) // nothing of the first pass counts
	tx, err := s.db.BeginTx(context.Background(), nil)
	if err != nil {
		fill(results, fmt.Errorf("store: begin: %w", err))
		return
	}
	for i, r := range batch {
		if err := r.ctx.Err(); err != nil {
			results[i] = err
			continue
		}
		var fatal error
		results[i], fatal = inSavepoint(s.q(tx), tx, r.fn)
		if fatal != nil {
			// The transaction is in an unknown state: undo all of it.
			tx.Rollback()
			fill(results, fatal)
			return
		}
	}
	if err := tx.Commit(); err != nil {
		fillNil(results, fmt.Errorf("store: commit: %w", err))
	}
}

// fill gives every function of a batch the same result.
func fill(results []error, err error) {
	for i := range results {
		results[i] = err
	}
}

// fillNil gives err to the functions that succeeded, when their effects
// were lost after all.
func fillNil(results []error, err error) {
	for i := range results {
		if results[i] == nil {
			results[i] = err
		}
	}
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

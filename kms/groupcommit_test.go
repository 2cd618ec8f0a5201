package kms

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestGroupCommit runs many concurrent write transactions, every third of
// which fails after writing: the failed ones leave nothing behind, the rest
// are all there, and they took fewer commits than transactions.
func TestGroupCommit(t *testing.T) {
	st := openSQLiteStore(t)
	ctx := context.Background()
	if _, err := st.db.ExecContext(ctx, `CREATE TABLE gc (n INTEGER PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	errPlanned := errors.New("planned failure")
	const n = 300
	var wg sync.WaitGroup
	results := make([]error, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = st.tx(ctx, func(tx *sql.Tx) error {
				if _, err := tx.ExecContext(ctx, `INSERT INTO gc (n) VALUES ($1)`, i); err != nil {
					return err
				}
				if i%3 == 0 {
					return fmt.Errorf("row %d: %w", i, errPlanned)
				}
				return nil
			})
		}()
	}
	wg.Wait()
	for i, err := range results {
		if (i%3 == 0) != errors.Is(err, errPlanned) || (i%3 != 0 && err != nil) {
			t.Fatalf("transaction %d returned %v", i, err)
		}
	}
	rows, err := st.db.QueryContext(ctx, `SELECT n FROM gc`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[int]bool{}
	for rows.Next() {
		var v int
		rows.Scan(&v)
		got[v] = true
	}
	for i := 0; i < n; i++ {
		if got[i] == (i%3 == 0) {
			t.Fatalf("row %d present=%v after its transaction returned %v", i, got[i], results[i])
		}
	}
	// Commits counted include the migration's; concurrent writers share.
	if c := st.group.commits.Load(); c >= n {
		t.Fatalf("%d commits for %d transactions: nothing was grouped", c, n)
	} else {
		t.Logf("%d transactions in %d commits", n, c)
	}
}

// TestGroupCommitLeaderYields: transactions that are runnable together
// share one commit even on one P, where no other goroutine can queue while
// the leader runs unless it yields first. Without the yield the leader
// commits its own transaction alone, and so does each of the others (10
// commits for 10 transactions, seen when the yield was removed).
func TestGroupCommitLeaderYields(t *testing.T) {
	st := openSQLiteStore(t)
	ctx := context.Background()
	if _, err := st.db.ExecContext(ctx, `CREATE TABLE gc (n INTEGER PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	const n = 10
	// Scheduling is not an API: allow a few attempts, as a GC or a timer
	// can come between the goroutines.
	var counts []int64
	for attempt := range 5 {
		before := st.group.commits.Load()
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				if err := st.tx(ctx, func(tx *sql.Tx) error {
					_, err := tx.ExecContext(ctx, `INSERT INTO gc (n) VALUES ($1)`, attempt*n+i)
					return err
				}); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		c := st.group.commits.Load() - before
		if c == 1 {
			return
		}
		counts = append(counts, c)
	}
	t.Fatalf("%d transactions started together took %v commits in five attempts, want 1", n, counts)
}

// TestGroupCommitCancelled: a caller whose context is done before its turn
// gets the context's error and writes nothing.
func TestGroupCommitCancelled(t *testing.T) {
	st := openSQLiteStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	called := false
	err := st.tx(ctx, func(tx *sql.Tx) error { called = true; return nil })
	if !errors.Is(err, context.Canceled) || called {
		t.Fatalf("cancelled transaction: err %v, fn called %v", err, called)
	}
}

// TestGroupCommitStatementsIgnoreLateCancel: a context that ends while the
// caller's function runs does not interrupt its statements (see
// cached.uncancelled): the function runs to its end and the transaction
// commits, instead of one statement failing and the batch running again.
func TestGroupCommitStatementsIgnoreLateCancel(t *testing.T) {
	st := openSQLiteStore(t)
	if _, err := st.db.ExecContext(context.Background(), `CREATE TABLE gc (n INTEGER PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	err := st.tx(ctx, func(tx *sql.Tx) error {
		if _, err := st.q(tx).ExecContext(ctx, `INSERT INTO gc (n) VALUES (1)`); err != nil {
			return err
		}
		cancel()
		var n int
		if err := st.q(tx).QueryRowContext(ctx, `SELECT COUNT(*) FROM gc`).Scan(&n); err != nil {
			return fmt.Errorf("query after the cancel: %w", err)
		}
		_, err := st.q(tx).ExecContext(ctx, `INSERT INTO gc (n) VALUES (2)`)
		return err
	})
	if err != nil {
		t.Fatalf("transaction whose context ended midway: %v", err)
	}
	var n int
	if err := st.db.QueryRow(`SELECT COUNT(*) FROM gc`).Scan(&n); err != nil || n != 2 {
		t.Fatalf("rows committed: %d (%v), want 2", n, err)
	}
}

// TestGroupCommitSurvivesPanic: a function that panics fails alone, and
// the next transaction still runs.
func TestGroupCommitSurvivesPanic(t *testing.T) {
	st := openSQLiteStore(t)
	ctx := context.Background()
	err := st.tx(ctx, func(tx *sql.Tx) error { panic("bug") })
	if err == nil || !strings.Contains(err.Error(), "panic") {
		t.Fatalf("panicking transaction returned %v", err)
	}
	if err := st.tx(ctx, func(tx *sql.Tx) error { return nil }); err != nil {
		t.Fatalf("transaction after a panic: %v", err)
	}
}

// inOneBatch makes calls, each of which runs one transaction, at once so
// that the group commit carries their transactions in one batch, in the
// order given: a first transaction holds the group busy, blocked on a
// channel, until all of them are queued behind it, each queued before the
// next call starts. It returns the calls' results, and fails the test if
// the transactions took more than the one batch.
func inOneBatch(t *testing.T, st *Store, calls []func() error) []error {
	t.Helper()
	if len(calls) > maxGroup {
		t.Fatalf("%d transactions do not fit in one batch of at most %d", len(calls), maxGroup)
	}
	g := &st.group
	queued := func() int {
		g.mu.Lock()
		defer g.mu.Unlock()
		return len(g.pending)
	}
	waitQueued := func(n int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for queued() < n {
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d transactions queued after 10s", queued(), n)
			}
			time.Sleep(time.Millisecond)
		}
	}
	started, release := make(chan struct{}), make(chan struct{})
	// Released however the test ends, so that the store can close.
	releaseHolder := sync.OnceFunc(func() { close(release) })
	defer releaseHolder()
	holder := make(chan error, 1)
	go func() {
		holder <- st.tx(context.Background(), func(tx *sql.Tx) error {
			close(started)
			<-release
			return nil
		})
	}()
	<-started
	before := g.commits.Load()
	results := make([]error, len(calls))
	var wg sync.WaitGroup
	for i, call := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = call()
		}()
		waitQueued(i + 1)
	}
	releaseHolder()
	wg.Wait()
	if err := <-holder; err != nil {
		t.Fatalf("holding transaction: %v", err)
	}
	if c := g.commits.Load() - before; c != 2 {
		t.Fatalf("the holder and the batch took %d commits, want 2", c)
	}
	return results
}

// txCalls makes calls that run fns as transactions, each with its context.
func txCalls(st *Store, ctxs []context.Context, fns []func(*sql.Tx) error) []func() error {
	calls := make([]func() error, len(fns))
	for i, fn := range fns {
		calls[i] = func() error { return st.tx(ctxs[i], fn) }
	}
	return calls
}

// backgrounds returns n background contexts.
func backgrounds(n int) []context.Context {
	ctxs := make([]context.Context, n)
	for i := range ctxs {
		ctxs[i] = context.Background()
	}
	return ctxs
}

// gcRows creates the table the batch tests write to. It has no key, so a
// row written twice shows.
func gcRows(t *testing.T, st *Store) {
	t.Helper()
	if _, err := st.db.ExecContext(context.Background(), `CREATE TABLE gc (n INTEGER NOT NULL)`); err != nil {
		t.Fatal(err)
	}
}

// countRows returns how many times each n is in the table.
func countRows(t *testing.T, st *Store) map[int]int {
	t.Helper()
	rows, err := st.db.QueryContext(context.Background(), `SELECT n FROM gc`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[int]int{}
	for rows.Next() {
		var n int
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		got[n]++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return got
}

// batchOf makes n functions that each count their runs and insert their
// index; fail(i), when not nil, is called after the insert and its result
// returned.
func batchOf(n int, runs []atomic.Int32, fail func(i int) error) []func(*sql.Tx) error {
	fns := make([]func(*sql.Tx) error, n)
	for i := range fns {
		fns[i] = func(tx *sql.Tx) error {
			runs[i].Add(1)
			if _, err := tx.Exec(`INSERT INTO gc (n) VALUES ($1)`, i); err != nil {
				return err
			}
			if fail != nil {
				return fail(i)
			}
			return nil
		}
	}
	return fns
}

// TestGroupCommitBatchRunsOnce: a batch whose functions all succeed runs
// each of them once, in one commit (the first pass, without savepoints).
func TestGroupCommitBatchRunsOnce(t *testing.T) {
	st := openSQLiteStore(t)
	gcRows(t, st)
	const n = 8
	runs := make([]atomic.Int32, n)
	results := inOneBatch(t, st, txCalls(st, backgrounds(n), batchOf(n, runs, nil)))
	got := countRows(t, st)
	for i := 0; i < n; i++ {
		if results[i] != nil || runs[i].Load() != 1 || got[i] != 1 {
			t.Errorf("function %d: returned %v, ran %d times, %d rows; want nil, 1, 1", i, results[i], runs[i].Load(), got[i])
		}
	}
}

// TestGroupCommitBatchFallback: when one function of a batch fails after
// writing, the others' rows are committed once each and the failing one's
// not at all. The functions up to the failing one ran twice (the first
// pass stops there and is rolled back), the rest once.
func TestGroupCommitBatchFallback(t *testing.T) {
	st := openSQLiteStore(t)
	gcRows(t, st)
	const n, failing = 8, 3
	errPlanned := errors.New("planned failure")
	runs := make([]atomic.Int32, n)
	results := inOneBatch(t, st, txCalls(st, backgrounds(n), batchOf(n, runs, func(i int) error {
		if i == failing {
			return errPlanned
		}
		return nil
	})))
	got := countRows(t, st)
	for i := 0; i < n; i++ {
		wantErr, wantRows, wantRuns := error(nil), 1, int32(1)
		if i == failing {
			wantErr, wantRows = errPlanned, 0
		}
		if i <= failing {
			wantRuns = 2
		}
		if !errors.Is(results[i], wantErr) || (wantErr == nil && results[i] != nil) || got[i] != wantRows || runs[i].Load() != wantRuns {
			t.Errorf("function %d: returned %v, ran %d times, %d rows; want %v, %d, %d",
				i, results[i], runs[i].Load(), got[i], wantErr, wantRuns, wantRows)
		}
	}
}

// TestGroupCommitBatchPanic: a function that panics after writing fails
// alone; the others of its batch are committed once each, and the group
// still runs transactions afterwards.
func TestGroupCommitBatchPanic(t *testing.T) {
	st := openSQLiteStore(t)
	gcRows(t, st)
	const n, panicking = 5, 2
	runs := make([]atomic.Int32, n)
	results := inOneBatch(t, st, txCalls(st, backgrounds(n), batchOf(n, runs, func(i int) error {
		if i == panicking {
			panic("bug")
		}
		return nil
	})))
	got := countRows(t, st)
	for i := 0; i < n; i++ {
		if i == panicking {
			if results[i] == nil || !strings.Contains(results[i].Error(), "panic") || got[i] != 0 {
				t.Errorf("panicking function: returned %v, %d rows", results[i], got[i])
			}
		} else if results[i] != nil || got[i] != 1 {
			t.Errorf("function %d: returned %v, %d rows; want nil, 1", i, results[i], got[i])
		}
	}
	if err := st.tx(context.Background(), func(tx *sql.Tx) error { return nil }); err != nil {
		t.Fatalf("transaction after a panic: %v", err)
	}
}

// TestGroupCommitFallbackSkipsCancelled: a caller that gave up after its
// function succeeded in the first pass gets its context's error when the
// batch falls back, and its row is not committed.
func TestGroupCommitFallbackSkipsCancelled(t *testing.T) {
	st := openSQLiteStore(t)
	gcRows(t, st)
	const n, cancelled, failing = 4, 0, 2
	ctxs := backgrounds(n)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ctxs[cancelled] = ctx
	errPlanned := errors.New("planned failure")
	runs := make([]atomic.Int32, n)
	results := inOneBatch(t, st, txCalls(st, ctxs, batchOf(n, runs, func(i int) error {
		switch i {
		case cancelled:
			cancel() // after its insert, in the first pass
		case failing:
			return errPlanned
		}
		return nil
	})))
	got := countRows(t, st)
	if !errors.Is(results[cancelled], context.Canceled) || got[cancelled] != 0 || runs[cancelled].Load() != 1 {
		t.Errorf("cancelled function: returned %v, ran %d times, %d rows; want %v, 1, 0",
			results[cancelled], runs[cancelled].Load(), got[cancelled], context.Canceled)
	}
	if !errors.Is(results[failing], errPlanned) || got[failing] != 0 {
		t.Errorf("failing function: returned %v, %d rows", results[failing], got[failing])
	}
	for _, i := range []int{1, 3} {
		if results[i] != nil || got[i] != 1 {
			t.Errorf("function %d: returned %v, %d rows; want nil, 1", i, results[i], got[i])
		}
	}
}

// TestGroupCommitRerunAcceptInbound: a function that runs twice must not
// keep what its first run left in Go variables. In the first pass another
// transaction stores the message first and AcceptInbound finds a
// duplicate; that transaction's caller then gives up and a later one
// fails, so in the second pass AcceptInbound stores the message itself
// and must not report it as a duplicate (the message would never be
// processed).
func TestGroupCommitRerunAcceptInbound(t *testing.T) {
	st := openSQLiteStore(t)
	raw := []byte("Subject: hello\r\n\r\nonce\r\n")
	digest := sha256.Sum256(raw)
	now := time.Now()
	gaveUp, cancel := context.WithCancel(context.Background())
	defer cancel()
	errPlanned := errors.New("planned failure")
	var (
		id        int64
		duplicate bool
	)
	results := inOneBatch(t, st, []func() error{
		func() error {
			return st.tx(gaveUp, func(tx *sql.Tx) error {
				if _, err := tx.Exec(`INSERT INTO inbound (digest, mail_from, state, received_at, next_attempt_at)
					VALUES ($1, 'first@example.org', 'pending', $2, $2)`, digest[:], ms(now)); err != nil {
					return err
				}
				cancel() // in the first pass, after its insert
				return nil
			})
		},
		func() (err error) {
			id, duplicate, err = st.AcceptInbound(context.Background(), raw, "second@example.org", "", now)
			return err
		},
		func() error {
			return st.tx(context.Background(), func(tx *sql.Tx) error { return errPlanned })
		},
	})
	if !errors.Is(results[0], context.Canceled) || results[1] != nil || !errors.Is(results[2], errPlanned) {
		t.Fatalf("results %v", results)
	}
	if duplicate {
		t.Errorf("AcceptInbound stored the message in the second pass and reported a duplicate")
	}
	var from string
	var n int
	if err := st.db.QueryRow(`SELECT mail_from, (SELECT COUNT(*) FROM inbound_raw WHERE inbound_id = inbound.id) FROM inbound WHERE id = $1`, id).Scan(&from, &n); err != nil {
		t.Fatalf("inbound %d: %v", id, err)
	}
	if from != "second@example.org" || n != 1 {
		t.Errorf("inbound %d from %s with %d raw rows; want second@example.org, 1", id, from, n)
	}
}

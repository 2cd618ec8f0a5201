package kms

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
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

package kms

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kmsmail/kms/clock"
)

// bulkLoad writes n users with one current certificate each straight into
// the store, the way a migration would: due of them have their next
// reminder at or before now, the rest months ahead. The DER is a
// placeholder: the scheduler never parses it.
func bulkLoad(tb testing.TB, st *Store, n, due int, now time.Time) {
	tb.Helper()
	ctx := context.Background()
	const chunk = 20000
	for start := 0; start < n; start += chunk {
		err := st.tx(ctx, func(tx *txAlias) error {
			users, err := tx.PrepareContext(ctx, `INSERT INTO users (id, email, state, created_at, updated_at) VALUES ($1, $2, 'active', $3, $3)`)
			if err != nil {
				return err
			}
			defer users.Close()
			certs, err := tx.PrepareContext(ctx, `INSERT INTO certificates (serial, user_id, state, not_before, not_after, issued_at,
				key_hash, key_since, der, next_reminder_at) VALUES ($1, $2, 'current', $3, $4, $3, $5, $3, $6, $7)`)
			if err != nil {
				return err
			}
			defer certs.Close()
			for i := start; i < min(start+chunk, n); i++ {
				id := int64(i + 1)
				if _, err := users.ExecContext(ctx, id, fmt.Sprintf("user%07d@example.com", i), ms(now)); err != nil {
					return err
				}
				issued := now.AddDate(0, -6, 0)
				next := now.AddDate(0, 6, 0).Add(time.Duration(i) * time.Second)
				if i%(n/due) == 0 {
					// Spread the due ones over the last day, as a daily
					// cohort would be.
					issued = now.AddDate(-1, 0, 0)
					next = now.Add(-time.Duration(i%86400) * time.Second)
				}
				h := sha256.Sum256([]byte(strconv.Itoa(i)))
				if _, err := certs.ExecContext(ctx, fmt.Sprintf("%x", h[:16]), id, ms(issued), ms(issued.AddDate(0, 18, 0)),
					h[:], []byte{0x30, 0x00}, ms(next)); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			tb.Fatal(err)
		}
	}
}

// rssKiB reads the process's resident set size.
func rssKiB() int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			n, _ := strconv.Atoi(strings.Fields(line)[1])
			return n
		}
	}
	return -1
}

// BenchmarkReminderPass measures one scheduler pass over 1,000,000 tracked
// certificates (KMS_BENCH_CERTS overrides) of which 1% are due, and a pass
// with nothing due. Each iteration makes the same certificates due again
// outside the timer. It reports ms per pass for both and the RSS growth.
func BenchmarkReminderPass(b *testing.B) {
	n := 1000000
	if v, err := strconv.Atoi(os.Getenv("KMS_BENCH_CERTS")); err == nil && v > 0 {
		n = v
	}
	due := n / 100
	now := time.Date(2027, 6, 1, 12, 0, 0, 0, time.UTC)
	st, err := OpenStore(context.Background(), "sqlite", filepath.Join(b.TempDir(), "kms.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	start := time.Now()
	bulkLoad(b, st, n, due, now)
	b.Logf("bulk-loaded %d certificates (%d due) in %v", n, due, time.Since(start).Round(time.Millisecond))
	clk := clock.NewFake(now)
	svc := New(Config{Store: st, Policies: testPolicies(), Domains: []string{"example.com"}, KMSAddress: "kms@example.com", Clock: clk})
	ctx := context.Background()

	// Remember the due rows so each iteration can make them due again.
	type dueRow struct {
		serial string
		next   int64
	}
	var rows []dueRow
	r, err := st.db.QueryContext(ctx, `SELECT serial, next_reminder_at FROM certificates WHERE next_reminder_at <= $1`, ms(now))
	if err != nil {
		b.Fatal(err)
	}
	for r.Next() {
		var d dueRow
		r.Scan(&d.serial, &d.next)
		rows = append(rows, d)
	}
	r.Close()
	if len(rows) != due {
		b.Fatalf("%d rows due, want %d", len(rows), due)
	}
	runtime.GC()
	rssBefore := rssKiB()
	var duePass, idlePass time.Duration
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		err := st.tx(ctx, func(tx *txAlias) error {
			stmt, err := tx.PrepareContext(ctx, `UPDATE certificates SET next_reminder_at = $1 WHERE serial = $2`)
			if err != nil {
				return err
			}
			defer stmt.Close()
			for _, d := range rows {
				if _, err := stmt.ExecContext(ctx, d.next, d.serial); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		t0 := time.Now()
		queued, err := svc.SendReminders(ctx)
		duePass += time.Since(t0)
		if err != nil || queued != due {
			b.Fatalf("pass queued %d (want %d): %v", queued, due, err)
		}
		t1 := time.Now()
		if queued, err := svc.SendReminders(ctx); err != nil || queued != 0 {
			b.Fatalf("idle pass queued %d: %v", queued, err)
		}
		idlePass += time.Since(t1)
	}
	b.StopTimer()
	runtime.GC()
	b.ReportMetric(float64(duePass.Milliseconds())/float64(b.N), "ms/due-pass")
	b.ReportMetric(float64(idlePass.Microseconds())/1000/float64(b.N), "ms/idle-pass")
	b.ReportMetric(float64(rssKiB()-rssBefore)/1024, "MiB-rss-growth")
	b.ReportMetric(float64(rssKiB())/1024, "MiB-rss")
}

// txAlias keeps the benchmark's closures short.
type txAlias = sql.Tx

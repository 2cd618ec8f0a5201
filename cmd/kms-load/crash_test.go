package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsmail/kms/internal/syncbuf"

	_ "modernc.org/sqlite" // the daemon's store, read directly
)

// TestCrashMidRun proves the daemon's contract end to end with the real
// binary: a message it answered 250 is processed at least once and takes
// effect exactly once, whatever the moment it is killed. kms-load enrolls
// the users by mail, then sends one renewal each over 4 connections;
// once a third of the renewal replies are in, `kms serve` is killed with
// SIGKILL and started again on the same data directory and ports, while
// the senders retry what was not answered 250 (the same bytes) and the
// sink keeps receiving. Then:
//
//   - every request got a verified certificate reply, and no request got
//     two different certificates or two different replies (runLoad checks
//     both; it runs until the daemon has nothing left to deliver, so that
//     late redeliveries are checked too);
//   - in the daemon's store, each user holds exactly two certificates (the
//     enrollment's and the renewal's), each request is one inbound row,
//     'done', and has exactly one reply in the outbox, sent.
//
// The rows the killed process had claimed carry a 2-minute lease; the
// restarted daemon, which holds the SQLite store's lock, gives them back at
// start-up. The run's 45-second timeout makes the test fail if it did not.
func TestCrashMidRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the kms binary, and kills and restarts it")
	}
	const users = 180
	timeout := 45 * time.Second
	ctx := t.Context()
	dir := t.TempDir()
	logw := &syncBuffer{}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("KMS_CRASH_LOG") != "" {
			t.Logf("kms-load's log:\n%s", logw.String())
			if b, err := os.ReadFile(filepath.Join(dir, "kms.log")); err == nil {
				t.Logf("kms serve's log:\n%s", b)
			}
		}
	})
	sk, err := startSink("127.0.0.1:0", "postmaster@example.com", logw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sk.close)
	d, err := spawn(ctx, spawnOptions{Binary: buildKMS(t), DataDir: dir, Concurrency: 4, Relay: sk.addr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.stop(); err != nil {
			t.Errorf("stopping the daemon at the end: %v", err)
		}
	})
	f := &flags{dataDir: dir, httpAddr: d.httpAddr, smtpAddr: d.smtpAddr, address: "kms@example.com", domain: "example.com"}
	tg, err := f.target(ctx)
	if err != nil {
		t.Fatal(err)
	}
	tg.Sink = sk
	dbPath := filepath.Join(dir, "kms.db")

	// The crash: the generator signals when a third of the renewal
	// replies are in, and this goroutine kills and restarts the daemon
	// while the run goes on.
	third := make(chan struct{})
	var (
		once     sync.Once
		finished atomic.Bool // every renewal complete
	)
	crashed := make(chan error, 1)
	runCtx, cancelRun := context.WithCancel(ctx)
	var crasher sync.WaitGroup
	defer func() {
		cancelRun()
		crasher.Wait() // it logs: not after the test has ended
	}()
	crasher.Go(func() {
		// A crash that went wrong ends the run at once, not at its timeout.
		fail := func(err error) {
			crashed <- err
			cancelRun()
		}
		select {
		case <-third:
		case <-runCtx.Done():
			fail(errors.New("the run ended before a third of the renewals were answered"))
			return
		}
		if err := d.kill(); err != nil {
			fail(err)
			return
		}
		if finished.Load() {
			fail(errors.New("every renewal was answered before the daemon was killed: the crash tested nothing"))
			return
		}
		at, err := queueState(dbPath)
		if err != nil {
			fail(err)
			return
		}
		t.Logf("killed kms serve with %s", at)
		if at.inboundPending+at.outboxPending == 0 {
			fail(fmt.Errorf("killed with nothing in progress (%s): the crash tested nothing", at))
			return
		}
		if err := d.start(runCtx, time.Minute); err != nil {
			fail(fmt.Errorf("restart after the crash: %w", err))
			return
		}
		t.Logf("kms serve restarted")
		crashed <- nil
	})

	o := options{Users: users, Renewals: users, Concurrency: 4, Timeout: timeout, Log: logw,
		Progress: func(renewal bool, done, want int) {
			if !renewal {
				return
			}
			if 3*done >= want {
				once.Do(func() { close(third) })
			}
			if done == want {
				finished.Store(true)
			}
		},
		// Everything the daemon queued is delivered before the copies of
		// replies are checked: a reply delivered again after the last
		// request completed is checked too.
		Settle: func(ctx context.Context) error { return outboxDrained(ctx, dbPath) },
	}
	out, err := runLoad(runCtx, tg, o)
	if err != nil {
		cancelRun() // a crasher still waiting for a third of the replies gives up
		t.Fatalf("kms-load across the crash: %v\n(the crash: %v)", err, <-crashed)
	}
	if err := <-crashed; err != nil {
		t.Fatalf("the crash: %v", err)
	}
	t.Logf("%d renewals answered and verified; %d SMTP transactions sent again, %d replies received again",
		out.Renewals, out.Retries, out.Redeliveries)
	// How many messages the restarted daemon had committed before the
	// crash without the sender seeing the 250: it depends on the moment
	// of the kill, and is logged, not asserted.
	if n, err := metric(d.httpAddr, "kms_smtp_duplicate_total"); err == nil {
		t.Logf("the restarted daemon received %s messages again that it had stored before the crash", n)
	} else {
		t.Logf("kms_smtp_duplicate_total: %v", err)
	}
	if out.Renewals != users || out.Enrolled != users {
		t.Fatalf("%d users enrolled, %d renewals verified; want %d of each", out.Enrolled, out.Renewals, users)
	}
	checkStore(t, dbPath, users)
}

// buildKMS builds the daemon's binary into the test's temporary directory
// (from the build cache after the first time).
func buildKMS(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "kms")
	build := exec.CommandContext(t.Context(), "go", "build", "-o", bin, "github.com/kmsmail/kms/cmd/kms")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/kms: %v\n%s", err, out)
	}
	return bin
}

// metric reads one unlabelled value from the daemon's /metrics.
func metric(httpAddr, name string) (string, error) {
	resp, err := http.Get("http://" + httpAddr + "/metrics")
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", fmt.Errorf("no %s in /metrics (HTTP %d)", name, resp.StatusCode)
}

// openStore opens the daemon's SQLite database beside the daemon (WAL
// mode allows it), waiting for the daemon's write locks.
func openStore(path string) (*sql.DB, error) {
	return sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
}

// queueCounts is the state of the daemon's two queues.
type queueCounts struct {
	inboundPending, inboundClaimed int // received, not processed; of them claimed by a worker
	outboxPending, outboxClaimed   int // queued, not delivered; of them claimed by a worker
}

func (q queueCounts) String() string {
	return fmt.Sprintf("%d received messages unprocessed (%d claimed), %d replies undelivered (%d claimed)",
		q.inboundPending, q.inboundClaimed, q.outboxPending, q.outboxClaimed)
}

// queueState reads the queues of the daemon's store.
func queueState(path string) (queueCounts, error) {
	var q queueCounts
	db, err := openStore(path)
	if err != nil {
		return q, err
	}
	defer db.Close()
	now := time.Now().UnixMilli()
	err = db.QueryRow(`SELECT
		(SELECT count(*) FROM inbound WHERE state = 'pending'),
		(SELECT count(*) FROM inbound WHERE state = 'pending' AND claimed_until > $1),
		(SELECT count(*) FROM outbox WHERE state = 'pending'),
		(SELECT count(*) FROM outbox WHERE state = 'pending' AND claimed_until > $1)`, now).
		Scan(&q.inboundPending, &q.inboundClaimed, &q.outboxPending, &q.outboxClaimed)
	return q, err
}

// outboxDrained polls the daemon's store until nothing is left to process
// or deliver: every reply it will ever send has reached the sink.
func outboxDrained(ctx context.Context, path string) error {
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		q, err := queueState(path)
		if err != nil {
			return err
		}
		if q.inboundPending == 0 && q.outboxPending == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for the daemon to deliver everything: %s: %w", q, ctx.Err())
		case <-t.C:
		}
	}
}

// checkStore reads the daemon's store after the run: each of the users
// holds exactly two certificates, one current; each request (an
// enrollment and a renewal per user) was stored once, processed ('done'),
// and answered by exactly one certificate reply, delivered.
func checkStore(t *testing.T, path string, users int) {
	t.Helper()
	db, err := openStore(path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()

	rows, err := db.Query(`SELECT u.email, count(c.serial), count(CASE WHEN c.state = 'current' THEN 1 END)
		FROM users u LEFT JOIN certificates c ON c.user_id = u.id GROUP BY u.email`)
	if err != nil {
		t.Fatal(err)
	}
	seenUsers := 0
	for rows.Next() {
		var (
			email          string
			certs, current int
		)
		if err := rows.Scan(&email, &certs, &current); err != nil {
			t.Fatal(err)
		}
		seenUsers++
		if certs != 2 || current != 1 {
			t.Errorf("%s holds %d certificates, %d current; want 2 (enrollment, renewal), 1 current", email, certs, current)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	rows.Close()
	if seenUsers != users {
		t.Errorf("%d users in the store, want %d", seenUsers, users)
	}

	// Each stored message, by its Message-ID: the same bytes sent again
	// must not have made a second row.
	rows, err = db.Query(`SELECT i.id, i.mail_from, i.state, i.outcome, r.raw FROM inbound i JOIN inbound_raw r ON r.inbound_id = i.id`)
	if err != nil {
		t.Fatal(err)
	}
	stored := map[string]int64{} // Message-ID with brackets -> inbound id
	for rows.Next() {
		var (
			id                   int64
			from, state, outcome string
			raw                  []byte
		)
		if err := rows.Scan(&id, &from, &state, &outcome, &raw); err != nil {
			t.Fatal(err)
		}
		h, err := readHeader(raw)
		if err != nil {
			t.Errorf("inbound %d from %s: %v", id, from, err)
			continue
		}
		mid := h.Get("Message-ID")
		if other, dup := stored[mid]; dup {
			t.Errorf("request %s from %s stored twice: inbound rows %d and %d", mid, from, other, id)
		}
		stored[mid] = id
		if state != "done" {
			t.Errorf("inbound %d (%s from %s) is %q (%s), want done", id, mid, from, state, outcome)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	rows.Close()
	if len(stored) != 2*users {
		t.Errorf("%d requests stored, want %d (an enrollment and a renewal per user)", len(stored), 2*users)
	}

	rows, err = db.Query(`SELECT id, kind, recipient, in_reply_to, state FROM outbox WHERE in_reply_to <> ''`)
	if err != nil {
		t.Fatal(err)
	}
	answered := map[string]int64{} // In-Reply-To -> outbox id
	for rows.Next() {
		var (
			id                         int64
			kind, to, inReplyTo, state string
		)
		if err := rows.Scan(&id, &kind, &to, &inReplyTo, &state); err != nil {
			t.Fatal(err)
		}
		if other, dup := answered[inReplyTo]; dup {
			t.Errorf("request %s answered twice: outbox rows %d and %d", inReplyTo, other, id)
		}
		answered[inReplyTo] = id
		if _, ok := stored[inReplyTo]; !ok || kind != "certificate" || state != "sent" {
			t.Errorf("outbox %d: a %s to %s, %s, in reply to %s (stored: %v); want a certificate reply, sent, to a stored request",
				id, kind, to, state, inReplyTo, ok)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	rows.Close()
	if len(answered) != len(stored) {
		t.Errorf("%d requests answered in the outbox, %d stored; want every one answered once", len(answered), len(stored))
	}
}

// syncBuffer is a log that goroutines share.
type syncBuffer = syncbuf.Buffer

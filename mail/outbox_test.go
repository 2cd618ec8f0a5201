package mail

import (
	"context"
	"database/sql"
	"fmt"
	"net/mail"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/kmsmail/kms/clock"
	"github.com/kmsmail/kms/kms"
)

// outEnv is a real store with a fake clock, and mail queued in it the way
// kms queues mail: in the transaction that closes the request it answers.
type outEnv struct {
	store *kms.Store
	db    *sql.DB
	svc   *kms.Service
	clock *clock.Fake
	n     int
}

func newOutEnv(t testing.TB) *outEnv {
	t.Helper()
	st, path := openStore(t)
	clk := fakeClock()
	return &outEnv{store: st, db: openDB(t, path), clock: clk,
		svc: kms.New(kms.Config{Store: st, KMSAddress: kmsAddr, AdminAddress: adminAddr, Clock: clk})}
}

// queue puts one mail of kind to `to` in the outbox and returns its id.
func (e *outEnv) queue(t testing.TB, kind kms.OutboxKind, to string) int64 {
	t.Helper()
	ctx := context.Background()
	e.n++
	in, _, err := e.store.AcceptInbound(ctx, fmt.Appendf(nil, "Subject: request %d\r\n\r\nbody\r\n", e.n), to, "127.0.0.1:1", e.clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := e.svc.RefuseInbound(ctx, in, &kms.Reply{Kind: kind, To: to, InReplyTo: fmt.Sprintf("<req%d@example.com>", e.n),
		Payload: kms.OutboxPayload{Email: to}}, "test"); err != nil {
		t.Fatal(err)
	}
	var id int64
	if err := e.db.QueryRow(`SELECT max(id) FROM outbox`).Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

type outRow struct {
	state     string
	attempts  int
	lastError string
	next      time.Time
	claimed   int64
	messageID string
}

func (e *outEnv) row(t testing.TB, id int64) outRow {
	t.Helper()
	var (
		r    outRow
		next int64
	)
	if err := e.db.QueryRow(`SELECT state, attempts, last_error, next_attempt_at, claimed_until, message_id FROM outbox WHERE id = $1`, id).
		Scan(&r.state, &r.attempts, &r.lastError, &next, &r.claimed, &r.messageID); err != nil {
		t.Fatal(err)
	}
	r.next = time.UnixMilli(next).UTC()
	return r
}

// waitRow waits until row id satisfies cond.
func (e *outEnv) waitRow(t testing.TB, id int64, what string, cond func(outRow) bool) outRow {
	t.Helper()
	var r outRow
	eventually(t, what, func() bool { r = e.row(t, id); return cond(r) })
	return r
}

// run starts an Outbox over the env with test defaults. stop stops it and
// waits for Run to return, after which its metrics are final; cleanup
// stops it too.
func (e *outEnv) run(t testing.TB, cfg OutboxConfig) (o *Outbox, stop func()) {
	t.Helper()
	if cfg.Store == nil {
		cfg.Store = e.store
	}
	cfg.Clock, cfg.From, cfg.Admin = e.clock, kmsAddr, adminAddr
	if cfg.Renderer == nil {
		cfg.Renderer = textRenderer{from: kmsAddr}
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = 20 * time.Millisecond
	}
	cfg.Registerer = prometheus.NewRegistry()
	o, err := NewOutbox(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	stop = sync.OnceFunc(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v, want nil after cancel", err)
		}
	})
	t.Cleanup(stop)
	return o, stop
}

func (o *Outbox) failedCount(t testing.TB, reason string) float64 {
	return value(t, o.m.failed.WithLabelValues(reason))
}

func newMaildir(t testing.TB) *Maildir {
	t.Helper()
	md, err := NewMaildir(filepath.Join(t.TempDir(), "mail"))
	if err != nil {
		t.Fatal(err)
	}
	return md
}

func TestOutboxDeliversIntoMaildir(t *testing.T) {
	e := newOutEnv(t)
	md := newMaildir(t)
	ids := []int64{
		e.queue(t, kms.MailCertificate, "alice@example.com"),
		e.queue(t, kms.MailReminder, "bob@example.com"),
		e.queue(t, kms.MailLapseAdmin, adminAddr),
	}
	e.clock.Advance(90 * time.Second)
	o, stop := e.run(t, OutboxConfig{Transport: md})
	want := map[string]string{} // Message-ID -> recipient
	for _, id := range ids {
		r := e.waitRow(t, id, fmt.Sprintf("outbox %d sent", id), func(r outRow) bool { return r.state == "sent" })
		want[r.messageID] = map[int64]string{ids[0]: "alice@example.com", ids[1]: "bob@example.com", ids[2]: adminAddr}[id]
	}
	names := files(t, md.Dir(), "new")
	if len(names) != 3 {
		t.Fatalf("new/ holds %d files, want 3", len(names))
	}
	for _, n := range names {
		f, err := os.Open(filepath.Join(md.Dir(), "new", n))
		if err != nil {
			t.Fatal(err)
		}
		m, err := mail.ReadMessage(f)
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		id := m.Header.Get("Message-ID")
		rcpt, ok := want[id]
		if !ok || m.Header.Get("Delivered-To") != rcpt || m.Header.Get("To") != rcpt || m.Header.Get("Return-Path") != "<"+kmsAddr+">" {
			t.Errorf("%s: Message-ID %q Delivered-To %q To %q Return-Path %q; want one of the queued mails, to its recipient, from %s",
				n, id, m.Header.Get("Delivered-To"), m.Header.Get("To"), m.Header.Get("Return-Path"), kmsAddr)
		}
		delete(want, id)
	}
	stop()
	if got := value(t, o.m.sent); got != 3 {
		t.Errorf("kms_outbox_sent_total = %v, want 3", got)
	}
	var h dto.Metric
	o.m.latency.Write(&h)
	if h.Histogram.GetSampleCount() != 3 || h.Histogram.GetSampleSum() != 3*90 {
		t.Errorf("latency: %d samples summing %vs, want 3 of 90s (queued, then the clock moved 90s)",
			h.Histogram.GetSampleCount(), h.Histogram.GetSampleSum())
	}
}

// A crash after the file is written and before MarkSent: the lease runs
// out, the mail is claimed again and delivered again, and there is still
// one file.
func TestOutboxMaildirExactlyOnceAcrossCrash(t *testing.T) {
	e := newOutEnv(t)
	md := newMaildir(t)
	ctx := context.Background()
	id := e.queue(t, kms.MailCertificate, "alice@example.com")
	const lease = 2 * time.Minute
	attempt := func() kms.OutboxMessage {
		t.Helper()
		rows, err := e.store.ClaimOutbox(ctx, e.clock.Now(), lease, 10)
		if err != nil || len(rows) != 1 || rows[0].ID != id {
			t.Fatalf("ClaimOutbox = %+v, %v; want outbox %d", rows, err, id)
		}
		msg, err := textRenderer{from: kmsAddr}.Render(ctx, rows[0])
		if err != nil {
			t.Fatal(err)
		}
		if err := md.Deliver(ctx, kmsAddr, []string{rows[0].To}, msg, DeliveryKey(rows[0])); err != nil {
			t.Fatal(err)
		}
		return rows[0]
	}
	first := attempt()
	// The process dies here: no MarkSent. While the lease holds, nobody
	// else may take the mail.
	if rows, err := e.store.ClaimOutbox(ctx, e.clock.Now(), lease, 10); err != nil || len(rows) != 0 {
		t.Fatalf("claimed %d rows under a live lease (%v), want none", len(rows), err)
	}
	// Meanwhile the administrator reads it in mutt: it moves to cur/.
	name := files(t, md.Dir(), "new")[0]
	if err := os.Rename(filepath.Join(md.Dir(), "new", name), filepath.Join(md.Dir(), "cur", name+":2,S")); err != nil {
		t.Fatal(err)
	}
	e.clock.Advance(lease + time.Second)
	second := attempt()
	if second.Attempts != 2 || DeliveryKey(second) != DeliveryKey(first) {
		t.Fatalf("second claim: attempt %d key %s; want attempt 2 and key %s", second.Attempts, DeliveryKey(second), DeliveryKey(first))
	}
	if err := e.store.MarkSent(ctx, id, e.clock.Now()); err != nil {
		t.Fatal(err)
	}
	if n, c := len(files(t, md.Dir(), "new")), len(files(t, md.Dir(), "cur")); n != 0 || c != 1 {
		t.Fatalf("new/ %d and cur/ %d files, want the one message, read, in cur/", n, c)
	}
}

func TestOutboxRetriesTemporaryFailures(t *testing.T) {
	e := newOutEnv(t)
	relay := startRelay(t, true)
	relay.reply("flaky@example.com", 451, 250)
	tr, err := NewRelay(relay.relayConfig())
	if err != nil {
		t.Fatal(err)
	}
	id := e.queue(t, kms.MailCertificate, "flaky@example.com")
	o, stop := e.run(t, OutboxConfig{Transport: tr})

	r := e.waitRow(t, id, "the first attempt to fail", func(r outRow) bool { return r.attempts == 1 && r.lastError != "" })
	if r.state != "pending" || r.claimed != 0 || !r.next.Equal(t0.Add(time.Minute)) || !strings.Contains(r.lastError, "451") {
		t.Fatalf("after a 451: %+v; want pending, released, next attempt at %v, the reply in last_error", r, t0.Add(time.Minute))
	}
	// Nothing happens before the backoff is over ...
	o.Notify()
	e.clock.Advance(59 * time.Second)
	o.Notify()
	if got := relay.rcptCount("flaky@example.com"); got != 1 {
		// (not a timing check: with the clock before next_attempt_at no
		// claim can return the row, however long we wait)
		t.Fatalf("relay saw %d attempts before the backoff was over, want 1", got)
	}
	// ... and then the mail goes.
	e.clock.Advance(time.Second)
	o.Notify()
	e.waitRow(t, id, "delivery after the backoff", func(r outRow) bool { return r.state == "sent" })
	got := relay.received()
	if len(got) != 1 || got[0].user != relayUser || !got[0].tls {
		t.Fatalf("relay received %+v; want one message over TLS as %s", got, relayUser)
	}
	if string(got[0].data) != mustRender(t, e, id) {
		t.Errorf("relayed bytes differ from the rendered message:\n%s", got[0].data)
	}
	stop()
	if value(t, o.m.retried) != 1 || value(t, o.m.sent) != 1 {
		t.Errorf("retried %v sent %v, want 1 and 1", value(t, o.m.retried), value(t, o.m.sent))
	}
}

// mustRender renders outbox row id as the worker did.
func mustRender(t testing.TB, e *outEnv, id int64) string {
	t.Helper()
	r := e.row(t, id)
	var (
		to      string
		created int64
		irt     string
	)
	if err := e.db.QueryRow(`SELECT recipient, created_at, in_reply_to FROM outbox WHERE id = $1`, id).Scan(&to, &created, &irt); err != nil {
		t.Fatal(err)
	}
	msg, err := textRenderer{from: kmsAddr}.Render(context.Background(), kms.OutboxMessage{ID: id, Kind: kms.MailCertificate, To: to,
		MessageID: r.messageID, InReplyTo: irt, CreatedAt: time.UnixMilli(created).UTC(), Payload: kms.OutboxPayload{Email: to}})
	if err != nil {
		t.Fatal(err)
	}
	return string(msg)
}

func TestOutboxFailsPermanentRefusals(t *testing.T) {
	e := newOutEnv(t)
	relay := startRelay(t, true)
	relay.reply("gone@example.com", 550)
	tr, err := NewRelay(relay.relayConfig())
	if err != nil {
		t.Fatal(err)
	}
	id := e.queue(t, kms.MailReminder, "gone@example.com")
	ok := e.queue(t, kms.MailReminder, "alice@example.com")
	o, stop := e.run(t, OutboxConfig{Transport: tr})
	r := e.waitRow(t, id, "the refused mail to fail", func(r outRow) bool { return r.state == "failed" })
	if r.attempts != 1 || !strings.Contains(r.lastError, "550") {
		t.Errorf("failed row %+v; want one attempt and the 550 in last_error", r)
	}
	e.waitRow(t, ok, "the other mail to go", func(r outRow) bool { return r.state == "sent" })
	stop()
	if got := o.failedCount(t, failPermanent); got != 1 {
		t.Errorf("kms_outbox_failed_total{reason=permanent} = %v, want 1", got)
	}
	var audit int
	e.db.QueryRow(`SELECT count(*) FROM audit WHERE action = 'mail-failed'`).Scan(&audit)
	if audit != 1 {
		t.Errorf("%d mail-failed audit records, want 1", audit)
	}
}

func TestOutboxGivesUpAfterRetryFor(t *testing.T) {
	e := newOutEnv(t)
	relay := startRelay(t, true)
	relay.reply("busy@example.com", 451)
	tr, err := NewRelay(relay.relayConfig())
	if err != nil {
		t.Fatal(err)
	}
	id := e.queue(t, kms.MailReminder, "busy@example.com")
	o, stop := e.run(t, OutboxConfig{Transport: tr, RetryFor: 3 * time.Minute})

	// Attempt 1 at t0 fails: back off 1 minute.
	r := e.waitRow(t, id, "attempt 1", func(r outRow) bool { return r.attempts == 1 && r.claimed == 0 && r.lastError != "" })
	if !r.next.Equal(t0.Add(time.Minute)) {
		t.Fatalf("after attempt 1 next = %v, want t0+1m", r.next)
	}
	// Attempt 2 at t0+1m fails: 2 minutes would pass retry_for, so the
	// last attempt is at its end.
	e.clock.Advance(time.Minute)
	o.Notify()
	r = e.waitRow(t, id, "attempt 2", func(r outRow) bool { return r.attempts == 2 && r.claimed == 0 })
	if r.state != "pending" || !r.next.Equal(t0.Add(3*time.Minute)) {
		t.Fatalf("after attempt 2: %+v, want pending until t0+3m", r)
	}
	// Attempt 3 at t0+3m fails: retry_for is over.
	e.clock.Advance(2 * time.Minute)
	o.Notify()
	r = e.waitRow(t, id, "the mail to be given up", func(r outRow) bool { return r.state == "failed" })
	if r.attempts != 3 || !strings.Contains(r.lastError, "gave up after 3 attempts") {
		t.Fatalf("failed row %+v; want 3 attempts and why in last_error", r)
	}
	stop()
	if o.failedCount(t, failExpired) != 1 || value(t, o.m.retried) != 2 {
		t.Errorf("failed{expired} %v retried %v; want 1 and 2", o.failedCount(t, failExpired), value(t, o.m.retried))
	}
}

func TestOutboxFailsUnrenderableMail(t *testing.T) {
	e := newOutEnv(t)
	md := newMaildir(t)
	id := e.queue(t, kms.OutboxKind("no-such-kind"), "alice@example.com")
	o, stop := e.run(t, OutboxConfig{Transport: md})
	r := e.waitRow(t, id, "the mail to fail", func(r outRow) bool { return r.state == "failed" })
	stop()
	if !strings.Contains(r.lastError, "render") || o.failedCount(t, failRender) != 1 {
		t.Fatalf("row %+v, failed{render} %v; want a render failure counted", r, o.failedCount(t, failRender))
	}
	if n := len(files(t, md.Dir(), "new")); n != 0 {
		t.Fatalf("%d files delivered, want none", n)
	}
}

func TestOutboxHonoursRate(t *testing.T) {
	e := newOutEnv(t)
	md := newMaildir(t)
	for i := range 5 {
		e.queue(t, kms.MailReminder, fmt.Sprintf("user%d@example.com", i))
	}
	// One mail a second, on a clock that only the test moves.
	o, _ := e.run(t, OutboxConfig{Transport: md, Rate: 1, Workers: 4})
	settle := func(want int) {
		t.Helper()
		// The worker has sent want mails and is waiting for the next token.
		eventually(t, fmt.Sprintf("%d sent and the worker waiting", want), func() bool {
			return value(t, o.m.sent) == float64(want) && value(t, o.m.rateLimited) == float64(want)
		})
		if n := len(files(t, md.Dir(), "new")); n != want {
			t.Fatalf("%d mails delivered, want %d", n, want)
		}
	}
	settle(1)
	e.clock.Advance(time.Second)
	settle(2)
	e.clock.Advance(time.Second)
	settle(3)
	// A long pause earns one second's worth, not ten.
	e.clock.Advance(10 * time.Second)
	settle(4)
}

func TestOutboxNotifyWakesTheWorker(t *testing.T) {
	e := newOutEnv(t)
	md := newMaildir(t)
	first := e.queue(t, kms.MailReminder, "alice@example.com")
	o, _ := e.run(t, OutboxConfig{Transport: md, PollInterval: time.Hour})
	e.waitRow(t, first, "the first mail", func(r outRow) bool { return r.state == "sent" })
	// The queue is empty and the next poll is an hour away.
	second := e.queue(t, kms.MailReminder, "bob@example.com")
	o.Notify()
	e.waitRow(t, second, "the mail queued after Notify", func(r outRow) bool { return r.state == "sent" })
}

func TestBackoff(t *testing.T) {
	for attempt, want := range map[int]time.Duration{
		0: time.Minute, 1: time.Minute, 2: 2 * time.Minute, 3: 4 * time.Minute, 6: 32 * time.Minute,
		7: time.Hour, 8: time.Hour, 100: time.Hour,
	} {
		if got := backoff(attempt); got != want {
			t.Errorf("backoff(%d) = %v, want %v", attempt, got, want)
		}
	}
}

func TestNewOutboxChecksConfig(t *testing.T) {
	e := newOutEnv(t)
	md := newMaildir(t)
	for _, cfg := range []OutboxConfig{
		{Renderer: textRenderer{}, Transport: md, From: kmsAddr},
		{Store: e.store, Transport: md, From: kmsAddr},
		{Store: e.store, Renderer: textRenderer{}, From: kmsAddr},
		{Store: e.store, Renderer: textRenderer{}, Transport: md},
	} {
		if _, err := NewOutbox(cfg); err == nil {
			t.Errorf("NewOutbox(%+v) accepted an incomplete configuration", cfg)
		}
	}
}

// gatedTransport holds each delivery until the test opens the gate.
type gatedTransport struct {
	Transport
	entered, gate chan struct{}
}

func (g gatedTransport) Deliver(ctx context.Context, from string, to []string, msg []byte, key string) error {
	g.entered <- struct{}{}
	<-g.gate
	return g.Transport.Deliver(ctx, from, to, msg, key)
}

func TestOutboxShutdownFinishesDeliveriesInFlight(t *testing.T) {
	e := newOutEnv(t)
	relay := startRelay(t, true)
	tr, err := NewRelay(relay.relayConfig())
	if err != nil {
		t.Fatal(err)
	}
	id := e.queue(t, kms.MailCertificate, "alice@example.com")
	g := gatedTransport{Transport: tr, entered: make(chan struct{}), gate: make(chan struct{})}
	o, err := NewOutbox(OutboxConfig{Store: e.store, Renderer: textRenderer{from: kmsAddr}, Transport: g, Clock: e.clock, From: kmsAddr})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	<-g.entered
	cancel() // shutdown while the mail is being delivered
	close(g.gate)
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	if r := e.row(t, id); r.state != "sent" || len(relay.received()) != 1 {
		t.Fatalf("after shutdown: row %+v, relay got %d; want the delivery finished and recorded", r, len(relay.received()))
	}
}

// handOver claims mail id the way the issuing transaction does when it
// hands a reply over (kms.Handoff), and returns the row as handed over.
func (e *outEnv) handOver(t testing.TB, id int64, lease time.Duration) kms.OutboxMessage {
	t.Helper()
	if _, err := e.db.Exec(`UPDATE outbox SET claimed_until = $1, next_attempt_at = $1, attempts = 1 WHERE id = $2`,
		e.clock.Now().Add(lease).UnixMilli(), id); err != nil {
		t.Fatal(err)
	}
	var m kms.OutboxMessage
	var kind string
	if err := e.db.QueryRow(`SELECT kind, recipient, message_id, in_reply_to FROM outbox WHERE id = $1`, id).
		Scan(&kind, &m.To, &m.MessageID, &m.InReplyTo); err != nil {
		t.Fatal(err)
	}
	m.ID, m.Kind, m.Attempts, m.CreatedAt = id, kms.OutboxKind(kind), 1, e.clock.Now()
	return m
}

// TestOutboxDeliversHandedOverMail: a mail handed over in memory is
// delivered and marked sent although its row is claimed, which a claim
// from the table would never take; only the room reserved may be handed
// over.
func TestOutboxDeliversHandedOverMail(t *testing.T) {
	e := newOutEnv(t)
	md := newMaildir(t)
	// The row is claimed before the worker starts, as the issuing
	// transaction does: queued unclaimed while the worker runs, the
	// worker could claim it from the table first.
	id := e.queue(t, kms.MailCertificate, "alice@example.com")
	m := e.handOver(t, id, time.Hour)
	o, stop := e.run(t, OutboxConfig{Transport: md, Lease: time.Hour})
	lease, ok := o.Reserve()
	if !ok || lease != time.Hour {
		t.Fatalf("Reserve = %v, %v; want the lease of 1h", lease, ok)
	}
	o.Deliver(m)
	e.waitRow(t, id, "handed-over mail sent", func(r outRow) bool { return r.state == "sent" })
	if n := len(files(t, md.Dir(), "new")); n != 1 {
		t.Fatalf("new/ holds %d files, want 1", n)
	}
	stop()
	if got := value(t, o.m.handedOver); got != 1 {
		t.Errorf("kms_outbox_handed_over_total = %v, want 1", got)
	}
	if r := e.row(t, id); r.attempts != 1 {
		t.Errorf("attempts = %d, want 1 (the hand-over counts as the claim)", r.attempts)
	}
	// The room is bounded, and given back by Cancel.
	for i := range handoverRoom {
		if _, ok := o.Reserve(); !ok {
			t.Fatalf("Reserve %d of %d refused", i+1, handoverRoom)
		}
	}
	if _, ok := o.Reserve(); ok {
		t.Fatalf("Reserve beyond %d mails succeeded", handoverRoom)
	}
	o.Cancel()
	if _, ok := o.Reserve(); !ok {
		t.Fatal("Reserve after Cancel refused")
	}
}

// claimCounter is the store as the outbox's, counting its claims.
type claimCounter struct {
	OutboxStore
	claims atomic.Int64
}

func (c *claimCounter) ClaimOutbox(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]kms.OutboxMessage, error) {
	c.claims.Add(1)
	return c.OutboxStore.ClaimOutbox(ctx, now, lease, limit)
}

// TestOutboxClaimsOnlyWhenTheTableMayHaveWork: replies handed over in
// memory cost no claims from the table (a write transaction each), only
// the one at start; mail queued in the table and announced by Notify is
// still claimed. Before, the worker claimed after every batch of 16
// hand-overs and whenever none was waiting.
func TestOutboxClaimsOnlyWhenTheTableMayHaveWork(t *testing.T) {
	e := newOutEnv(t)
	md := newMaildir(t)
	const n = 40
	var handed []kms.OutboxMessage
	for range n {
		handed = append(handed, e.handOver(t, e.queue(t, kms.MailCertificate, "alice@example.com"), time.Hour))
	}
	store := &claimCounter{OutboxStore: e.store}
	o, stop := e.run(t, OutboxConfig{Store: store, Transport: md, Lease: time.Hour, PollInterval: time.Hour})
	defer stop()
	for _, m := range handed {
		if _, ok := o.Reserve(); !ok {
			t.Fatal("no room to hand over")
		}
		o.Deliver(m)
	}
	for _, m := range handed {
		e.waitRow(t, m.ID, "handed-over mail sent", func(r outRow) bool { return r.state == "sent" })
	}
	if c := store.claims.Load(); c != 1 {
		t.Errorf("%d claims from the table for %d handed-over mails, want 1 (at start)", c, n)
	}
	id := e.queue(t, kms.MailCertificate, "bob@example.com")
	o.Notify()
	e.waitRow(t, id, "mail queued in the table sent", func(r outRow) bool { return r.state == "sent" })
}

// TestOutboxClaimsDueMailDuringAStreamOfHandOvers: mail due in the table
// without a Notify (a retry) is claimed within the poll interval even
// while hand-overs keep the worker busy, not only once they stop. With the
// poll tick read only when the worker idles, it went out after all 300.
func TestOutboxClaimsDueMailDuringAStreamOfHandOvers(t *testing.T) {
	e := newOutEnv(t)
	const n = 300
	var handed []kms.OutboxMessage
	for range n + 1 {
		handed = append(handed, e.handOver(t, e.queue(t, kms.MailCertificate, "alice@example.com"), time.Hour))
	}
	// A retry, due in a minute: not due when the stream starts.
	tableID := e.queue(t, kms.MailCertificate, "bob@example.com")
	if _, err := e.db.Exec(`UPDATE outbox SET next_attempt_at = $1 WHERE id = $2`, e.clock.Now().Add(time.Minute).UnixMilli(), tableID); err != nil {
		t.Fatal(err)
	}
	rec := &recordingTransport{Transport: newMaildir(t), delay: 500 * time.Microsecond}
	g := gatedTransport{Transport: rec, entered: make(chan struct{}, n+2), gate: make(chan struct{})}
	o, stop := e.run(t, OutboxConfig{Transport: g, Lease: time.Hour, PollInterval: time.Millisecond, Workers: 1})
	defer stop()
	// The only worker waits in the first delivery; the rest queue up in
	// memory behind it.
	o.Reserve()
	o.Deliver(handed[0])
	<-g.entered
	for _, m := range handed[1:] {
		if _, ok := o.Reserve(); !ok {
			t.Fatal("no room to hand over")
		}
		o.Deliver(m)
	}
	close(g.gate)
	// The retry falls due while the stream runs, after the claims its
	// start allowed; only the poll tick can bring it in.
	eventually(t, "50 hand-overs delivered", func() bool {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return len(rec.to) >= 50
	})
	e.clock.Advance(2 * time.Minute)
	e.waitRow(t, tableID, "mail due in the table sent", func(r outRow) bool { return r.state == "sent" })
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if i := slices.Index(rec.to, "bob@example.com"); i < 0 || i >= n {
		t.Fatalf("the mail due in the table went out as number %d of %d", i, len(rec.to))
	} else {
		t.Logf("the mail due in the table went out as number %d of %d", i, n+2)
	}
}

// recordingTransport notes the recipients in the order delivered, each
// delivery taking at least delay.
type recordingTransport struct {
	Transport
	delay time.Duration
	mu    sync.Mutex
	to    []string
}

func (r *recordingTransport) Deliver(ctx context.Context, from string, to []string, msg []byte, key string) error {
	time.Sleep(r.delay)
	r.mu.Lock()
	r.to = append(r.to, to...)
	r.mu.Unlock()
	return r.Transport.Deliver(ctx, from, to, msg, key)
}

// TestOutboxGivesBackHandedOverMailAtStop: mail handed over and not yet
// delivered when the worker stops, or handed over after it stopped, is
// given back to the table at once instead of waiting for its lease.
func TestOutboxGivesBackHandedOverMailAtStop(t *testing.T) {
	e := newOutEnv(t)
	o, err := NewOutbox(OutboxConfig{Store: e.store, Clock: e.clock, From: kmsAddr, Renderer: textRenderer{from: kmsAddr},
		Transport: newMaildir(t), Lease: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	waiting := e.queue(t, kms.MailCertificate, "alice@example.com")
	late := e.queue(t, kms.MailCertificate, "bob@example.com")
	o.Reserve()
	o.Deliver(e.handOver(t, waiting, time.Hour))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := o.Run(ctx); err != nil { // stopped before it delivered anything
		t.Fatal(err)
	}
	o.Reserve()
	o.Deliver(e.handOver(t, late, time.Hour))
	for _, id := range []int64{waiting, late} {
		if r := e.row(t, id); r.state != "pending" || r.claimed != 0 || r.attempts != 0 {
			t.Errorf("outbox %d: state %s, claimed_until %d, attempts %d; want pending, unclaimed, 0 attempts", id, r.state, r.claimed, r.attempts)
		}
	}
	if got, err := e.store.ClaimOutbox(context.Background(), e.clock.Now(), time.Minute, 10); err != nil || len(got) != 2 {
		t.Errorf("after the stop a claim from the table took %d of the 2 mails, %v; want both due at once", len(got), err)
	}
	if n := o.reserved.Load(); n != 0 {
		t.Errorf("%d reservations outstanding after the stop, want 0", n)
	}
}

// TestOutboxLeavesStaleHandOverToTheTable: a handed-over mail that waited
// in memory for more than half its lease (a slow relay) is not delivered
// from memory, where its claim could run out mid-delivery and a claim from
// the table deliver it a second time; it is delivered once, by that claim,
// when the lease is over.
func TestOutboxLeavesStaleHandOverToTheTable(t *testing.T) {
	e := newOutEnv(t)
	md := newMaildir(t)
	id := e.queue(t, kms.MailCertificate, "alice@example.com")
	o, err := NewOutbox(OutboxConfig{Store: e.store, Clock: e.clock, From: kmsAddr, Renderer: textRenderer{from: kmsAddr},
		Transport: md, Lease: time.Minute, PollInterval: 20 * time.Millisecond, Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	o.Reserve()
	o.Deliver(e.handOver(t, id, time.Minute))
	e.clock.Advance(31 * time.Second) // more than half the lease in memory
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	defer func() { cancel(); <-done }()
	eventually(t, "the stale hand-over skipped", func() bool { return value(t, o.m.handoffExpired) == 1 })
	if r := e.row(t, id); r.state != "pending" || r.attempts != 1 {
		t.Fatalf("stale hand-over: state %s, %d attempts; want pending, not delivered from memory", r.state, r.attempts)
	}
	e.clock.Advance(30 * time.Second) // the lease is over
	o.Notify()
	r := e.waitRow(t, id, "sent by a claim from the table", func(r outRow) bool { return r.state == "sent" })
	if r.attempts != 2 || value(t, o.m.handedOver) != 0 {
		t.Errorf("attempts %d, handed over %v; want 2 (the hand-over and the table claim) and 0", r.attempts, value(t, o.m.handedOver))
	}
	if n := len(files(t, md.Dir(), "new")); n != 1 {
		t.Fatalf("new/ holds %d files, want 1", n)
	}
}

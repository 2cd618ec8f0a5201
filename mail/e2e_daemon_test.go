package mail

import (
	"bytes"
	"context"
	"crypto/x509"
	"database/sql"
	"fmt"
	"log/slog"
	"net"
	netmail "net/mail"
	"net/textproto"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmsmail/kms/clock"
	"github.com/kmsmail/kms/kms"
	"github.com/kmsmail/kms/kms/ca"
	"github.com/kmsmail/kms/mail/smime"
	"github.com/kmsmail/kms/policy"
)

// e2eDaemon is the daemon of cmd/kms minus the HTTP API, assembled from the
// real parts in-process: a SQLite store in t.TempDir(), a CA made by
// ca.Open (P-256 keys, for speed), the lifecycle service, the SMTP listener
// on 127.0.0.1:0, the request processor and the delivery worker writing
// KMS-signed mail into a Maildir. The processor and the delivery worker run
// their own loops (Run), as in the daemon; time is a fake clock that settle
// moves forward only to let scheduled retries fall due.
type e2eDaemon struct {
	t        *testing.T
	clock    *clock.Fake
	store    *kms.Store
	db       *sql.DB // a second connection, for rows the API does not show
	ca       *ca.Authority
	svc      *kms.Service
	smtp     *Server
	smtpAddr string
	proc     *Processor
	outbox   *Outbox
	maildir  *Maildir
	roots    *x509.CertPool
	log      *syncBuffer
	maxBytes int64
}

// e2eShortDomain has a policy of hours, so that one test can watch a
// certificate expire and a code run out without moving other users' clocks.
const e2eShortDomain = "short.example.com"

// e2eMaxBytes is smtp.max_message_bytes of the test daemon: the default.
const e2eMaxBytes = 1 << 20

// newE2EDaemon starts the daemon's mail parts on a SQLite store in a
// temporary directory, as cmd/kms wires them; options adjust the
// processor's (a test's stand-in around the lifecycle service, say).
func newE2EDaemon(t *testing.T, options ...func(*ProcessorOptions)) *e2eDaemon {
	t.Helper()
	dir := t.TempDir()
	d := &e2eDaemon{t: t, clock: clock.NewFake(t0), log: &syncBuffer{}, maxBytes: e2eMaxBytes}
	log := slog.New(slog.NewTextHandler(d.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var err error
	dbPath := filepath.Join(dir, "kms.db")
	if d.store, err = kms.OpenStore(context.Background(), "sqlite", dbPath); err != nil {
		t.Fatal(err)
	}
	d.db = openDB(t, dbPath)
	d.ca, err = ca.Open(ca.Config{Dir: filepath.Join(dir, "ca"), KeyType: policy.P256, RootKeyType: policy.P256,
		BaseURL: "http://127.0.0.1:8025", KMSAddress: kmsAddr}, d.clock.Now(), log)
	if err != nil {
		t.Fatal(err)
	}
	short := policy.Default()
	short.Lifetime = policy.Fixed(2 * time.Hour)
	short.Reminders = policy.Reminders{First: policy.Fixed(time.Hour), Every: policy.Fixed(10 * time.Minute),
		Final: policy.Fixed(10 * time.Minute), FinalEvery: policy.Fixed(5 * time.Minute)}
	short.Enrollment.CodeTTL = policy.Fixed(time.Hour)
	if err := short.Validate(); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	d.svc = kms.New(kms.Config{
		Store: d.store, Issuer: d.ca, CRLSigner: d.ca,
		Policies: policy.Set{Default: policy.Default(), Domains: map[string]policy.Policy{e2eShortDomain: short}},
		Domains:  []string{"example.com", e2eShortDomain}, KMSAddress: kmsAddr, AdminAddress: adminAddr,
		Clock: d.clock, Log: log, Metrics: kms.NewMetrics(reg),
		MailQueued: func() { d.outbox.Notify() },
	})
	d.roots = x509.NewCertPool()
	d.roots.AddCert(d.ca.Root())
	inter := x509.NewCertPool()
	inter.AddCert(d.ca.Issuer())
	popt := ProcessorOptions{Service: d.svc, Queue: d.store, Identity: d.ca, Roots: d.roots,
		Intermediates: inter, Limits: smime.Limits{MaxMessageBytes: int(d.maxBytes)}, Clock: d.clock, Log: log,
		Registerer: reg, Poll: 20 * time.Millisecond}
	for _, o := range options {
		o(&popt)
	}
	d.proc = NewProcessor(popt)
	if d.maildir, err = NewMaildir(filepath.Join(dir, "mail")); err != nil {
		t.Fatal(err)
	}
	d.outbox, err = NewOutbox(OutboxConfig{Store: e2eOutboxQueue{Store: d.store, svc: d.svc}, Transport: d.maildir,
		Renderer: &SignedRenderer{Identity: d.ca, Chain: d.ca.Chain(), Certs: d.svc, KMSAddress: kmsAddr, Clock: d.clock},
		Clock:    d.clock, Log: log, Registerer: reg, From: kmsAddr, Admin: adminAddr, PollInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	d.svc.SetHandoff(d.outbox) // as cmd/kms does
	d.smtp, err = NewServer(ServerConfig{Hostname: "kms.example.com", Address: kmsAddr, MaxMessageBytes: d.maxBytes,
		Store: d.store, Clock: d.clock, Log: log, Notify: d.proc.Notify, Handoff: d.proc, Registerer: reg}) // as cmd/kms does
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d.smtpAddr = ln.Addr().String()

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	served := make(chan error, 1)
	go func() { served <- d.smtp.Serve(ln) }()
	wg.Go(func() { d.proc.Run(ctx) })
	wg.Go(func() { d.outbox.Run(ctx) })
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer scancel()
		if err := d.smtp.Shutdown(sctx); err != nil {
			t.Errorf("SMTP shutdown: %v", err)
		}
		<-served
		cancel()
		wg.Wait()
		d.store.Close()
		if t.Failed() {
			lines := strings.Split(strings.ToValidUTF8(d.log.String(), "?"), "\n")
			t.Logf("daemon log (last %d lines):\n%s", min(len(lines), 60), strings.Join(lines[max(0, len(lines)-60):], "\n"))
		}
	})
	return d
}

// e2eOutboxQueue is the store as the delivery worker sees it in the daemon
// (cmd/kms outboxQueue): giving a mail up also tells the administrators.
type e2eOutboxQueue struct {
	*kms.Store
	svc *kms.Service
}

func (q e2eOutboxQueue) FailOutbox(ctx context.Context, id int64, why string, now time.Time) error {
	return q.svc.FailOutbox(ctx, id, why, now)
}

// e2eSMTPResult is what the server answered to each step of one transaction;
// 0 for a step not taken.
type e2eSMTPResult struct {
	mail int
	rcpt []int
	data int // the reply after the final dot (or to DATA itself if refused); -1: the connection was closed
}

// send submits msg over SMTP with raw protocol lines, so that the null
// sender, refused recipients and oversized data can be sent and their
// replies seen. from is the envelope sender; rcpts default to the KMS.
func (d *e2eDaemon) send(from string, rcpts []string, msg []byte) e2eSMTPResult {
	t := d.t
	t.Helper()
	if rcpts == nil {
		rcpts = []string{kmsAddr}
	}
	nc, err := net.Dial("tcp", d.smtpAddr)
	if err != nil {
		t.Fatal(err)
	}
	c := textproto.NewConn(nc)
	defer c.Close()
	step := func(format string, args ...any) int {
		t.Helper()
		if format != "" {
			if err := c.PrintfLine(format, args...); err != nil {
				t.Fatalf("SMTP write: %v", err)
			}
		}
		code, msg, err := c.ReadResponse(0)
		if code == 0 {
			t.Fatalf("SMTP reply to %q: %v %s", format, err, msg)
		}
		return code
	}
	if code := step(""); code != 220 {
		t.Fatalf("SMTP greeting %d", code)
	}
	if code := step("EHLO client.example.net"); code != 250 {
		t.Fatalf("EHLO answered %d", code)
	}
	var r e2eSMTPResult
	if r.mail = step("MAIL FROM:<%s>", from); r.mail != 250 {
		return r
	}
	accepted := 0
	for _, to := range rcpts {
		code := step("RCPT TO:<%s>", to)
		r.rcpt = append(r.rcpt, code)
		if code == 250 {
			accepted++
		}
	}
	// QUIT is best effort: a server that refused the transfer may have
	// closed the connection already.
	quit := func() { c.PrintfLine("QUIT") }
	if accepted == 0 {
		quit()
		return r
	}
	if code := step("DATA"); code != 354 {
		r.data = code
		return r
	}
	w := c.DotWriter()
	_, err = w.Write(msg)
	if err == nil {
		err = w.Close()
	}
	if err != nil {
		// The server stopped reading: it refused the transfer and closed
		// the connection. Its last words, if they arrived, say why.
		nc.SetReadDeadline(time.Now().Add(5 * time.Second))
		if code, _, _ := c.ReadResponse(0); code != 0 {
			r.data = code
		} else {
			r.data = -1
		}
		return r
	}
	r.data = step("")
	quit()
	return r
}

// settle lets the processor and the delivery worker work until nothing is
// pending: every received message closed and every queued mail delivered.
// When all that is left waits for a retry, it moves the clock to the first
// retry, as time would. It fails if ctx ends first: a hang.
func (d *e2eDaemon) settle(ctx context.Context) error {
	for {
		if err := ctx.Err(); err != nil {
			in, _ := d.pending("inbound")
			out, _ := d.pending("outbox")
			return fmt.Errorf("queues did not drain (%d received, %d outgoing pending): %w", in.n, out.n, err)
		}
		in, err := d.pending("inbound")
		if err != nil {
			return err
		}
		out, err := d.pending("outbox")
		if err != nil {
			return err
		}
		if in.n == 0 && out.n == 0 {
			return nil
		}
		now := d.clock.Now().UnixMilli()
		if in.claimed == 0 && out.claimed == 0 && (in.n == 0 || in.next > now) && (out.n == 0 || out.next > now) {
			next := min(e2eNonzero(in.next), e2eNonzero(out.next))
			d.clock.Set(time.UnixMilli(next))
			d.proc.Notify()
			d.outbox.Notify()
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func e2eNonzero(v int64) int64 {
	if v == 0 {
		return 1<<63 - 1
	}
	return v
}

// e2eQueueState summarises the pending rows of a queue table.
type e2eQueueState struct {
	n, claimed int
	next       int64 // earliest next_attempt_at
}

func (d *e2eDaemon) pending(table string) (e2eQueueState, error) {
	var (
		s    e2eQueueState
		next sql.NullInt64
	)
	err := d.db.QueryRow(`SELECT COUNT(*), COALESCE(SUM(CASE WHEN claimed_until > $1 THEN 1 ELSE 0 END), 0), MIN(next_attempt_at)
		FROM `+table+` WHERE state = 'pending'`, d.clock.Now().UnixMilli()).Scan(&s.n, &s.claimed, &next)
	s.next = next.Int64
	return s, err
}

// settleOrFail is settle under a deadline that no legitimate processing
// comes near; hitting it means a message hung the processor.
func (d *e2eDaemon) settleOrFail() {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := d.settle(ctx); err != nil {
		d.t.Fatalf("processing did not finish: %v", err)
	}
}

// e2eInbound is a received message as the store keeps it.
type e2eInbound struct {
	id             int64
	state, outcome string
}

// inboundAfter returns the received messages with an id above after.
func (d *e2eDaemon) inboundAfter(after int64) []e2eInbound {
	d.t.Helper()
	rows, err := d.db.Query(`SELECT id, state, COALESCE(outcome, '') FROM inbound WHERE id > $1 ORDER BY id`, after)
	if err != nil {
		d.t.Fatal(err)
	}
	defer rows.Close()
	var out []e2eInbound
	for rows.Next() {
		var r e2eInbound
		if err := rows.Scan(&r.id, &r.state, &r.outcome); err != nil {
			d.t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

// e2eMark is where the tables stood before a step, to see what it added.
type e2eMark struct {
	inbound, outbox int64
	certs           int
	files           map[string]bool
}

func (d *e2eDaemon) mark() e2eMark {
	d.t.Helper()
	var m e2eMark
	if err := d.db.QueryRow(`SELECT COALESCE(MAX(id), 0) FROM inbound`).Scan(&m.inbound); err != nil {
		d.t.Fatal(err)
	}
	if err := d.db.QueryRow(`SELECT COALESCE(MAX(id), 0) FROM outbox`).Scan(&m.outbox); err != nil {
		d.t.Fatal(err)
	}
	m.certs = d.certCount()
	m.files = map[string]bool{}
	for _, f := range d.mailFiles() {
		m.files[f] = true
	}
	return m
}

func (d *e2eDaemon) certCount() int {
	d.t.Helper()
	var n int
	if err := d.db.QueryRow(`SELECT COUNT(*) FROM certificates`).Scan(&n); err != nil {
		d.t.Fatal(err)
	}
	return n
}

// queuedAfter lists the mails queued after m as "kind to", sorted.
func (d *e2eDaemon) queuedAfter(m e2eMark) []string {
	d.t.Helper()
	rows, err := d.db.Query(`SELECT kind, recipient FROM outbox WHERE id > $1`, m.outbox)
	if err != nil {
		d.t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var kind, to string
		if err := rows.Scan(&kind, &to); err != nil {
			d.t.Fatal(err)
		}
		out = append(out, kind+" "+to)
	}
	sort.Strings(out)
	return out
}

func (d *e2eDaemon) mailFiles() []string {
	files, err := filepath.Glob(filepath.Join(d.maildir.Dir(), "new", "*"))
	if err != nil {
		d.t.Fatal(err)
	}
	return files
}

// e2eDelivered is one message in the Maildir.
type e2eDelivered struct {
	to, subject, inReplyTo string
	raw                    []byte
}

// String shows a delivered message in failure output.
func (m e2eDelivered) String() string { return m.to + ": " + m.subject }

// deliveredAfter returns the messages delivered into the Maildir after m.
func (d *e2eDaemon) deliveredAfter(m e2eMark) []e2eDelivered {
	d.t.Helper()
	var out []e2eDelivered
	for _, f := range d.mailFiles() {
		if m.files[f] {
			continue
		}
		raw, err := os.ReadFile(f)
		if err != nil {
			d.t.Fatal(err)
		}
		msg, err := netmail.ReadMessage(bytes.NewReader(raw))
		if err != nil {
			d.t.Fatalf("%s is not RFC 5322: %v", f, err)
		}
		out = append(out, e2eDelivered{to: msg.Header.Get("To"), subject: msg.Header.Get("Subject"),
			inReplyTo: msg.Header.Get("In-Reply-To"), raw: raw})
	}
	return out
}

// e2eAddr returns the bare address of a To header value.
func e2eAddr(to string) string {
	a, err := netmail.ParseAddress(to)
	if err != nil {
		return strings.Trim(to, "<> ")
	}
	return a.Address
}

package mail

import (
	"bufio"
	"context"
	"crypto/tls"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	netsmtp "net/smtp"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmsmail/kms/clock"
	"github.com/kmsmail/kms/kms"
)

// inEnv is a running inbound server on 127.0.0.1:0 over a real store.
type inEnv struct {
	srv      *Server
	addr     string
	store    *kms.Store
	db       *sql.DB
	notified atomic.Int64
	log      *syncBuffer
	served   chan error
}

func startServer(t *testing.T, mod func(*ServerConfig)) *inEnv {
	t.Helper()
	st, path := openStore(t)
	e := &inEnv{store: st, db: openDB(t, path), log: &syncBuffer{}, served: make(chan error, 1)}
	cfg := ServerConfig{
		Hostname:        "kms.example.com",
		Address:         kmsAddr,
		MaxMessageBytes: 4096,
		Store:           st,
		Clock:           fakeClock(),
		Log:             slog.New(slog.NewTextHandler(e.log, nil)),
		Notify:          func() { e.notified.Add(1) },
		Registerer:      prometheus.NewRegistry(),
	}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.srv, e.addr = srv, ln.Addr().String()
	go func() { e.served <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if err := <-e.served; err != nil {
			t.Errorf("Serve returned %v after Shutdown, want nil", err)
		}
	})
	return e
}

// dial connects with raw SMTP lines and reads the greeting.
func (e *inEnv) dial(t *testing.T) *textproto.Conn {
	t.Helper()
	nc, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	c := textproto.NewConn(nc)
	t.Cleanup(func() { c.Close() })
	expect(t, c, 220)
	return c
}

// expect reads one reply and checks its code, returning its text.
func expect(t *testing.T, c *textproto.Conn, code int) string {
	t.Helper()
	got, msg, err := c.ReadResponse(0)
	if err != nil && got == 0 {
		t.Fatalf("reading the reply, want %d: %v", code, err)
	}
	if got != code {
		t.Fatalf("reply %d %s, want %d", got, msg, code)
	}
	return msg
}

// send writes one command line and checks the reply code.
func send(t *testing.T, c *textproto.Conn, code int, format string, args ...any) string {
	t.Helper()
	if err := c.PrintfLine(format, args...); err != nil {
		t.Fatal(err)
	}
	return expect(t, c, code)
}

// rows returns the stored inbound messages' raw bytes and senders, in order.
func (e *inEnv) rows(t *testing.T) (raws [][]byte, froms []string) {
	t.Helper()
	rs, err := e.db.Query(`SELECT r.raw, i.mail_from FROM inbound i JOIN inbound_raw r ON r.inbound_id = i.id ORDER BY i.id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	for rs.Next() {
		var (
			raw  []byte
			from string
		)
		if err := rs.Scan(&raw, &from); err != nil {
			t.Fatal(err)
		}
		raws, froms = append(raws, raw), append(froms, from)
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	return raws, froms
}

func (e *inEnv) rejected(t *testing.T, reason string) float64 {
	return value(t, e.srv.m.rejected.WithLabelValues(reason))
}

const testMsg = "From: alice@example.com\r\nTo: kms@example.com\r\nSubject: renew\r\n\r\n..a line that starts with a dot\r\nbody\r\n"

// dotStuffed is testMsg as it travels in DATA.
var dotStuffed = strings.ReplaceAll(testMsg, "\r\n.", "\r\n..") + ".\r\n"

func TestServerStoresBeforeReplying(t *testing.T) {
	e := startServer(t, nil)
	c := e.dial(t)
	send(t, c, 250, "EHLO client.example.org")
	send(t, c, 250, "MAIL FROM:<alice@example.com>")
	// The KMS address is compared without regard to case.
	send(t, c, 250, "RCPT TO:<KMS@Example.COM>")
	send(t, c, 354, "DATA")
	if _, err := io.WriteString(c.W, dotStuffed); err != nil {
		t.Fatal(err)
	}
	c.W.Flush()
	expect(t, c, 250)

	// The 250 has been read; the row must be there already, no waiting.
	raws, froms := e.rows(t)
	if len(raws) != 1 || string(raws[0]) != testMsg || froms[0] != "alice@example.com" {
		t.Fatalf("stored %q from %q, want exactly the client's bytes %q from alice@example.com", raws, froms, testMsg)
	}
	if got := value(t, e.srv.m.accepted); got != 1 {
		t.Errorf("kms_smtp_accepted_total = %v, want 1", got)
	}
	eventually(t, "Notify after the message", func() bool { return e.notified.Load() == 1 })
	send(t, c, 221, "QUIT")
}

func TestServerRefusesOtherRecipients(t *testing.T) {
	e := startServer(t, nil)
	c := e.dial(t)
	send(t, c, 250, "EHLO client.example.org")
	send(t, c, 250, "MAIL FROM:<spammer@example.net>")
	for _, rcpt := range []string{"victim@example.org", "kms@example.com.evil.org", "kms2@example.com", "admin@example.com"} {
		if msg := send(t, c, 550, "RCPT TO:<%s>", rcpt); !strings.HasPrefix(msg, "5.1.1 ") {
			t.Errorf("RCPT %s: reply text %q, want enhanced code 5.1.1", rcpt, msg)
		}
	}
	// With no recipient accepted there is no transaction to send data in.
	send(t, c, 502, "DATA")
	if raws, _ := e.rows(t); len(raws) != 0 {
		t.Fatalf("%d messages stored, want none", len(raws))
	}
	if got := e.rejected(t, rejectRecipient); got != 4 {
		t.Errorf("rejected{recipient} = %v, want 4", got)
	}
}

func TestServerTooManyRecipients(t *testing.T) {
	e := startServer(t, nil)
	c := e.dial(t)
	send(t, c, 250, "EHLO client.example.org")
	send(t, c, 250, "MAIL FROM:<alice@example.com>")
	for range maxRecipients {
		send(t, c, 250, "RCPT TO:<kms@example.com>")
	}
	send(t, c, 452, "RCPT TO:<kms@example.com>")
	if got := e.rejected(t, rejectRecipients); got != 1 {
		t.Errorf("rejected{recipients} = %v, want 1", got)
	}
}

func TestServerRefusesOversizedMessages(t *testing.T) {
	e := startServer(t, nil) // MaxMessageBytes 4096
	big := "Subject: big\r\n\r\n" + strings.Repeat("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\r\n", 80)

	t.Run("DATA", func(t *testing.T) {
		c := e.dial(t)
		send(t, c, 250, "EHLO client.example.org")
		send(t, c, 250, "MAIL FROM:<alice@example.com>")
		send(t, c, 250, "RCPT TO:<kms@example.com>")
		send(t, c, 354, "DATA")
		io.WriteString(c.W, big+".\r\n")
		c.W.Flush()
		if msg := expect(t, c, 552); !strings.HasPrefix(msg, "5.3.4 ") {
			t.Errorf("reply text %q, want enhanced code 5.3.4", msg)
		}
		// The session goes on after the refusal.
		send(t, c, 250, "NOOP")
	})
	t.Run("SIZE", func(t *testing.T) {
		c := e.dial(t)
		send(t, c, 250, "EHLO client.example.org")
		send(t, c, 552, "MAIL FROM:<alice@example.com> SIZE=%d", len(big))
	})
	t.Run("BDAT", func(t *testing.T) {
		c := e.dial(t)
		send(t, c, 250, "EHLO client.example.org")
		send(t, c, 250, "MAIL FROM:<alice@example.com>")
		send(t, c, 250, "RCPT TO:<kms@example.com>")
		// Two chunks, each under the limit, together over it.
		half := big[:len(big)/2]
		fmt.Fprintf(c.W, "BDAT %d\r\n%s", len(half), half)
		c.W.Flush()
		expect(t, c, 250)
		rest := big[len(half):]
		fmt.Fprintf(c.W, "BDAT %d LAST\r\n%s", len(rest), rest)
		c.W.Flush()
		expect(t, c, 552)
	})
	if raws, _ := e.rows(t); len(raws) != 0 {
		t.Fatalf("%d messages stored, want none", len(raws))
	}
	if got := e.rejected(t, rejectSize); got != 1 {
		t.Errorf("rejected{size} = %v, want 1 (the DATA case; go-smtp refuses SIZE= and BDAT before the session sees them)", got)
	}
}

func TestServerAcceptsBDAT(t *testing.T) {
	e := startServer(t, nil)
	c := e.dial(t)
	send(t, c, 250, "EHLO client.example.org")
	send(t, c, 250, "MAIL FROM:<alice@example.com>")
	send(t, c, 250, "RCPT TO:<kms@example.com>")
	fmt.Fprintf(c.W, "BDAT %d\r\n%s", 20, testMsg[:20])
	c.W.Flush()
	expect(t, c, 250)
	fmt.Fprintf(c.W, "BDAT %d LAST\r\n%s", len(testMsg)-20, testMsg[20:])
	c.W.Flush()
	expect(t, c, 250)
	if raws, _ := e.rows(t); len(raws) != 1 || string(raws[0]) != testMsg {
		t.Fatalf("stored %q, want %q", raws, testMsg)
	}
}

func TestServerStoresDuplicateOnce(t *testing.T) {
	e := startServer(t, nil)
	for i := range 2 {
		// A client that lost the first 250 sends the same bytes again.
		e.transact(t, 250)
		if raws, _ := e.rows(t); len(raws) != 1 {
			t.Fatalf("after sending %d times: %d rows stored, want 1", i+1, len(raws))
		}
	}
	if got := value(t, e.srv.m.duplicate); got != 1 {
		t.Errorf("kms_smtp_duplicate_total = %v, want 1", got)
	}
	if got := e.notified.Load(); got != 1 {
		t.Errorf("Notify called %d times, want 1 (only for the new message)", got)
	}
}

func TestServerAcceptsNullSender(t *testing.T) {
	e := startServer(t, nil)
	e.transactFrom(t, "", dotStuffed, 250)
	if _, froms := e.rows(t); len(froms) != 1 || froms[0] != "" {
		t.Fatalf("stored senders %q, want one null sender", froms)
	}
}

func TestServerPerIPConnectionCap(t *testing.T) {
	e := startServer(t, func(c *ServerConfig) { c.MaxConnectionsPerIP = 2 })
	first := e.dial(t)
	e.dial(t)

	nc, err := net.Dial("tcp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	got, err := io.ReadAll(nc)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != refuseLine {
		t.Fatalf("third connection got %q, want %q and close", got, refuseLine)
	}
	if got := e.rejected(t, rejectConnections); got != 1 {
		t.Errorf("rejected{connections} = %v, want 1", got)
	}

	// A slot is given back when a session ends.
	send(t, first, 221, "QUIT")
	first.Close()
	eventually(t, "a slot freed by QUIT", func() bool {
		nc, err := net.Dial("tcp", e.addr)
		if err != nil {
			return false
		}
		defer nc.Close()
		line, _ := textproto.NewReader(bufio.NewReader(nc)).ReadLine()
		return strings.HasPrefix(line, "220 ")
	})
}

func TestServerSTARTTLS(t *testing.T) {
	cert, pool := selfSigned(t)
	e := startServer(t, func(c *ServerConfig) {
		c.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	})
	c, err := smtp.DialStartTLS(e.addr, &tls.Config{RootCAs: pool, ServerName: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, ok := c.TLSConnectionState(); !ok {
		t.Fatal("no TLS after STARTTLS")
	}
	if err := c.SendMail("alice@example.com", []string{kmsAddr}, strings.NewReader(testMsg)); err != nil {
		t.Fatal(err)
	}
	if raws, _ := e.rows(t); len(raws) != 1 || string(raws[0]) != testMsg {
		t.Fatalf("stored %q, want %q", raws, testMsg)
	}
	if !strings.Contains(e.log.String(), "tls=true") {
		t.Errorf("the accept log line does not record TLS:\n%s", e.log)
	}
}

func TestServerStoreFailureIs451(t *testing.T) {
	e := startServer(t, nil)
	e.store.Close() // every AcceptInbound now fails
	msg := e.transact(t, 451)
	if !strings.HasPrefix(msg, "4.3.0 ") || strings.Contains(msg, "database") || strings.Contains(msg, "sql") {
		t.Errorf("451 text %q: want 4.3.0 and a generic text, no cause", msg)
	}
	if !strings.Contains(e.log.String(), "database is closed") {
		t.Errorf("the cause is not in the log:\n%s", e.log)
	}
	if got := e.rejected(t, rejectStore); got != 1 {
		t.Errorf("rejected{store} = %v, want 1", got)
	}
	if e.notified.Load() != 0 {
		t.Error("Notify called for a message that was not stored")
	}
}

func TestServerPipelining(t *testing.T) {
	e := startServer(t, nil)
	c := e.dial(t)
	if msg := send(t, c, 250, "EHLO client.example.org"); !strings.Contains(msg, "PIPELINING") {
		t.Fatalf("EHLO reply does not offer PIPELINING:\n%s", msg)
	}
	// RFC 2920: a group of commands up to DATA sent in one write, then the
	// replies read in order. The second transaction carries a refused
	// recipient and a RSET in the group.
	second := strings.Replace(testMsg, "renew", "second", 1)
	io.WriteString(c.W, "MAIL FROM:<alice@example.com>\r\nRCPT TO:<kms@example.com>\r\nDATA\r\n")
	c.W.Flush()
	expect(t, c, 250)
	expect(t, c, 250)
	expect(t, c, 354)
	io.WriteString(c.W, dotStuffed+
		"RSET\r\nMAIL FROM:<bob@example.com>\r\nRCPT TO:<nobody@example.com>\r\nRCPT TO:<kms@example.com>\r\nDATA\r\n")
	c.W.Flush()
	for _, code := range []int{250, 250, 250, 550, 250, 354} {
		expect(t, c, code)
	}
	io.WriteString(c.W, strings.ReplaceAll(second, "\r\n.", "\r\n..")+".\r\nQUIT\r\n")
	c.W.Flush()
	expect(t, c, 250)
	expect(t, c, 221)

	// And a stock client.
	if err := netsmtp.SendMail(e.addr, nil, "carol@example.com", []string{kmsAddr},
		[]byte(strings.Replace(testMsg, "renew", "third", 1))); err != nil {
		t.Fatal(err)
	}
	raws, froms := e.rows(t)
	if len(raws) != 3 || string(raws[0]) != testMsg || string(raws[1]) != second ||
		strings.Join(froms, ",") != "alice@example.com,bob@example.com,carol@example.com" {
		t.Fatalf("stored %d messages from %q, want the three in order", len(raws), froms)
	}
}

func TestServerDropsIdleClients(t *testing.T) {
	e := startServer(t, func(c *ServerConfig) { c.ReadTimeout = 100 * time.Millisecond })
	c := e.dial(t)
	// Say nothing: the server gives up on us.
	expect(t, c, 421)
	if _, err := c.ReadLine(); !errors.Is(err, io.EOF) {
		t.Fatalf("after 421: %v, want the connection closed", err)
	}
}

func TestServerBoundsSessionTime(t *testing.T) {
	// A client that keeps every read timeout but never finishes.
	e := startServer(t, func(c *ServerConfig) { c.MaxSessionTime = 200 * time.Millisecond })
	c := e.dial(t)
	send(t, c, 250, "EHLO client.example.org")
	deadline := time.Now().Add(10 * time.Second)
	for {
		if err := c.PrintfLine("NOOP"); err != nil {
			break
		}
		if _, _, err := c.ReadResponse(250); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the session outlived MaxSessionTime by far")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestServerShutdownClosesIdleSessions(t *testing.T) {
	e := startServer(t, nil)
	c := e.dial(t)
	send(t, c, 250, "EHLO client.example.org")
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := e.srv.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown with an idle client = %v, want the deadline", err)
	}
	if _, err := c.ReadLine(); err == nil {
		t.Fatal("the idle session is still open after Shutdown")
	}
	if err := <-e.served; err != nil {
		t.Fatalf("Serve = %v after Shutdown, want nil", err)
	}
	e.served <- nil // for the cleanup
}

func TestNewServerChecksConfig(t *testing.T) {
	st, _ := openStore(t)
	for _, cfg := range []ServerConfig{
		{Hostname: "kms.example.com", Address: kmsAddr},           // no store
		{Hostname: "kms.example.com", Address: "kms", Store: st},  // not an address
		{Hostname: "", Address: kmsAddr, Store: st},               // no hostname
		{Hostname: "kms.example.com", Address: "kms@", Store: st}, // no domain
		{Hostname: "kms.example.com", Address: "@example.com", Store: st},
	} {
		if _, err := NewServer(cfg); err == nil {
			t.Errorf("NewServer(%+v) accepted a bad configuration", cfg)
		}
	}
}

// handoffRecorder is an InboundHandoff that records what the listener does.
type handoffRecorder struct {
	mu                 sync.Mutex
	room               bool
	reserved, canceled int
	delivered          []kms.Inbound
}

func (h *handoffRecorder) Reserve() (time.Duration, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.room {
		return 0, false
	}
	h.reserved++
	return time.Minute, true
}

func (h *handoffRecorder) Cancel() { h.mu.Lock(); h.canceled++; h.mu.Unlock() }

func (h *handoffRecorder) Deliver(m kms.Inbound) {
	h.mu.Lock()
	h.delivered = append(h.delivered, m)
	h.mu.Unlock()
}

// transact sends testMsg from alice in one SMTP transaction, expects code
// as the final reply and returns its text.
func (e *inEnv) transact(t *testing.T, code int) string {
	t.Helper()
	return e.transactFrom(t, "alice@example.com", dotStuffed, code)
}

// transactFrom sends data (dot-stuffed, with its final ".") from the
// envelope sender from in one SMTP transaction, expects code as the final
// reply and returns its text.
func (e *inEnv) transactFrom(t *testing.T, from, data string, code int) string {
	t.Helper()
	c := e.dial(t)
	send(t, c, 250, "EHLO client.example.org")
	send(t, c, 250, "MAIL FROM:<%s>", from)
	send(t, c, 250, "RCPT TO:<kms@example.com>")
	send(t, c, 354, "DATA")
	io.WriteString(c.W, data)
	c.W.Flush()
	msg := expect(t, c, code)
	send(t, c, 221, "QUIT")
	return msg
}

// TestServerHandsOverStoredMessages: a new message is stored claimed and
// handed over with its bytes; the same bytes again (a duplicate) and a
// failed store give the reservation back; without room, the message is
// stored unclaimed for the processor to claim from the table.
func TestServerHandsOverStoredMessages(t *testing.T) {
	h := &handoffRecorder{room: true}
	e := startServer(t, func(c *ServerConfig) { c.Handoff = h })
	e.transact(t, 250)
	h.mu.Lock()
	if h.reserved != 1 || h.canceled != 0 || len(h.delivered) != 1 {
		t.Fatalf("reserved %d, cancelled %d, delivered %d; want 1, 0, 1", h.reserved, h.canceled, len(h.delivered))
	}
	m := h.delivered[0]
	h.mu.Unlock()
	if string(m.Raw) != testMsg || m.MailFrom != "alice@example.com" || m.Attempts != 1 || m.ID == 0 || !m.ReceivedAt.Equal(fakeClock().Now()) {
		t.Errorf("handed over %+v", m)
	}
	// Claimed for the lease: a claim from the table does not take it.
	if got, err := e.store.ClaimInbound(context.Background(), fakeClock().Now(), time.Minute, 10); err != nil || len(got) != 0 {
		t.Errorf("a claim from the table took %d handed-over messages, %v", len(got), err)
	}

	e.transact(t, 250) // the same bytes: a duplicate
	h.mu.Lock()
	if h.reserved != 2 || h.canceled != 1 || len(h.delivered) != 1 {
		t.Errorf("after a duplicate: reserved %d, cancelled %d, delivered %d; want 2, 1, 1", h.reserved, h.canceled, len(h.delivered))
	}
	h.mu.Unlock()

	full := &handoffRecorder{}
	e = startServer(t, func(c *ServerConfig) { c.Handoff = full })
	e.transact(t, 250)
	if len(full.delivered) != 0 || full.canceled != 0 {
		t.Errorf("without room: delivered %d, cancelled %d; want 0, 0", len(full.delivered), full.canceled)
	}
	if got, err := e.store.ClaimInbound(context.Background(), fakeClock().Now(), time.Minute, 10); err != nil || len(got) != 1 {
		t.Errorf("without room, a claim from the table took %d messages, %v; want the one stored", len(got), err)
	}

	// A large message is not held in memory: it waits in the store.
	big := &handoffRecorder{room: true}
	e = startServer(t, func(c *ServerConfig) { c.Handoff = big; c.MaxMessageBytes = 2 * maxHandedOverBytes })
	e.transactFrom(t, "alice@example.com", "Subject: big\r\n\r\n"+strings.Repeat(strings.Repeat("x", 998)+"\r\n", maxHandedOverBytes/1000+1)+".\r\n", 250)
	if big.reserved != 0 || len(big.delivered) != 0 {
		t.Errorf("a message over %d bytes: reserved %d, delivered %d; want it left in the store", maxHandedOverBytes, big.reserved, len(big.delivered))
	}
	if got, err := e.store.ClaimInbound(context.Background(), fakeClock().Now(), time.Minute, 10); err != nil || len(got) != 1 {
		t.Errorf("the large message: a claim from the table took %d, %v; want it", len(got), err)
	}

	h = &handoffRecorder{room: true}
	e = startServer(t, func(c *ServerConfig) { c.Handoff = h })
	e.store.Close()
	e.transact(t, 451)
	if h.reserved != 1 || h.canceled != 1 || len(h.delivered) != 0 {
		t.Errorf("after a store failure: reserved %d, cancelled %d, delivered %d; want 1, 1, 0", h.reserved, h.canceled, len(h.delivered))
	}
}

// TestServerHandsOverTheStoredReceiptTime: a handed-over message carries
// the receipt time as the store keeps it, so that it is verified at the
// same instant as when claimed from the table.
func TestServerHandsOverTheStoredReceiptTime(t *testing.T) {
	h := &handoffRecorder{room: true}
	clk := clock.NewFake(t0.Add(1234567 * time.Nanosecond))
	e := startServer(t, func(c *ServerConfig) { c.Handoff = h; c.Clock = clk })
	e.transact(t, 250)
	if len(h.delivered) != 1 {
		t.Fatalf("%d messages handed over, want 1", len(h.delivered))
	}
	m := h.delivered[0]
	if err := e.store.ReleaseInbound(context.Background(), []int64{m.ID}); err != nil {
		t.Fatal(err)
	}
	got, err := e.store.ClaimInbound(context.Background(), clk.Now(), time.Minute, 1)
	if err != nil || len(got) != 1 {
		t.Fatalf("claim: %d, %v", len(got), err)
	}
	if !m.ReceivedAt.Equal(got[0].ReceivedAt) || m.ReceivedAt.Location() != got[0].ReceivedAt.Location() {
		t.Errorf("handed over with receipt time %v, stored %v", m.ReceivedAt, got[0].ReceivedAt)
	}
}

package main

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsmail/kms/mail"
)

// The generator's two halves of surviving a crash, each made to happen on
// purpose against a daemon assembled in-process: the sender's retry after
// a 250 lost (TestRetryAfterLost250), and the reply side's handling of a
// request answered more than once (TestRepliesReceivedAgain). The real
// binary, really killed, is TestCrashMidRun's.

// TestRetryAfterLost250: the daemon commits a renewal and the connection
// is cut instead of its 250 reaching the client, three times (the crash
// between commit and 250, on the wire). The generator sends the same
// bytes again, the daemon recognises them and answers 250 without acting
// again: each user ends with two certificates, each request is stored
// once and answered once, and the report counts the three retries.
func TestRetryAfterLost250(t *testing.T) {
	const users, lost = 6, 3
	sinkAddr := freeAddr(t)
	// The enrollments' 250s pass; then every other 250 is lost, three times.
	cut := &lose250{skip: users, cuts: lost}
	d := startDaemon(t, daemonOptions{Relay: sinkAddr, WrapListener: func(ln net.Listener) net.Listener {
		cut.Listener = ln
		return cut
	}})
	out, err := runInProcess(t, d, sinkAddr, options{Users: users, Renewals: users, Concurrency: 2, Timeout: time.Minute})
	if err != nil {
		t.Fatalf("kms-load: %v", err)
	}
	if n := cut.count(); n != lost {
		t.Fatalf("%d 250s lost, want %d", n, lost)
	}
	if out.Retries != lost || out.Redeliveries != 0 || out.Renewals != users {
		t.Errorf("%d renewals, %d retries, %d redeliveries; want %d, %d (one per 250 lost), 0", out.Renewals, out.Retries, out.Redeliveries,
			users, lost)
	}
	checkStore(t, filepath.Join(d.dataDir, "kms.db"), users)
}

// TestRepliesReceivedAgain: a reply delivered again as it was (the
// relay's at least once) is counted and accepted; a further reply to a
// request that carries another certificate (the request acted on twice),
// or has another Message-ID (answered twice), fails the run, naming it.
func TestRepliesReceivedAgain(t *testing.T) {
	const users = 2
	for _, tt := range []struct {
		name     string
		renewals int // per user
		// again returns what to deliver after a reply to a kms-load
		// request: the n-th such reply to this recipient (from 1: the
		// enrollment's), whose In-Reply-To is answers[n-1].
		again func(t *testing.T, msg []byte, n int, answers []string) [][]byte
		want  string // in the error; "" for a run that passes
	}{
		{"same reply twice", 1, func(_ *testing.T, msg []byte, _ int, _ []string) [][]byte {
			return [][]byte{msg}
		}, ""},
		{"another certificate", 2, func(t *testing.T, msg []byte, n int, answers []string) [][]byte {
			if n != 3 {
				return nil
			}
			// The second renewal's reply, also as a reply to the first.
			return [][]byte{setHeader(t, msg, "In-Reply-To", answers[1])}
		}, "a second, different certificate"},
		{"another Message-ID", 1, func(t *testing.T, msg []byte, n int, _ []string) [][]byte {
			if n != 2 {
				return nil
			}
			return [][]byte{setHeader(t, msg, "Message-Id", "<another@kms.invalid>")}
		}, "the request was answered twice"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sinkAddr := freeAddr(t)
			tr := &againTransport{t: t, again: tt.again, answers: map[string][]string{}}
			d := startDaemon(t, daemonOptions{Relay: sinkAddr, Wrap: func(next mail.Transport) mail.Transport {
				tr.next = next
				return tr
			}})
			out, err := runInProcess(t, d, sinkAddr, options{Users: users, Renewals: users * tt.renewals, Concurrency: 2,
				Timeout: time.Minute})
			if tt.want == "" {
				if err != nil {
					t.Fatalf("kms-load: %v", err)
				}
				if want := users * (1 + tt.renewals); out.Redeliveries != want || out.Retries != 0 {
					t.Fatalf("%d redeliveries, %d retries; want %d (every reply twice), 0", out.Redeliveries, out.Retries, want)
				}
				return
			}
			if err == nil {
				t.Fatalf("kms-load passed (%d redeliveries); want it to fail with %q", out.Redeliveries, tt.want)
			}
			t.Logf("kms-load said: %v", err)
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "renewal request <kms-load-") {
				t.Fatalf("kms-load said %q; want the request named and %q", err, tt.want)
			}
		})
	}
}

// runInProcess runs the generator against d, whose replies go to a sink
// on sinkAddr, until the daemon has nothing left to deliver (o.Settle),
// and logs what it said.
func runInProcess(t *testing.T, d *testDaemon, sinkAddr string, o options) (*outcome, error) {
	t.Helper()
	logw := &syncBuffer{}
	sk, err := startSink(sinkAddr, "postmaster@example.com", logw)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sk.close)
	f := &flags{dataDir: d.dataDir, httpAddr: d.httpAddr, smtpAddr: d.smtpAddr, address: "kms@example.com", domain: "example.com"}
	tg, err := f.target(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	tg.Sink = sk
	o.Log = logw
	o.Settle = func(ctx context.Context) error { return outboxDrained(ctx, filepath.Join(d.dataDir, "kms.db")) }
	out, err := runLoad(t.Context(), tg, o)
	t.Logf("kms-load's log:\n%s", logw.String())
	return out, err
}

// lose250 wraps the daemon's SMTP listener and loses the 250 that
// answers chosen messages: the daemon answers 250 only once the message
// is committed, and the connection is closed instead of passing it on,
// as when the daemon crashes between its commit and its 250. After skip
// 250s have passed, every other one is lost, cuts times.
type lose250 struct {
	net.Listener
	skip, cuts int

	mu   sync.Mutex
	seen int // 250s that answered a message
	lost int
}

func (l *lose250) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &lose250Conn{Conn: c, l: l}, nil
}

// take counts a 250 that answers a message and says whether to lose it.
func (l *lose250) take() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seen++
	if k := l.seen - l.skip; k > 0 && k%2 == 1 && l.lost < l.cuts {
		l.lost++
		return true
	}
	return false
}

func (l *lose250) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lost
}

// lose250Conn is one SMTP connection through lose250. It watches the
// client's bytes for the end of a message: the end of its data
// (CRLF.CRLF, which dot-stuffing keeps out of the message), or the last
// byte of a BDAT LAST chunk; the daemon's next reply is the one that
// answers it.
type lose250Conn struct {
	net.Conn
	l         *lose250
	tail      []byte      // the last bytes read, to find the end of data across reads
	chunkLeft int         // bytes of a BDAT LAST chunk still to come
	ended     atomic.Bool // a message ended; its reply is next
}

var (
	endOfData = []byte("\r\n.\r\n")
	bdatLast  = regexp.MustCompile(`BDAT ([0-9]+) LAST\r\n`)
)

func (c *lose250Conn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if c.chunkLeft > 0 {
		// Inside a chunk: its bytes are the message, not commands.
		if c.chunkLeft -= n; c.chunkLeft <= 0 {
			c.ended.Store(true)
			c.chunkLeft = 0
		}
		c.tail = nil
		return n, err
	}
	buf := append(c.tail, p[:n]...)
	if m := bdatLast.FindSubmatchIndex(buf); m != nil {
		size, _ := strconv.Atoi(string(buf[m[2]:m[3]]))
		if c.chunkLeft = size - (len(buf) - m[1]); c.chunkLeft <= 0 {
			c.ended.Store(true)
			c.chunkLeft = 0
		}
		c.tail = nil
		return n, err
	}
	if bytes.Contains(buf, endOfData) {
		c.ended.Store(true)
		buf = nil
	}
	c.tail = bytes.Clone(buf[max(0, len(buf)-len("BDAT 1000000000 LAST\r\n")):])
	return n, err
}

func (c *lose250Conn) Write(p []byte) (int, error) {
	if c.ended.Swap(false) && bytes.HasPrefix(p, []byte("250")) && c.l.take() {
		c.Conn.Close()
		return 0, net.ErrClosed
	}
	return c.Conn.Write(p)
}

// againTransport delivers every message, and then, for a reply to a
// kms-load request, whatever again returns, to the same recipients.
type againTransport struct {
	t     *testing.T
	next  mail.Transport
	again func(t *testing.T, msg []byte, n int, answers []string) [][]byte

	mu      sync.Mutex
	answers map[string][]string // recipient -> In-Reply-To of each reply to a kms-load request
}

func (a *againTransport) Deliver(ctx context.Context, from string, to []string, msg []byte, key string) error {
	if err := a.next.Deliver(ctx, from, to, msg, key); err != nil {
		return err
	}
	h, err := readHeader(msg)
	irt := ""
	if err == nil {
		irt = h.Get("In-Reply-To")
	}
	if !strings.HasPrefix(irt, "<kms-load-") || len(to) != 1 {
		return nil
	}
	a.mu.Lock()
	a.answers[to[0]] = append(a.answers[to[0]], irt)
	answers := append([]string(nil), a.answers[to[0]]...)
	a.mu.Unlock()
	for _, m := range a.again(a.t, msg, len(answers), answers) {
		if err := a.next.Deliver(ctx, from, to, m, key); err != nil {
			return err
		}
	}
	return nil
}

// setHeader replaces the value of the header field name (any case) in
// msg's header; the signed part is left alone, so the reply still
// verifies.
func setHeader(t *testing.T, msg []byte, name, value string) []byte {
	end := bytes.Index(msg, []byte("\r\n\r\n"))
	re := regexp.MustCompile(`(?im)^` + regexp.QuoteMeta(name) + `:[^\r\n]*`)
	if end < 0 || !re.Match(msg[:end]) {
		t.Errorf("no %s field in the reply's header:\n%s", name, msg[:max(end, 0)])
		return msg
	}
	hdr := re.ReplaceAllLiteral(msg[:end], []byte(name+": "+value))
	return append(hdr, msg[end:]...)
}

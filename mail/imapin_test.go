package mail

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// imapRig is a fetcher wired to a test server and a real SQLite store.
type imapRig struct {
	srv      *imapTestServer
	f        *IMAPFetcher
	path     string // the store's file
	notified atomic.Int32
	log      *syncBuffer
}

func newIMAPRig(t *testing.T, srv *imapTestServer, mod func(*IMAPOptions)) *imapRig {
	t.Helper()
	st, path := openStore(t)
	r := &imapRig{srv: srv, path: path, log: &syncBuffer{}}
	opt := IMAPOptions{
		Addr: srv.addr, Username: imapUser, Password: []byte(imapPassword),
		Security: srv.security(), TLSConfig: &tls.Config{RootCAs: srv.pool},
		Store: st, Clock: fakeClock(), Log: slog.New(slog.NewTextHandler(r.log, nil)), Notify: func() { r.notified.Add(1) },
		Registerer: prometheus.NewRegistry(),
	}
	if mod != nil {
		mod(&opt)
	}
	f, err := NewIMAPFetcher(opt)
	if err != nil {
		t.Fatal(err)
	}
	r.f = f
	t.Cleanup(func() {
		if t.Failed() { // what the fetcher and the server did, to tell a race from a bug
			t.Logf("fetcher log:\n%s", r.log.String())
			w := srv.wire.String()
			t.Logf("server wire (last 4000 bytes):\n%s", w[max(0, len(w)-4000):])
		}
	})
	return r
}

// inboundRow is what the store kept of a message.
type inboundRow struct {
	mailFrom, remote string
	raw              []byte
}

func (r *imapRig) rows(t *testing.T) []inboundRow {
	t.Helper()
	db := openDB(t, r.path)
	rows, err := db.Query(`SELECT i.mail_from, i.remote_addr, r.raw FROM inbound i JOIN inbound_raw r ON r.inbound_id = i.id ORDER BY i.id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []inboundRow
	for rows.Next() {
		var row inboundRow
		if err := rows.Scan(&row.mailFrom, &row.remote, &row.raw); err != nil {
			t.Fatal(err)
		}
		out = append(out, row)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func (r *imapRig) errors(kind string) float64 {
	return valueOf(r.f.m.errors.WithLabelValues(kind))
}

// valueOf reads a counter without a testing.TB, for use in conditions
// evaluated outside the test goroutine.
func valueOf(c prometheus.Counter) float64 {
	var d dto.Metric
	if err := c.Write(&d); err != nil {
		return -1
	}
	return d.GetCounter().GetValue()
}

func TestIMAPFetchStoresAndRemoves(t *testing.T) {
	for _, tc := range []struct {
		name     string
		caps     imap.CapSet
		implicit bool
	}{
		{"implicit TLS, IMAP4rev2", imapRev2, true},
		{"STARTTLS, IMAP4rev1 without UIDPLUS", imapRev1, false},
		{"implicit TLS, IMAP4rev1 without UIDPLUS", imapRev1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newIMAPServer(t, tc.caps, tc.implicit)
			msgs := [][]byte{
				imapTestMsg(1, "Return-Path: <>\r\nFrom: MAILER-DAEMON@example.org\r\n"),
				imapTestMsg(2, "Return-Path: <bob@example.org>\r\nFrom: Alice <alice@example.com>\r\n"),
				imapTestMsg(3, "From: \"Carol C.\" <carol@example.com>\r\n"),
			}
			for _, m := range msgs {
				srv.appendMsg("INBOX", m)
			}
			r := newIMAPRig(t, srv, nil)
			n, err := r.f.FetchOnce(context.Background())
			if err != nil || n != 3 {
				t.Fatalf("FetchOnce = %d, %v; want 3, nil", n, err)
			}
			rows := r.rows(t)
			wantFrom := []string{"", "bob@example.org", "carol@example.com"}
			if len(rows) != len(msgs) {
				t.Fatalf("%d inbound rows, want %d", len(rows), len(msgs))
			}
			for i, row := range rows {
				if row.mailFrom != wantFrom[i] || row.remote != "imap:"+srv.addr || !bytes.Equal(row.raw, msgs[i]) {
					t.Errorf("row %d: mail_from %q remote %q raw %q; want %q, %q and the appended bytes %q",
						i, row.mailFrom, row.remote, row.raw, wantFrom[i], "imap:"+srv.addr, msgs[i])
				}
			}
			if left := srv.list("INBOX"); len(left) != 0 {
				t.Errorf("%d messages left in INBOX after they were stored, want 0", len(left))
			}
			if got := r.notified.Load(); got != 3 {
				t.Errorf("Notify called %d times, want 3", got)
			}
			if got := valueOf(r.f.m.fetched); got != 3 {
				t.Errorf("kms_imap_fetched_total = %v, want 3", got)
			}
			// Nothing new: a second pass stores nothing.
			if n, err := r.f.FetchOnce(context.Background()); err != nil || n != 0 {
				t.Errorf("second FetchOnce = %d, %v; want 0, nil", n, err)
			}
			if got := len(r.rows(t)); got != 3 {
				t.Errorf("%d rows after the second pass, want 3", got)
			}
		})
	}
}

// A crash between the store's commit and the removal from the mailbox
// (here: every connection dropped at that moment) must neither lose the
// message nor queue it twice.
func TestIMAPDropAfterStoreIsNotDuplicated(t *testing.T) {
	srv := newIMAPServer(t, imapRev2, true)
	msg := imapTestMsg(1, "From: alice@example.com\r\n")
	srv.appendMsg("INBOX", msg)
	r := newIMAPRig(t, srv, nil)
	var dropped atomic.Bool
	r.f.afterStore = func() {
		if !dropped.Swap(true) {
			srv.stop()
		}
	}
	if _, err := r.f.FetchOnce(context.Background()); err == nil {
		t.Fatal("FetchOnce succeeded although the server went away before the delete")
	}
	if got := len(r.rows(t)); got != 1 {
		t.Fatalf("%d rows after the drop, want 1 (stored before the delete)", got)
	}
	srv.start()
	if left := srv.list("INBOX"); len(left) != 1 {
		t.Fatalf("%d messages in INBOX after the drop, want 1 (not deleted)", len(left))
	}
	n, err := r.f.FetchOnce(context.Background())
	if err != nil || n != 0 {
		t.Fatalf("FetchOnce after restart = %d, %v; want 0 new, nil", n, err)
	}
	if rows := r.rows(t); len(rows) != 1 || !bytes.Equal(rows[0].raw, msg) {
		t.Errorf("%d rows after the retry, want the one message once", len(rows))
	}
	if left := srv.list("INBOX"); len(left) != 0 {
		t.Errorf("%d messages left in INBOX after the retry, want 0", len(left))
	}
	if got := valueOf(r.f.m.duplicate); got != 1 {
		t.Errorf("kms_imap_duplicate_total = %v, want 1", got)
	}
	if got := r.notified.Load(); got != 1 {
		t.Errorf("Notify called %d times, want 1 (the duplicate is not new)", got)
	}
}

func TestIMAPWrongPassword(t *testing.T) {
	srv := newIMAPServer(t, imapRev2, false)
	srv.appendMsg("INBOX", imapTestMsg(1, "From: alice@example.com\r\n"))
	r := newIMAPRig(t, srv, func(o *IMAPOptions) { o.Password = []byte("wrong") })
	_, err := r.f.FetchOnce(context.Background())
	if !errors.Is(err, ErrIMAPLogin) {
		t.Fatalf("FetchOnce with a wrong password: %v; want ErrIMAPLogin", err)
	}
	if !strings.Contains(err.Error(), "imap.password_file") {
		t.Errorf("error %q does not say which setting to fix", err)
	}
	if got := len(r.rows(t)); got != 0 {
		t.Errorf("%d rows stored without a login, want 0", got)
	}
	if left := srv.list("INBOX"); len(left) != 1 {
		t.Errorf("%d messages in INBOX, want the 1 untouched", len(left))
	}
	if got := r.errors(imapErrLogin); got != 1 {
		t.Errorf("kms_imap_errors_total{kind=login} = %v, want 1", got)
	}
	if d := imapBackoff(err, 1); d < imapLoginRetryMin {
		t.Errorf("backoff after a refused login is %v, want at least %v", d, imapLoginRetryMin)
	}
}

// A server that does not offer STARTTLS never sees the password.
func TestIMAPStartTLSRequired(t *testing.T) {
	srv := newIMAPServer(t, imapRev2, false)
	srv.stop()
	srv.noTLS = true
	srv.start()
	srv.appendMsg("INBOX", imapTestMsg(1, "From: alice@example.com\r\n"))
	r := newIMAPRig(t, srv, nil)
	_, err := r.f.FetchOnce(context.Background())
	if err == nil || !strings.Contains(err.Error(), "STARTTLS") {
		t.Fatalf("FetchOnce against a server without STARTTLS: %v; want an error naming STARTTLS", err)
	}
	if strings.Contains(srv.wire.String(), imapPassword) {
		t.Error("the password crossed the connection in clear")
	}
	if left := srv.list("INBOX"); len(left) != 1 {
		t.Errorf("%d messages in INBOX, want the 1 untouched", len(left))
	}
}

// Implicit TLS against a STARTTLS port, and the other way round, fail
// with an error that points at the port rather than hanging.
func TestIMAPWrongSecurityMode(t *testing.T) {
	for _, implicit := range []bool{true, false} {
		srv := newIMAPServer(t, imapRev2, implicit)
		r := newIMAPRig(t, srv, func(o *IMAPOptions) {
			o.DialTimeout = 500 * time.Millisecond
			o.Security = IMAPImplicitTLS
			if implicit {
				o.Security = IMAPStartTLS
			}
		})
		_, err := r.f.FetchOnce(context.Background())
		t.Logf("server implicit=%v: %v", implicit, err)
		if err == nil || !strings.Contains(err.Error(), "port 993") {
			t.Errorf("server implicit=%v, fetcher the other mode: %v; want an error with a hint about port 993", implicit, err)
		}
	}
}

// A server that accepts and then says nothing costs DialTimeout, not a
// hang, and the error says what happened.
func TestIMAPSilentServer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	st, _ := openStore(t)
	f, err := NewIMAPFetcher(IMAPOptions{Addr: ln.Addr().String(), Username: imapUser, Password: []byte(imapPassword),
		Store: st, DialTimeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.FetchOnce(context.Background()); err == nil || !strings.Contains(err.Error(), "no answer within") {
		t.Errorf("FetchOnce against a silent server: %v; want an error saying there was no answer", err)
	}
}

func TestIMAPOversizedIsFlaggedAndSkipped(t *testing.T) {
	srv := newIMAPServer(t, imapRev2, true)
	big := imapTestMsg(2, "From: alice@example.com\r\nX-Padding: "+strings.Repeat("x", 4000)+"\r\n")
	srv.appendMsg("INBOX", imapTestMsg(1, "From: alice@example.com\r\n"))
	srv.appendMsg("INBOX", big)
	srv.appendMsg("INBOX", imapTestMsg(3, "From: alice@example.com\r\n"))
	r := newIMAPRig(t, srv, func(o *IMAPOptions) { o.MaxMessageBytes = 1000 })
	n, err := r.f.FetchOnce(context.Background())
	if err != nil || n != 2 {
		t.Fatalf("FetchOnce = %d, %v; want 2 (the small ones), nil", n, err)
	}
	left := srv.list("INBOX")
	if len(left) != 1 || !bytes.Equal(left[0].raw, big) {
		t.Fatalf("INBOX holds %d messages, want only the oversized one", len(left))
	}
	if !left[0].has(imap.FlagFlagged) || !left[0].has(imapFlagTooLarge) {
		t.Errorf("oversized message has flags %v, want \\Flagged and %s", left[0].flags, imapFlagTooLarge)
	}
	for _, row := range r.rows(t) {
		if bytes.Equal(row.raw, big) {
			t.Error("the oversized message was stored")
		}
	}
	if n, err := r.f.FetchOnce(context.Background()); err != nil || n != 0 {
		t.Errorf("second FetchOnce = %d, %v; want 0, nil", n, err)
	}
	if got := r.errors(imapErrTooLarge); got != 1 {
		t.Errorf("kms_imap_errors_total{kind=too_large} = %v after two passes, want 1 (set aside once)", got)
	}
	// A fresh fetcher (a restart) knows it from the keyword alone.
	r2 := newIMAPRig(t, srv, func(o *IMAPOptions) { o.MaxMessageBytes = 1000 })
	if n, err := r2.f.FetchOnce(context.Background()); err != nil || n != 0 || r2.errors(imapErrTooLarge) != 0 {
		t.Errorf("FetchOnce after a restart = %d, %v, with %v set aside; want 0, nil, 0 (the keyword marks it)", n, err, r2.errors(imapErrTooLarge))
	}
	if !strings.Contains(r.log.String(), "too large") {
		t.Error("the oversized message was not logged")
	}
}

func TestIMAPDoneFolder(t *testing.T) {
	for _, tc := range []struct {
		name string
		caps imap.CapSet
	}{{"MOVE", imapRev2}, {"COPY then delete", imapRev1}} {
		t.Run(tc.name, func(t *testing.T) {
			srv := newIMAPServer(t, tc.caps, true)
			msg := imapTestMsg(1, "From: alice@example.com\r\n")
			srv.appendMsg("INBOX", msg)
			r := newIMAPRig(t, srv, func(o *IMAPOptions) { o.DoneFolder = "KMS/Done" })
			if n, err := r.f.FetchOnce(context.Background()); err != nil || n != 1 {
				t.Fatalf("FetchOnce = %d, %v; want 1, nil", n, err)
			}
			if left := srv.list("INBOX"); len(left) != 0 {
				t.Errorf("%d messages left in INBOX, want 0", len(left))
			}
			done := srv.list("KMS/Done")
			if len(done) != 1 || !bytes.Equal(done[0].raw, msg) || done[0].has(imap.FlagDeleted) {
				t.Errorf("KMS/Done holds %d messages, want the fetched one, not deleted", len(done))
			}
		})
	}
}

// Run wakes on IDLE (the poll interval is an hour here), reconnects after
// the server drops every connection, and returns when ctx is cancelled.
func TestIMAPRunIdleReconnectCancel(t *testing.T) {
	srv := newIMAPServer(t, imapRev2, true)
	r := newIMAPRig(t, srv, func(o *IMAPOptions) { o.PollInterval = time.Hour })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- r.f.Run(ctx) }()

	// imapmemserver's SessionTracker.Idle does not send updates queued
	// before it registers (go-imap v2.0.0-beta.8, tracker.go), so a message
	// appended between the server's "+ idling" and that registration would
	// wait for the next update. Wait for the continuation, then give the
	// server's Idle goroutine a moment to register.
	eventually(t, "the fetcher to IDLE", func() bool { return strings.Contains(srv.wire.String(), "+ idling") })
	time.Sleep(200 * time.Millisecond)
	srv.appendMsg("INBOX", imapTestMsg(1, "From: alice@example.com\r\n"))
	eventually(t, "the first message to be stored", func() bool { return len(r.rows(t)) == 1 })

	srv.stop()
	srv.start()
	srv.appendMsg("INBOX", imapTestMsg(2, "From: alice@example.com\r\n"))
	eventually(t, "the message sent after the drop to be stored", func() bool { return len(r.rows(t)) == 2 })
	eventually(t, "INBOX to empty", func() bool { return len(srv.list("INBOX")) == 0 })
	if !strings.Contains(r.log.String(), "will reconnect") {
		t.Error("the dropped session was not logged")
	}

	stopRun(t, cancel, done)
}

// stopRun cancels a running fetcher and checks that Run returns nil soon.
func stopRun(t *testing.T, cancel context.CancelFunc, done <-chan error) {
	t.Helper()
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run returned %v after cancel, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after its context was cancelled")
	}
}

// Run against a server that is not there keeps retrying, and still stops
// when asked.
func TestIMAPRunStopsWhileDisconnected(t *testing.T) {
	srv := newIMAPServer(t, imapRev2, true)
	srv.stop()
	r := newIMAPRig(t, srv, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.f.Run(ctx) }()
	eventually(t, "a failed connection", func() bool { return r.errors(imapErrConnect) >= 1 })
	stopRun(t, cancel, done)
}

func TestEnvelopeSender(t *testing.T) {
	for _, tc := range []struct {
		header, want string
	}{
		{"Return-Path: <>\r\nFrom: alice@example.com\r\n", ""},
		{"Return-Path:<>\r\n", ""},
		{"Return-Path: <bob@example.org>\r\nFrom: alice@example.com\r\n", "bob@example.org"},
		{"Return-Path: <new@example.org>\r\nReturn-Path: <old@example.org>\r\n", "new@example.org"},
		{"Return-Path: <@relay.example.net:bob@example.org>\r\n", "bob@example.org"},
		{"Return-Path: not an address\r\nFrom: Alice <alice@example.com>\r\n", "alice@example.com"},
		{"From: Alice <alice@example.com>, bob@example.org\r\n", "alice@example.com"},
		{"From: =?utf-8?q?J=C3=B6rg?= <joerg@example.com>\r\n", "joerg@example.com"},
		{"From: nobody\r\n", ""},
		{"Subject: no sender at all\r\n", ""},
	} {
		raw := []byte(tc.header + "Subject: x\r\n\r\nbody\r\n")
		if got := envelopeSender(raw); got != tc.want {
			t.Errorf("envelopeSender(%q) = %q, want %q", tc.header, got, tc.want)
		}
	}
	if got := envelopeSender([]byte("no header block at all")); got != "" {
		t.Errorf("envelopeSender of a message without headers = %q, want \"\"", got)
	}
}

func TestNewIMAPFetcherChecksOptions(t *testing.T) {
	st, _ := openStore(t)
	good := IMAPOptions{Addr: "imap.example.com:993", Username: "kms", Password: []byte("pw"), Store: st}
	for _, tc := range []struct {
		name string
		mod  func(*IMAPOptions)
		want string
	}{
		{"no port", func(o *IMAPOptions) { o.Addr = "imap.example.com" }, "imap.addr"},
		{"no username", func(o *IMAPOptions) { o.Username = "" }, "imap.username"},
		{"no password", func(o *IMAPOptions) { o.Password = nil }, "imap.password_file"},
		{"done folder is the mailbox", func(o *IMAPOptions) { o.DoneFolder = "inbox" }, "done folder"},
	} {
		o := good
		tc.mod(&o)
		if _, err := NewIMAPFetcher(o); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: NewIMAPFetcher error %v, want one naming %q", tc.name, err, tc.want)
		}
	}
	for addr, want := range map[string]IMAPSecurity{"imap.example.com:993": IMAPImplicitTLS, "imap.example.com:143": IMAPStartTLS} {
		o := good
		o.Addr = addr
		f, err := NewIMAPFetcher(o)
		if err != nil {
			t.Fatal(err)
		}
		if f.security != want || f.opt.Mailbox != "INBOX" || f.tls.ServerName != "imap.example.com" {
			t.Errorf("%s: security %d, mailbox %q, TLS server name %q; want %d, INBOX, imap.example.com",
				addr, f.security, f.opt.Mailbox, f.tls.ServerName, want)
		}
	}
}

// A session cut between marking a stored message \Deleted and expunging it
// leaves the message marked in the mailbox, where every search skips it;
// the next session's EXPUNGE removes it, and fetches nothing twice.
func TestIMAPFinishesHalfDoneRemoval(t *testing.T) {
	srv := newIMAPServer(t, imapRev2, true)
	r := newIMAPRig(t, srv, nil)
	if _, err := srv.user.Append("INBOX", bytes.NewReader(imapTestMsg(1, "From: alice@example.com\r\n")),
		&imap.AppendOptions{Flags: []imap.Flag{imap.FlagDeleted}}); err != nil {
		t.Fatal(err)
	}
	srv.appendMsg("INBOX", imapTestMsg(2, "From: alice@example.com\r\n"))
	n, err := r.f.FetchOnce(context.Background())
	if err != nil || n != 1 {
		t.Fatalf("FetchOnce = %d, %v; want the one unmarked message", n, err)
	}
	if left := srv.list("INBOX"); len(left) != 0 {
		t.Fatalf("INBOX holds %d messages after the pass, want 0 (the marked one expunged)", len(left))
	}
	if rows := r.rows(t); len(rows) != 1 {
		t.Fatalf("%d messages stored, want 1: a message marked \\Deleted is not fetched", len(rows))
	}
}

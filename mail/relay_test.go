package mail

import (
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"
)

const relayedMsg = "From: kms@example.com\r\nTo: alice@example.com\r\nSubject: hi\r\n\r\n.a dot line\r\nbody\r\n"

func TestRelayDeliversOverSTARTTLSWithAuth(t *testing.T) {
	srv := startRelay(t, true)
	r, err := NewRelay(srv.relayConfig())
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Deliver(context.Background(), kmsAddr, []string{"alice@example.com"}, []byte(relayedMsg), "k"); err != nil {
		t.Fatal(err)
	}
	got := srv.received()
	if len(got) != 1 {
		t.Fatalf("relay received %d messages, want 1", len(got))
	}
	m := got[0]
	if !m.tls || m.user != relayUser || m.from != kmsAddr || strings.Join(m.to, ",") != "alice@example.com" {
		t.Errorf("relayed tls=%v user=%q from=%q to=%q; want TLS, %q, %q, alice@example.com", m.tls, m.user, m.from, m.to, relayUser, kmsAddr)
	}
	if string(m.data) != relayedMsg {
		t.Errorf("relayed data %q, want %q", m.data, relayedMsg)
	}
}

func TestRelayRequiresSTARTTLS(t *testing.T) {
	srv := startRelay(t, false) // offers no STARTTLS
	r, err := NewRelay(RelayConfig{Addr: srv.addr, Hostname: "kms.example.com", Username: relayUser, Password: []byte(relayPass)})
	if err != nil {
		t.Fatal(err)
	}
	err = r.Deliver(context.Background(), kmsAddr, []string{"alice@example.com"}, []byte(relayedMsg), "k")
	if !errors.Is(err, ErrNoStartTLS) || IsPermanent(err) {
		t.Fatalf("Deliver = %v; want ErrNoStartTLS, temporary", err)
	}
	if n := len(srv.received()); n != 0 || srv.auths() != 0 {
		t.Fatalf("relay received %d messages and %d AUTH; want none", n, srv.auths())
	}
}

func TestRelayRefusesUntrustedCertificate(t *testing.T) {
	srv := startRelay(t, true)
	cfg := srv.relayConfig()
	cfg.TLSConfig = nil // the system roots do not know the test certificate
	r, err := NewRelay(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = r.Deliver(context.Background(), kmsAddr, []string{"alice@example.com"}, []byte(relayedMsg), "k")
	if err == nil || IsPermanent(err) {
		t.Fatalf("Deliver = %v; want a temporary TLS error", err)
	}
	if srv.auths() != 0 || len(srv.received()) != 0 {
		t.Fatal("the password or the message went to an unverified server")
	}
}

func TestRelayPlaintextWhenAllowed(t *testing.T) {
	srv := startRelay(t, false)
	if _, err := NewRelay(RelayConfig{Addr: srv.addr, Hostname: "kms.example.com", AllowPlaintext: true,
		Username: relayUser, Password: []byte(relayPass)}); !errors.Is(err, ErrAuthInClear) {
		t.Fatalf("NewRelay with a password and no TLS = %v, want ErrAuthInClear", err)
	}
	r, err := NewRelay(RelayConfig{Addr: srv.addr, Hostname: "kms.example.com", AllowPlaintext: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Deliver(context.Background(), kmsAddr, []string{"alice@example.com"}, []byte(relayedMsg), "k"); err != nil {
		t.Fatal(err)
	}
	if got := srv.received(); len(got) != 1 || got[0].tls {
		t.Fatalf("received %+v, want one message in clear", got)
	}
}

func TestRelayWrongPasswordIsTemporary(t *testing.T) {
	srv := startRelay(t, true)
	cfg := srv.relayConfig()
	cfg.Password = []byte("wrong")
	r, err := NewRelay(cfg)
	if err != nil {
		t.Fatal(err)
	}
	err = r.Deliver(context.Background(), kmsAddr, []string{"alice@example.com"}, []byte(relayedMsg), "k")
	// A 535 is a 5xx, but it is the configuration's fault and would fail
	// every message alike: the queue waits for the operator.
	if err == nil || IsPermanent(err) || !strings.Contains(err.Error(), "relay.username") {
		t.Fatalf("Deliver = %v; want a temporary error naming relay.username", err)
	}
	if len(srv.received()) != 0 {
		t.Fatal("message relayed without authentication")
	}
}

func TestRelayClassifiesReplies(t *testing.T) {
	srv := startRelay(t, true)
	srv.reply("busy@example.com", 451)
	srv.reply("gone@example.com", 550)
	r, err := NewRelay(srv.relayConfig())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		rcpt      string
		permanent bool
	}{{"busy@example.com", false}, {"gone@example.com", true}} {
		err := r.Deliver(context.Background(), kmsAddr, []string{tc.rcpt}, []byte(relayedMsg), "k")
		if err == nil || IsPermanent(err) != tc.permanent {
			t.Errorf("%s: Deliver = %v; want an error with IsPermanent %v", tc.rcpt, err, tc.permanent)
		}
	}
	if n := len(srv.received()); n != 0 {
		t.Fatalf("relay accepted %d messages, want 0", n)
	}
}

// TestRelayRefusedSenderIsTemporary: a 5xx to MAIL FROM is the relay's
// policy about kms's own address, which would refuse every message alike:
// the message waits for the operator instead of being given up.
func TestRelayRefusedSenderIsTemporary(t *testing.T) {
	srv := startRelay(t, true)
	srv.mailCode = 550
	r, err := NewRelay(srv.relayConfig())
	if err != nil {
		t.Fatal(err)
	}
	err = r.Deliver(context.Background(), kmsAddr, []string{"alice@example.com"}, []byte(relayedMsg), "k")
	if err == nil || IsPermanent(err) || !strings.Contains(err.Error(), "550") {
		t.Fatalf("Deliver = %v; want the 550 to MAIL FROM, temporary", err)
	}
}

// TestRelayRefusedRecipientDeliversToNone: with MAIL, the RCPTs and DATA
// pipelined, the relay answers DATA with 354 when it accepted any
// recipient. A message one of whose recipients was refused goes to none
// of them (it is given up, or retried, whole): the client drops the
// session rather than send the data, and the next message takes a new one.
func TestRelayRefusedRecipientDeliversToNone(t *testing.T) {
	srv := startRelay(t, true)
	srv.reply("gone@example.com", 550)
	r, err := NewRelay(srv.relayConfig())
	if err != nil {
		t.Fatal(err)
	}
	err = r.Deliver(context.Background(), kmsAddr, []string{"alice@example.com", "gone@example.com"}, []byte(relayedMsg), "k")
	if !IsPermanent(err) || !strings.Contains(err.Error(), "gone@example.com") {
		t.Fatalf("Deliver = %v; want a permanent refusal naming gone@example.com", err)
	}
	if n := len(srv.received()); n != 0 {
		t.Fatalf("relay accepted %d messages after a refused recipient, want 0", n)
	}
	if err := r.Deliver(context.Background(), kmsAddr, []string{"alice@example.com"}, []byte(relayedMsg), "k"); err != nil {
		t.Fatalf("the next message: %v", err)
	}
	if got := srv.received(); len(got) != 1 || strings.Join(got[0].to, ",") != "alice@example.com" {
		t.Fatalf("relay received %+v; want the next message, to alice", got)
	}
}

func TestNewRelayChecksConfig(t *testing.T) {
	for _, cfg := range []RelayConfig{
		{Addr: "smtp.example.com", Hostname: "kms.example.com"}, // no port
		{Addr: "smtp.example.com:587"},                          // no EHLO name
	} {
		if _, err := NewRelay(cfg); err == nil {
			t.Errorf("NewRelay(%+v) accepted a bad configuration", cfg)
		}
	}
}

// TestRelayKeepsSessionOpen: consecutive messages share one SMTP session
// (and one TLS handshake and AUTH), also after the relay refused one of
// them; Close ends it.
func TestRelayKeepsSessionOpen(t *testing.T) {
	r := startRelay(t, true)
	r.reply("nobody@example.com", 550)
	relay, err := NewRelay(r.relayConfig())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for i, to := range []string{"a@example.com", "nobody@example.com", "b@example.com", "c@example.com"} {
		err := relay.Deliver(ctx, kmsAddr, []string{to}, []byte("Subject: x\r\n\r\nbody\r\n"), "")
		if (to == "nobody@example.com") != IsPermanent(err) {
			t.Fatalf("message %d to %s: %v", i, to, err)
		}
	}
	// go-smtp starts a new server session after STARTTLS, so one
	// connection is two sessions; AUTH happens once per connection.
	r.mu.Lock()
	sessions, auths := r.sessions, r.authSeen
	r.mu.Unlock()
	if sessions != 2 || auths != 1 || len(r.received()) != 3 {
		t.Fatalf("%d sessions, %d AUTHs, %d messages; want 2 (one connection), 1, 3", sessions, auths, len(r.received()))
	}
	relay.Close()
	if pc := relay.takeIdle(); pc != nil {
		t.Fatal("a session is still kept after Close")
	}
}

// TestRelayEndsSessionAfterMaxMessages: a kept session carries at most
// relayMaxMessages messages; the next message opens a new connection.
// (The limit was declared and never applied.)
func TestRelayEndsSessionAfterMaxMessages(t *testing.T) {
	r := startRelay(t, false)
	cfg := r.relayConfig()
	cfg.AllowPlaintext = true
	relay, err := NewRelay(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer relay.Close()
	ctx := context.Background()
	for i := range relayMaxMessages + 1 {
		if err := relay.Deliver(ctx, kmsAddr, []string{"a@example.com"}, []byte("Subject: x\r\n\r\nbody\r\n"), ""); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	r.mu.Lock()
	sessions := r.sessions
	r.mu.Unlock()
	if sessions != 2 {
		t.Fatalf("%d sessions for %d messages one after the other, want 2", sessions, relayMaxMessages+1)
	}
}

// TestRelayKeepsASessionPerWorker: the pool keeps an idle session for each
// of the outbox's default delivery workers (four per P), so that
// concurrent deliveries do not end their sessions and dial again. Four Ps
// make the workers (16) outnumber the old fixed pool of 8.
func TestRelayKeepsASessionPerWorker(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4))
	relay, err := NewRelay(RelayConfig{Addr: "127.0.0.1:25", Hostname: "kms.example.com", AllowPlaintext: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := cap(relay.idle); got < defaultWorkers() {
		t.Fatalf("relay keeps %d idle sessions for %d delivery workers", got, defaultWorkers())
	}
}

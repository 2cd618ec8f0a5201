package main

import (
	"errors"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/kmsmail/kms/mail/smtpclient"
)

// writeLog is a client connection that records each write, to see what
// the client sends together.
type writeLog struct {
	net.Conn
	mu     sync.Mutex
	writes []string
}

func (w *writeLog) Write(p []byte) (int, error) {
	w.mu.Lock()
	w.writes = append(w.writes, string(p))
	w.mu.Unlock()
	return w.Conn.Write(p)
}

// take returns the writes so far and forgets them.
func (w *writeLog) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	ws := w.writes
	w.writes = nil
	return ws
}

// dialLogged connects to addr with a writeLog around the connection.
func dialLogged(t *testing.T, addr string) *writeLog {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(time.Minute))
	t.Cleanup(func() { conn.Close() })
	return &writeLog{Conn: conn}
}

// TestSinkTakesPipelinedMail: the sink offers PIPELINING and CHUNKING,
// so a message from the daemon's relay (mail/smtpclient) to one recipient
// is one write: MAIL, RCPT and BDAT with the message. The sink keeps the
// message as it was; a refused recipient is a 550 that the sender treats
// as final, and the connection stays in step.
func TestSinkTakesPipelinedMail(t *testing.T) {
	s := testSink(t)
	w := dialLogged(t, s.addr)
	c, err := greet(w)
	if err != nil {
		t.Fatal(err)
	}
	for _, ext := range []string{"PIPELINING", "CHUNKING"} {
		if ok, _ := c.Extension(ext); !ok {
			t.Fatalf("the sink does not offer %s", ext)
		}
	}
	w.take()
	msg := "Subject: x\r\n\r\n.dot\r\nbody\r\n"
	if _, err := c.Send("user@example.com", []string{"load@example.com"}, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"MAIL FROM:<user@example.com> BODY=8BITMIME\r\nRCPT TO:<load@example.com>\r\nBDAT " + strconv.Itoa(len(msg)) + " LAST\r\n" + msg,
	}
	if got := w.take(); !slices.Equal(got, want) {
		t.Fatalf("wrote %q; want %q", got, want)
	}
	_, err = c.Send("user@example.com", []string{"stranger@example.com"}, []byte(msg))
	var r *smtpclient.Reply
	if !errors.As(err, &r) || r.Code != 550 || transient(err) {
		t.Fatalf("a refused recipient: %v; want a final 550", err)
	}
	if got := w.take(); len(got) != 1 {
		t.Fatalf("wrote %q after a refused recipient; want the commands only, no data", got)
	}
	// The sender closes the connection after a refusal; a client that
	// kept it would end the transaction first.
	if err := c.Reset(); err != nil {
		t.Fatalf("RSET after the refusal: %v", err)
	}
	if _, err := c.Send("user@example.com", []string{"load@example.com"}, []byte(msg)); err != nil {
		t.Fatalf("the next transaction: %v", err)
	}
	got := s.received()
	if len(got) != 2 || string(got[0].raw) != msg || string(got[1].raw) != msg {
		t.Fatalf("the sink kept %d messages: %+v; want two of %q", len(got), got, msg)
	}
}

// TestGreetingRefused: a 4xx greeting (a daemon shutting down) is a
// transient error, a 5xx one final, as the sender's redial needs.
func TestGreetingRefused(t *testing.T) {
	for _, tt := range []struct {
		greeting  string
		transient bool
	}{{"421 shutting down", true}, {"554 go away", false}} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			conn, err := ln.Accept()
			if err == nil {
				conn.Write([]byte(tt.greeting + "\r\n"))
				conn.Close()
			}
		}()
		conn, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		_, err = greet(conn)
		conn.Close()
		ln.Close()
		if err == nil || transient(err) != tt.transient {
			t.Errorf("greeting %q: %v, transient %v; want transient %v", tt.greeting, err, transient(err), tt.transient)
		}
	}
}

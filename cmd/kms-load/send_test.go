package main

import (
	"errors"
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/kmsmail/kms/mail/smtpclient"
)

// TestSinkTakesPipelinedMail: the sink offers PIPELINING and CHUNKING,
// so the daemon's relay (mail/smtpclient) sends a message to one
// recipient as one BDAT chunk, and to two with a pipelined DATA. The sink
// keeps each message as it was; a refused recipient is a 550 that the
// sender treats as final, and the session stays in step. (What goes in
// each write is mail/smtpclient's tests'.)
func TestSinkTakesPipelinedMail(t *testing.T) {
	s := testSink(t)
	s.allow("load2@example.com")
	conn, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Minute))
	c, err := greet(conn)
	if err != nil {
		t.Fatal(err)
	}
	for _, ext := range []string{"PIPELINING", "CHUNKING"} {
		if ok, _ := c.Extension(ext); !ok {
			t.Fatalf("the sink does not offer %s", ext)
		}
	}
	msg := "Subject: x\r\n\r\n.dot\r\nbody\r\n"
	if _, err := c.Send("user@example.com", []string{"load@example.com"}, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	_, err = c.Send("user@example.com", []string{"stranger@example.com"}, []byte(msg))
	var r *smtpclient.Reply
	if !errors.As(err, &r) || r.Code != 550 || transient(err) {
		t.Fatalf("a refused recipient: %v; want a final 550", err)
	}
	// The sender closes the connection after a refusal; a client that
	// kept it would end the transaction first.
	if err := c.Reset(); err != nil {
		t.Fatalf("RSET after the refusal: %v", err)
	}
	if _, err := c.Send("user@example.com", []string{"load@example.com", "load2@example.com"}, []byte(msg)); err != nil {
		t.Fatalf("to two recipients: %v", err)
	}
	got := s.received()
	if len(got) != 2 || string(got[0].raw) != msg || string(got[1].raw) != msg || len(got[1].rcpts) != 2 {
		t.Fatalf("the sink kept %d messages: %+v; want %q to load, then to load and load2", len(got), got, msg)
	}
}

// TestTransient: what the sender sends again. A 4xx (a daemon shutting
// down greets with 421) or a connection that failed is transient, as the
// redial after a crash needs; a 5xx is final. (How a refused greeting
// becomes a *smtpclient.Reply is mail/smtpclient's TestGreetingRefused.)
func TestTransient(t *testing.T) {
	for _, tt := range []struct {
		err       error
		transient bool
	}{
		{&smtpclient.Reply{Command: "greeting", Code: 421}, true},
		{fmt.Errorf("SMTP greeting and EHLO: %w", &smtpclient.Reply{Command: "greeting", Code: 554}), false},
		{&smtpclient.Reply{Command: "RCPT TO:<a@example.com>", Code: 450}, true},
		{&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, true},
		{smtpclient.ErrBroken, true},
	} {
		if got := transient(tt.err); got != tt.transient {
			t.Errorf("transient(%v) = %v; want %v", tt.err, got, tt.transient)
		}
	}
}

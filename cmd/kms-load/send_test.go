package main

import (
	"errors"
	"net"
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

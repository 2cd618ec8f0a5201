package main

import (
	"bytes"
	"errors"
	"net/smtp"
	"net/textproto"
	"sync"
	"testing"
	"time"
)

// TestSink: the sink takes mail for the run's users and the admin address
// only, and keeps each message as received, with its envelope recipients
// and arrival time, handing it to the handler too.
func TestSink(t *testing.T) {
	s, err := startSink("127.0.0.1:0", "Postmaster@example.com", &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	s.allow("load-1@example.com")
	var mu sync.Mutex
	var handled []*reply
	s.setHandler(func(r *reply) {
		mu.Lock()
		handled = append(handled, r)
		mu.Unlock()
	})

	c, err := smtp.Dial(s.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Mail("kms@example.com"); err != nil {
		t.Fatal(err)
	}
	var perr *textproto.Error
	if err := c.Rcpt("stranger@example.com"); !errors.As(err, &perr) || perr.Code != 550 {
		t.Fatalf("RCPT of a stranger: %v, want 550", err)
	}
	for _, rcpt := range []string{"load-1@example.com", "postmaster@example.com"} {
		if err := c.Rcpt(rcpt); err != nil {
			t.Fatalf("RCPT %s: %v", rcpt, err)
		}
	}
	before := time.Now()
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	msg := "To: load-1@example.com\r\nIn-Reply-To: <x@y>\r\n\r\n.leading dot\r\nbody\r\n"
	if _, err := w.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	c.Quit()

	got := s.received()
	if len(got) != 1 {
		t.Fatalf("%d messages kept, want 1", len(got))
	}
	m := got[0]
	if string(m.raw) != msg || len(m.rcpts) != 2 || m.at.Before(before) || m.where == "" {
		t.Fatalf("kept %q to %v at %v (%s); want the message as sent, CRLF and dot-unstuffed, to both", m.raw, m.rcpts, m.at, m.where)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(handled) != 1 || handled[0] != m {
		t.Fatalf("handler saw %d messages, want the one kept", len(handled))
	}
	if n := s.adminMail(); n != 1 {
		t.Fatalf("%d messages for the admin address, want 1", n)
	}
}

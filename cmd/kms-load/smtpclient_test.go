package main

import (
	"errors"
	"net"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
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

// TestClientPipelining: against the sink, which offers PIPELINING, a
// transaction is two writes: MAIL, RCPT and DATA together, then the
// message, dot-stuffed, with the end-of-data line. The sink keeps the
// message as it was; a refused recipient is a 550 that the sender treats
// as final, and the connection stays in step.
func TestClientPipelining(t *testing.T) {
	s := testSink(t)
	w := dialLogged(t, s.addr)
	c, err := newSMTPClient(w, "kms-load.localhost")
	if err != nil {
		t.Fatal(err)
	}
	if !c.pipelining || c.mailParams != " BODY=8BITMIME" {
		t.Fatalf("pipelining %v, MAIL parameters %q after EHLO %v; want PIPELINING and BODY=8BITMIME", c.pipelining, c.mailParams, c.ext)
	}
	w.take()
	msg := "Subject: x\r\n\r\n.dot\r\nbody\r\n"
	if err := c.send("user@example.com", "load@example.com", []byte(msg)); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"MAIL FROM:<user@example.com> BODY=8BITMIME\r\nRCPT TO:<load@example.com>\r\nDATA\r\n",
		"Subject: x\r\n\r\n..dot\r\nbody\r\n.\r\n",
	}
	if got := w.take(); !slices.Equal(got, want) {
		t.Fatalf("wrote %q; want %q", got, want)
	}
	err = c.send("user@example.com", "stranger@example.com", []byte(msg))
	var te *textproto.Error
	if !errors.As(err, &te) || te.Code != 550 || transient(err) {
		t.Fatalf("a refused recipient: %v; want a final 550", err)
	}
	if got := w.take(); len(got) != 1 {
		t.Fatalf("wrote %q after a refused recipient; want the commands only, no data", got)
	}
	// The sender closes the connection after a refusal; a client that
	// kept it would end the transaction first.
	if _, err := c.command(250, "RSET"); err != nil {
		t.Fatalf("RSET after the refusal: %v", err)
	}
	if err := c.send("user@example.com", "load@example.com", []byte(msg)); err != nil {
		t.Fatalf("the next transaction: %v", err)
	}
	got := s.received()
	if len(got) != 2 || string(got[0].raw) != msg || string(got[1].raw) != msg {
		t.Fatalf("the sink kept %d messages: %+v; want two of %q", len(got), got, msg)
	}
}

// fakeServer is a scripted SMTP server for one connection: it answers
// EHLO with ehlo (a whole reply, CRLF-ended), DATA with 354 and the end
// of the data with 250, and any other command with answers[verb] or 250.
// It records the commands and the data it got.
type fakeServer struct {
	addr    string
	ehlo    string
	answers map[string]string

	mu    sync.Mutex
	lines []string
	data  []string
}

func startFake(t *testing.T, ehlo string, answers map[string]string) *fakeServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeServer{addr: ln.Addr().String(), ehlo: ehlo, answers: answers}
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn, err := ln.Accept()
		ln.Close()
		if err != nil {
			return
		}
		defer conn.Close()
		f.serve(textproto.NewConn(conn))
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	return f
}

func (f *fakeServer) serve(c *textproto.Conn) {
	c.PrintfLine("220 fake")
	for {
		line, err := c.ReadLine()
		if err != nil {
			return
		}
		f.mu.Lock()
		f.lines = append(f.lines, line)
		f.mu.Unlock()
		verb, _, _ := strings.Cut(line, " ")
		reply, ok := f.answers[verb]
		switch {
		case ok:
			c.PrintfLine("%s", reply)
		case verb == "EHLO":
			c.W.WriteString(f.ehlo)
			c.W.Flush()
		case verb == "DATA":
			c.PrintfLine("354 go on")
			b, err := c.ReadDotBytes()
			if err != nil {
				return
			}
			f.mu.Lock()
			f.data = append(f.data, string(b))
			f.mu.Unlock()
			c.PrintfLine("250 kept")
		default:
			c.PrintfLine("250 ok")
		}
	}
}

func (f *fakeServer) got() (lines, data []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.lines), slices.Clone(f.data)
}

// TestClientOneAtATime: without PIPELINING in the EHLO reply the client
// sends one command a write, each after the reply to the one before; a
// server that refuses EHLO gets HELO, and no MAIL parameters.
func TestClientOneAtATime(t *testing.T) {
	for _, tt := range []struct {
		name    string
		ehlo    string
		answers map[string]string
		hello   []string // the greeting commands
		mail    string
	}{
		{"EHLO without PIPELINING", "250-fake\r\n250-8BITMIME\r\n250 SIZE 100000\r\n", nil,
			[]string{"EHLO kms-load.localhost"}, "MAIL FROM:<user@example.com> BODY=8BITMIME"},
		{"EHLO refused", "", map[string]string{"EHLO": "502 no EHLO here"},
			[]string{"EHLO kms-load.localhost", "HELO kms-load.localhost"}, "MAIL FROM:<user@example.com>"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t, tt.ehlo, tt.answers)
			w := dialLogged(t, f.addr)
			c, err := newSMTPClient(w, "kms-load.localhost")
			if err != nil {
				t.Fatal(err)
			}
			if c.pipelining {
				t.Fatal("pipelining without PIPELINING offered")
			}
			w.take()
			if err := c.send("user@example.com", "load@example.com", []byte(".a\nb\r\n")); err != nil {
				t.Fatal(err)
			}
			want := []string{tt.mail + "\r\n", "RCPT TO:<load@example.com>\r\n", "DATA\r\n", "..a\r\nb\r\n.\r\n"}
			if got := w.take(); !slices.Equal(got, want) {
				t.Fatalf("wrote %q; want %q", got, want)
			}
			c.Close()
			lines, data := f.got()
			if want := append(tt.hello, tt.mail, "RCPT TO:<load@example.com>", "DATA"); !slices.Equal(lines, want) {
				t.Errorf("the server got %q; want %q", lines, want)
			}
			if len(data) != 1 || data[0] != ".a\nb\n" { // ReadDotBytes turns CRLF into LF
				t.Errorf("the server got the data %q; want .a, b", data)
			}
		})
	}
}

// TestClientPipelinedRefusals: the replies to pipelined commands are all
// read, and the first refusal is what send returns: a 4xx is transient
// (sent again by the sender), a 5xx final. A server that answers DATA
// with 354 although it refused the recipient gets an empty message, so
// that the connection stays in step.
func TestClientPipelinedRefusals(t *testing.T) {
	const ehlo = "250-fake\r\n250 PIPELINING\r\n"
	for _, tt := range []struct {
		name      string
		answers   map[string]string
		code      int
		transient bool
		data      []string // what the server got as data
	}{
		{"MAIL 451", map[string]string{"MAIL": "451 try later", "DATA": "503 no MAIL"}, 451, true, nil},
		{"RCPT 550", map[string]string{"RCPT": "550 no such user", "DATA": "554 no valid recipients"}, 550, false, nil},
		{"RCPT 450 then 354", map[string]string{"RCPT": "450 busy"}, 450, true, []string{""}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t, ehlo, tt.answers)
			w := dialLogged(t, f.addr)
			c, err := newSMTPClient(w, "kms-load.localhost")
			if err != nil {
				t.Fatal(err)
			}
			err = c.send("user@example.com", "load@example.com", []byte("body\r\n"))
			var te *textproto.Error
			if !errors.As(err, &te) || te.Code != tt.code || transient(err) != tt.transient {
				t.Fatalf("send: %v; want %d (transient %v)", err, tt.code, tt.transient)
			}
			// The connection is in step: the next command gets its own reply.
			if _, err := c.command(250, "NOOP"); err != nil {
				t.Fatalf("NOOP after the refusal: %v", err)
			}
			c.Close()
			if _, data := f.got(); !slices.Equal(data, tt.data) {
				t.Errorf("the server got the data %q; want %q", data, tt.data)
			}
		})
	}
}

// TestAppendData: the message on the wire, as net/smtp's DotWriter sends it.
func TestAppendData(t *testing.T) {
	for _, tt := range []struct{ msg, want string }{
		{"", ".\r\n"},
		{"a\r\nb\r\n", "a\r\nb\r\n.\r\n"},
		{"a\nb", "a\r\nb\r\n.\r\n"},
		{".\r\n.a\r\nb.\r\n\r\n..", "..\r\n..a\r\nb.\r\n\r\n...\r\n.\r\n"},
	} {
		if got := appendData([]byte("x"), []byte(tt.msg)); string(got) != "x"+tt.want {
			t.Errorf("appendData(%q) = %q; want %q", tt.msg, got[1:], tt.want)
		}
	}
}

// TestClientGreetingRefused: a 4xx greeting (a daemon shutting down) is a
// transient error, a 5xx one final, as the sender's redial needs.
func TestClientGreetingRefused(t *testing.T) {
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
		_, err = newSMTPClient(conn, "kms-load.localhost")
		conn.Close()
		ln.Close()
		if err == nil || transient(err) != tt.transient {
			t.Errorf("greeting %q: %v, transient %v; want transient %v", tt.greeting, err, transient(err), tt.transient)
		}
	}
}

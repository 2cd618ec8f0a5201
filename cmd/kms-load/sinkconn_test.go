package main

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"net/textproto"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"github.com/kmsmail/kms/mail/smtpclient"
)

// TestReadData: the sink's DATA reader undoes dot-stuffing, ends only at
// CRLF "." CRLF, keeps a bare LF as data, refuses an oversized line or
// message after reading through its end, and gives the same result
// however the bytes arrive: all at once, or a byte a read through the
// smallest buffer bufio has (16 bytes, so that long lines come in pieces).
func TestReadData(t *testing.T) {
	const maxBytes, maxLine = 200, 40
	long := strings.Repeat("x", maxLine-2) // a line of exactly maxLine with its CRLF
	for _, tt := range []struct {
		name, in string
		want     string // the message
		err      error  // or the error
		rest     string // what is left to read after the data
	}{
		{"plain", "a\r\nb\r\n.\r\nNOOP\r\n", "a\r\nb\r\n", nil, "NOOP\r\n"},
		{"empty", ".\r\nQUIT\r\n", "", nil, "QUIT\r\n"},
		{"dot-stuffed lines", "..\r\n..leading\r\n...\r\n.\r\n", ".\r\n.leading\r\n..\r\n", nil, ""},
		{"first line dot-stuffed", "..x\r\n.\r\n", ".x\r\n", nil, ""},
		{"a dot inside a line", "a.b\r\n a .\r\n.\r\n", "a.b\r\n a .\r\n", nil, ""},
		{"a dot line not the end", ".x\r\n.\r\n", "x\r\n", nil, ""},
		{"dot CR LF inside a line", "a.\r\n.\r\n", "a.\r\n", nil, ""},
		{"bare LF is data", "a\n.\r\nb\n..c\r\n.\r\n", "a\n.\r\nb\n..c\r\n", nil, ""},
		{"bare CR is data", "a\r.\r\n.\r\n", "a\r.\r\n", nil, ""},
		{"dot LF is no end", ".\n.\r\n.\r\n", "\n.\r\n", nil, ""},
		{"CR LF across pieces", strings.Repeat("x", 15) + "\r\n.\r\n", strings.Repeat("x", 15) + "\r\n", nil, ""},
		{"a line longer than the buffer", strings.Repeat("x", 30) + "\r\n..\r\n.\r\n", strings.Repeat("x", 30) + "\r\n.\r\n", nil, ""},
		{"line of the limit", long + "\r\n.\r\n", long + "\r\n", nil, ""},
		{"line over the limit", "a\r\n" + long + "y\r\nb\r\n.\r\nNOOP\r\n", "", errLineTooLong, "NOOP\r\n"},
		{"line over the limit by bare LFs", strings.Repeat("ab\n", maxLine/3+1) + "\r\n.\r\n", "", errLineTooLong, ""},
		{"message of the limit", strings.Repeat(long+"\r\n", 5) + ".\r\n", strings.Repeat(long+"\r\n", 5), nil, ""},
		{"message over the limit", strings.Repeat(long+"\r\n", 5) + "z\r\n.\r\nRSET\r\n", "", errMessageTooLarge, "RSET\r\n"},
		{"connection closed", "a\r\nb", "", io.ErrUnexpectedEOF, ""},
		{"connection closed before the end line", "a\r\n.", "", io.ErrUnexpectedEOF, ""},
	} {
		for _, how := range []struct {
			name string
			r    func(string) *bufio.Reader
		}{
			{"at once", func(s string) *bufio.Reader { return bufio.NewReaderSize(strings.NewReader(s), 4096) }},
			{"a byte a read", func(s string) *bufio.Reader {
				return bufio.NewReaderSize(iotest.OneByteReader(strings.NewReader(s)), 16)
			}},
		} {
			t.Run(tt.name+"/"+how.name, func(t *testing.T) {
				r := how.r(tt.in)
				got, err := readData(r, maxBytes, maxLine)
				if !errors.Is(err, tt.err) || string(got) != tt.want {
					t.Fatalf("readData(%q) = %q, %v; want %q, %v", tt.in, got, err, tt.want, tt.err)
				}
				if tt.err == io.ErrUnexpectedEOF {
					return
				}
				if rest, _ := io.ReadAll(r); string(rest) != tt.rest {
					t.Fatalf("left %q to read after the data; want %q", rest, tt.rest)
				}
			})
		}
	}
}

// TestReadDataRoundTrip: what smtpclient.AppendData puts on the wire,
// readData takes back as it was, whatever lines start with a dot.
func TestReadDataRoundTrip(t *testing.T) {
	msg := "From: a@b\r\n\r\n.\r\n..\r\n.x\r\nbody\r\n.\r\n"
	r := bufio.NewReader(bytes.NewReader(smtpclient.AppendData(nil, []byte(msg))))
	got, err := readData(r, sinkMaxMessage, sinkMaxLine)
	if err != nil || string(got) != msg {
		t.Fatalf("readData(AppendData(%q)) = %q, %v", msg, got, err)
	}
}

// testSink starts a sink on a free loopback port for the test, accepting
// mail for load@example.com.
func testSink(t *testing.T) *sink {
	t.Helper()
	s, err := startSink("127.0.0.1:0", "postmaster@example.com", &syncBuffer{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.close)
	s.allow("load@example.com")
	return s
}

// sinkSession opens a raw SMTP session with a sink that accepts
// load@example.com, and returns the connection and a reader of replies
// past the greeting.
func sinkSession(t *testing.T) (*sink, net.Conn, *textproto.Reader) {
	t.Helper()
	s := testSink(t)
	conn, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	conn.SetDeadline(time.Now().Add(time.Minute))
	text := textproto.NewReader(bufio.NewReader(conn))
	if _, _, err := text.ReadResponse(220); err != nil {
		t.Fatalf("greeting: %v", err)
	}
	return s, conn, text
}

// sinkStep is a command line and the reply code the sink must give it.
type sinkStep struct {
	cmd  string
	code int
}

// pipeline sends every step's line in one write, as a pipelining client
// does, checks the code of each reply and returns their texts.
func pipeline(t *testing.T, conn net.Conn, text *textproto.Reader, steps []sinkStep) []string {
	t.Helper()
	var all strings.Builder
	for _, st := range steps {
		all.WriteString(st.cmd + "\r\n")
	}
	if _, err := io.WriteString(conn, all.String()); err != nil {
		t.Fatal(err)
	}
	msgs := make([]string, len(steps))
	for i, st := range steps {
		code, msg, err := text.ReadResponse(0)
		if err != nil || code != st.code {
			t.Fatalf("%q: %d %q, %v; want %d", st.cmd, code, msg, err, st.code)
		}
		msgs[i] = msg
	}
	return msgs
}

// TestSinkCommands: the sink's answers to each command, in and out of
// order, all written in one go as a pipelining client does; the message
// of the one transaction that gets through is kept as sent.
func TestSinkCommands(t *testing.T) {
	s, conn, text := sinkSession(t)
	script := []sinkStep{
		{"MAIL FROM:<kms@example.com>", 503}, // before EHLO
		{"EHLO", 501},
		{"EHLO relay.example.com", 250},
		{"RCPT TO:<load@example.com>", 503}, // before MAIL
		{"DATA", 503},
		{"MAIL FROM:kms@example.com", 501},
		{"mail from: <kms@example.com> BODY=8BITMIME", 250},
		{"MAIL FROM:<kms@example.com>", 503}, // nested
		{"RCPT TO:<stranger@example.com>", 550},
		{"DATA", 554}, // no valid recipient
		{"RCPT TO:<@relay.example.com:LOAD@example.com>", 250},
		{"RCPT TO:<>", 501},
		{"NOOP", 250},
		{"VRFY load@example.com", 502},
		{"STARTTLS", 502},
		{"FROB", 500},
		{"DATA now", 501},
		{"DATA", 354},
		{"..hello\r\n.", 250},
		{"RSET", 250},
		{"RCPT TO:<load@example.com>", 503}, // the transaction ended with DATA
		{"MAIL FROM:<>", 250},
		{"RSET", 250},
		{"RCPT TO:<load@example.com>", 503}, // and with RSET
		{"QUIT", 221},
	}
	if ehlo := pipeline(t, conn, text, script)[2]; !strings.Contains(ehlo, "\nPIPELINING") {
		t.Errorf("EHLO reply %q does not offer PIPELINING", ehlo)
	}
	if _, err := text.ReadLine(); err != io.EOF {
		t.Errorf("after QUIT: %v, want the connection closed", err)
	}
	got := s.received()
	if len(got) != 1 || string(got[0].raw) != ".hello\r\n" || len(got[0].rcpts) != 1 || got[0].rcpts[0] != "LOAD@example.com" {
		t.Fatalf("kept %d messages, the first %+v; want .hello to LOAD@example.com", len(got), got)
	}
}

// TestSinkChunking: BDAT chunks make one message, kept at the LAST one;
// a refused chunk is read and dropped, so the commands after it are
// commands; a size that is not a number ends the session.
func TestSinkChunking(t *testing.T) {
	s, conn, text := sinkSession(t)
	// A BDAT step carries its chunk, which the CRLF after every step ends.
	script := []sinkStep{
		{"EHLO relay.example.com", 250},
		{"BDAT 6 LAST\r\nNOOP", 503}, // no MAIL: the chunk is skipped, not run
		{"MAIL FROM:<kms@example.com>", 250},
		{"RCPT TO:<stranger@example.com>", 550},
		{"BDAT 6\r\nRSET", 554}, // no valid recipient
		{"MAIL FROM:<kms@example.com>", 250},
		{"RCPT TO:<load@example.com>", 250},
		{"BDAT 7\r\nhello", 250},
		{"BDAT 0", 250},
		{"BDAT 8 last\r\n.world", 250},
		{"RCPT TO:<load@example.com>", 503}, // the transaction ended with LAST
		{"BDAT 1x", 501},
	}
	if ehlo := pipeline(t, conn, text, script)[0]; !strings.Contains(ehlo, "\nCHUNKING") {
		t.Errorf("EHLO reply %q does not offer CHUNKING", ehlo)
	}
	if _, err := text.ReadLine(); err != io.EOF {
		t.Errorf("after a BDAT without a size: %v, want the connection closed", err)
	}
	got := s.received()
	if len(got) != 1 || string(got[0].raw) != "hello\r\n.world\r\n" {
		t.Fatalf("kept %d messages: %+v; want one, hello .world", len(got), got)
	}
}

// TestSinkLongCommand: a command line over the limit ends the session
// with a 500, as go-smtp's server did.
func TestSinkLongCommand(t *testing.T) {
	_, conn, text := sinkSession(t)
	if _, err := io.WriteString(conn, "NOOP "+strings.Repeat("x", sinkMaxLine)+"\r\n"); err != nil {
		t.Fatal(err)
	}
	if code, msg, err := text.ReadResponse(500); err != nil {
		t.Fatalf("a long line: %d %q, %v; want 500", code, msg, err)
	}
	if _, err := text.ReadLine(); err != io.EOF {
		t.Errorf("after a long line: %v, want the connection closed", err)
	}
}

// TestSinkGoSMTPClient: go-smtp's client, an independent one without
// pipelining (the daemon's relay used it before mail/smtpclient), delivers
// to the sink as a relay client does: several messages a session, a
// refused recipient followed by RSET, NOOP, QUIT; a message with a line
// over the limit is refused with a 5xx and the session goes on.
func TestSinkGoSMTPClient(t *testing.T) {
	s := testSink(t)
	conn, err := net.Dial("tcp", s.addr)
	if err != nil {
		t.Fatal(err)
	}
	c := gosmtp.NewClient(conn)
	defer c.Close()
	c.CommandTimeout, c.SubmissionTimeout = time.Minute, time.Minute
	if err := c.Hello("relay.example.com"); err != nil {
		t.Fatalf("EHLO: %v", err)
	}
	if ok, _ := c.Extension("PIPELINING"); !ok {
		t.Error("no PIPELINING offered")
	}
	if size, ok := c.MaxMessageSize(); !ok || size != sinkMaxMessage {
		t.Errorf("SIZE %d, %v; want %d", size, ok, sinkMaxMessage)
	}
	send := func(to, msg string) error {
		if err := c.Mail("kms@example.com", nil); err != nil {
			return err
		}
		if err := c.Rcpt(to, nil); err != nil {
			return err
		}
		w, err := c.Data()
		if err != nil {
			return err
		}
		if _, err := io.WriteString(w, msg); err != nil {
			return err
		}
		return w.Close()
	}
	msgs := []string{"Subject: one\r\n\r\n.dot\r\n", "Subject: two\r\n\r\nbody\r\n.\r\n..\r\n"}
	for _, m := range msgs {
		if err := send("load@example.com", m); err != nil {
			t.Fatalf("sending %q: %v", m, err)
		}
	}
	var se *gosmtp.SMTPError
	if err := send("stranger@example.com", "x\r\n"); !errors.As(err, &se) || se.Code != 550 {
		t.Fatalf("a stranger: %v, want 550", err)
	}
	if err := c.Reset(); err != nil {
		t.Fatalf("RSET: %v", err)
	}
	if err := send("load@example.com", strings.Repeat("x", sinkMaxLine)+"\r\n"); !errors.As(err, &se) || se.Code != 554 {
		t.Fatalf("a long line: %v, want 554", err)
	}
	if err := c.Noop(); err != nil {
		t.Fatalf("NOOP after a message refused: %v", err)
	}
	if err := send("load@example.com", msgs[0]); err != nil {
		t.Fatalf("sending after a message refused: %v", err)
	}
	if err := c.Quit(); err != nil {
		t.Fatalf("QUIT: %v", err)
	}
	got := s.received()
	if len(got) != 3 || string(got[0].raw) != msgs[0] || string(got[1].raw) != msgs[1] || string(got[2].raw) != msgs[0] {
		t.Fatalf("kept %d messages: %+v; want %q, %q, %q", len(got), got, msgs[0], msgs[1], msgs[0])
	}
}

// TestSinkClose: close ends the sessions a relay keeps open, and the sink
// takes no connection after it.
func TestSinkClose(t *testing.T) {
	s, conn, text := sinkSession(t)
	done := make(chan struct{})
	go func() {
		s.close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("close waits for an open session")
	}
	if _, err := text.ReadLine(); err == nil {
		t.Error("the session is still open after close")
	}
	conn.Close()
	if c, err := net.Dial("tcp", s.addr); err == nil {
		c.Close()
		t.Error("the sink still accepts connections after close")
	}
}

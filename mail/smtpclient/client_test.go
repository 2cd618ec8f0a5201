package smtpclient

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
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

// fakeServer is a scripted SMTP server for one connection: it answers
// EHLO with ehlo (a whole reply, CRLF-ended), DATA with 354 and the end
// of the data with 250, and any other command with the next of
// answers[verb], or 250. It records the commands and the data it got.
type fakeServer struct {
	addr    string
	ehlo    string
	answers map[string][]string

	mu    sync.Mutex
	lines []string
	data  []string
}

func startFake(t *testing.T, ehlo string, answers map[string][]string) *fakeServer {
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
		verb, _, _ := strings.Cut(line, " ")
		var reply string
		if a := f.answers[verb]; len(a) > 0 {
			reply, f.answers[verb] = a[0], a[1:]
		}
		f.mu.Unlock()
		switch {
		case verb == "BDAT":
			// The chunk follows the command whatever the reply.
			var n int
			fmt.Sscanf(line, "BDAT %d", &n)
			b := make([]byte, n)
			if _, err := io.ReadFull(c.R, b); err != nil {
				return
			}
			if reply != "" {
				c.PrintfLine("%s", reply)
				continue
			}
			f.mu.Lock()
			f.data = append(f.data, string(b))
			f.mu.Unlock()
			c.PrintfLine("250 2.0.0 kept")
		case reply != "":
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
			c.PrintfLine("250 2.0.0 kept")
		case verb == "QUIT":
			c.PrintfLine("221 bye")
			return
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

// dial connects to f with a writeLog around the connection, reads the
// greeting and says EHLO.
func dial(t *testing.T, f *fakeServer) (*Client, *writeLog) {
	t.Helper()
	conn, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	w := &writeLog{Conn: conn}
	c, err := New(w, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Hello("kms.example.com"); err != nil {
		t.Fatal(err)
	}
	w.take()
	return c, w
}

const pipeliningEHLO = "250-fake\r\n250-8BITMIME\r\n250-SIZE 100000\r\n250 PIPELINING\r\n"

// TestSendPipelined: with PIPELINING offered, a transaction is two writes:
// MAIL, every RCPT and DATA together, then the message, dot-stuffed, with
// the end-of-data line. The server gets the message as it was.
func TestSendPipelined(t *testing.T) {
	f := startFake(t, pipeliningEHLO, nil)
	c, w := dial(t, f)
	if ok, size := c.Extension("size"); !ok || size != "100000" {
		t.Fatalf("Extension(size) = %v, %q; want the EHLO's SIZE 100000", ok, size)
	}
	msg := "Subject: x\r\n\r\n.dot\nbody\r\n"
	sent, err := c.Send("kms@example.com", []string{"a@example.com", "b@example.com"}, []byte(msg))
	if err != nil || !sent {
		t.Fatalf("Send = %v, %v; want the data sent and accepted", sent, err)
	}
	want := []string{
		"MAIL FROM:<kms@example.com> BODY=8BITMIME\r\nRCPT TO:<a@example.com>\r\nRCPT TO:<b@example.com>\r\nDATA\r\n",
		"Subject: x\r\n\r\n..dot\r\nbody\r\n.\r\n",
	}
	if got := w.take(); !slices.Equal(got, want) {
		t.Fatalf("wrote %q; want %q", got, want)
	}
	if err := c.Quit(); err != nil {
		t.Fatal(err)
	}
	_, data := f.got()
	if want := []string{"Subject: x\n\n.dot\nbody\n"}; !slices.Equal(data, want) { // ReadDotBytes gives LF
		t.Errorf("the server got %q; want %q", data, want)
	}
}

const chunkingEHLO = "250-fake\r\n250-PIPELINING\r\n250 CHUNKING\r\n"

// TestSendChunked: with PIPELINING and CHUNKING offered, a message to one
// recipient is one write: MAIL, RCPT, BDAT with its size, and the message
// with CRLF line ends and no dot-stuffing. To two recipients it goes with
// DATA, so that a refused one stops it for both (TestSendRefusals).
func TestSendChunked(t *testing.T) {
	f := startFake(t, chunkingEHLO, nil)
	c, w := dial(t, f)
	msg := "Subject: x\r\n\r\n.dot\nlast line"
	const onWire = "Subject: x\r\n\r\n.dot\r\nlast line\r\n"
	sent, err := c.Send("kms@example.com", []string{"a@example.com"}, []byte(msg))
	if err != nil || !sent {
		t.Fatalf("Send = %v, %v; want the chunk sent and accepted", sent, err)
	}
	want := fmt.Sprintf("MAIL FROM:<kms@example.com>\r\nRCPT TO:<a@example.com>\r\nBDAT %d LAST\r\n%s", len(onWire), onWire)
	if got := w.take(); !slices.Equal(got, []string{want}) {
		t.Fatalf("wrote %q; want %q", got, want)
	}
	if _, err := c.Send("kms@example.com", []string{"a@example.com", "b@example.com"}, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	if got := w.take(); len(got) != 2 || !strings.HasSuffix(got[0], "DATA\r\n") {
		t.Fatalf("to two recipients wrote %q; want the envelope with DATA, then the data", got)
	}
	c.Quit()
	if _, data := f.got(); len(data) != 2 || data[0] != onWire || data[1] != strings.ReplaceAll(onWire, "\r\n", "\n") {
		t.Fatalf("the server got %q; want the message twice", data)
	}
}

// TestSendChunkedRefusals: the three replies are all read, the first
// refusal is the error, and the session stays in step (the server drops
// the chunk of a refused transaction). dataSent is false when the refusal
// came before the chunk, so the server does not have the message.
func TestSendChunkedRefusals(t *testing.T) {
	for _, tt := range []struct {
		name     string
		answers  map[string][]string
		command  string
		code     int
		dataSent bool
	}{
		{"RCPT 550", map[string][]string{"RCPT": {"550 5.1.1 no such user"}, "BDAT": {"503 5.5.1 no valid recipients"}}, "RCPT TO:<a@example.com>", 550, false},
		{"MAIL 451", map[string][]string{"MAIL": {"451 4.3.0 later"}, "RCPT": {"503 5.5.1 MAIL first"}, "BDAT": {"503 5.5.1 MAIL first"}}, "MAIL FROM:<kms@example.com>", 451, false},
		{"BDAT 552", map[string][]string{"BDAT": {"552 5.3.4 too big"}}, "BDAT 6 LAST", 552, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t, chunkingEHLO, tt.answers)
			c, _ := dial(t, f)
			sent, err := c.Send("kms@example.com", []string{"a@example.com"}, []byte("body\r\n"))
			var r *Reply
			if !errors.As(err, &r) || r.Command != tt.command || r.Code != tt.code || sent != tt.dataSent {
				t.Fatalf("Send = %v, %v; want %s refused with %d, data sent %v", sent, err, tt.command, tt.code, tt.dataSent)
			}
			if err := c.Reset(); err != nil {
				t.Fatalf("RSET after the refusal: %v", err)
			}
			if _, data := f.got(); len(data) != 0 {
				t.Fatalf("the server kept %q after a refusal", data)
			}
		})
	}
}

// TestSendOneAtATime: without PIPELINING in the EHLO reply the client
// sends one command a write, each after the reply to the one before; a
// server that refuses EHLO gets HELO, and no MAIL parameters.
func TestSendOneAtATime(t *testing.T) {
	for _, tt := range []struct {
		name    string
		ehlo    string
		answers map[string][]string
		hello   []string // the greeting commands
		mail    string
	}{
		{"EHLO without PIPELINING", "250-fake\r\n250-8BITMIME\r\n250 SIZE 100000\r\n", nil,
			[]string{"EHLO kms.example.com"}, "MAIL FROM:<kms@example.com> BODY=8BITMIME"},
		{"EHLO refused", "", map[string][]string{"EHLO": {"502 no EHLO here"}},
			[]string{"EHLO kms.example.com", "HELO kms.example.com"}, "MAIL FROM:<kms@example.com>"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := startFake(t, tt.ehlo, tt.answers)
			c, w := dial(t, f)
			if _, err := c.Send("kms@example.com", []string{"a@example.com"}, []byte(".a\nb\r\n")); err != nil {
				t.Fatal(err)
			}
			want := []string{tt.mail + "\r\n", "RCPT TO:<a@example.com>\r\n", "DATA\r\n", "..a\r\nb\r\n.\r\n"}
			if got := w.take(); !slices.Equal(got, want) {
				t.Fatalf("wrote %q; want %q", got, want)
			}
			c.Close()
			lines, data := f.got()
			if want := append(tt.hello, tt.mail, "RCPT TO:<a@example.com>", "DATA"); !slices.Equal(lines, want) {
				t.Errorf("the server got %q; want %q", lines, want)
			}
			if len(data) != 1 || data[0] != ".a\nb\n" {
				t.Errorf("the server got the data %q; want .a, b", data)
			}
		})
	}
}

// TestSendRefusals: the replies to pipelined commands are all read, and
// the first refusal is what Send returns, naming the command, with its
// code and enhanced code; the session stays in step for the next command.
// A server that takes DATA although it refused a recipient would deliver
// to the others: the client drops the connection instead of sending it
// anything, and is broken afterwards.
func TestSendRefusals(t *testing.T) {
	for _, tt := range []struct {
		name      string
		pipelined bool
		answers   map[string][]string
		command   string
		code      int
		enhanced  string
		temporary bool
		broken    bool
	}{
		{"MAIL 451", true, map[string][]string{"MAIL": {"451 4.3.0 try later"}, "RCPT": {"503 5.5.1 no MAIL", "503 5.5.1 no MAIL"}, "DATA": {"503 no MAIL"}},
			"MAIL FROM:<kms@example.com> BODY=8BITMIME", 451, "4.3.0", true, false},
		{"second RCPT 550", true, map[string][]string{"RCPT": {"250 ok", "550 5.1.1 no such user"}, "DATA": {"554 no"}},
			"RCPT TO:<b@example.com>", 550, "5.1.1", false, false},
		{"RCPT 450, then DATA 354", true, map[string][]string{"RCPT": {"450 busy", "250 ok"}},
			"RCPT TO:<a@example.com>", 450, "", true, true},
		{"one at a time, RCPT 550", false, map[string][]string{"RCPT": {"550 5.1.1 no such user"}},
			"RCPT TO:<a@example.com>", 550, "5.1.1", false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ehlo := "250-fake\r\n250 8BITMIME\r\n"
			if tt.pipelined {
				ehlo = pipeliningEHLO
			}
			f := startFake(t, ehlo, tt.answers)
			c, _ := dial(t, f)
			_, err := c.Send("kms@example.com", []string{"a@example.com", "b@example.com"}, []byte("body\r\n"))
			var r *Reply
			if !errors.As(err, &r) || r.Command != tt.command || r.Code != tt.code || r.Enhanced != tt.enhanced || r.Temporary() != tt.temporary {
				t.Fatalf("Send: %#v; want %s refused with %d %s (temporary %v)", err, tt.command, tt.code, tt.enhanced, tt.temporary)
			}
			err = c.Reset()
			if tt.broken != errors.Is(err, ErrBroken) || (!tt.broken && err != nil) {
				t.Fatalf("RSET after the refusal: %v; want broken %v", err, tt.broken)
			}
			c.Close()
			if _, data := f.got(); len(data) != 0 {
				t.Errorf("the server got the data %q after a refusal; want none", data)
			}
		})
	}
}

// scriptedServer serves one connection with answer, which gets each line
// the client sends and returns the reply to write ("" for none), after a
// 220 greeting. It is for servers the fake cannot play.
func scriptedServer(t *testing.T, answer func(tc *textproto.Conn, line string) string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		tc := textproto.NewConn(conn)
		tc.PrintfLine("220 scripted")
		for {
			line, err := tc.ReadLine()
			if err != nil {
				return
			}
			if reply := answer(tc, line); reply != "" {
				tc.PrintfLine("%s", reply)
			}
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
	})
	return ln.Addr().String()
}

// connect greets the server at addr, with timeout.
func connect(t *testing.T, addr string, timeout time.Duration) *Client {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c, err := New(conn, timeout)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Hello("kms.example.com"); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestSendRefusedAfterData: a server that refuses the message after its
// data (a relay's size limit) is a refusal of "end of data"; Send reports
// that the data went out, and the session stays in step.
func TestSendRefusedAfterData(t *testing.T) {
	addr := scriptedServer(t, func(tc *textproto.Conn, line string) string {
		switch {
		case strings.HasPrefix(line, "EHLO"):
			return "250-scripted\r\n250 PIPELINING"
		case line == "DATA":
			tc.PrintfLine("354 go on")
			if _, err := tc.ReadDotBytes(); err != nil {
				return ""
			}
			return "552 5.3.4 message too big"
		}
		return "250 ok"
	})
	c := connect(t, addr, 10*time.Second)
	sent, err := c.Send("kms@example.com", []string{"a@example.com"}, []byte("body\r\n"))
	var r *Reply
	if !sent || !errors.As(err, &r) || r.Command != "end of data" || r.Code != 552 || r.Enhanced != "5.3.4" || r.Temporary() {
		t.Fatalf("Send = %v, %v; want the data sent, then a final 552 5.3.4 for the end of data", sent, err)
	}
	if err := c.Reset(); err != nil {
		t.Fatalf("RSET after a refused message: %v", err)
	}
}

// TestTimeout: a server that stops answering ends the wait after the
// timeout, and the client is broken.
func TestTimeout(t *testing.T) {
	addr := scriptedServer(t, func(_ *textproto.Conn, line string) string {
		if strings.HasPrefix(line, "EHLO") {
			return "250-scripted\r\n250 PIPELINING"
		}
		return "" // silence
	})
	c := connect(t, addr, 100*time.Millisecond)
	_, err := c.Send("kms@example.com", []string{"a@example.com"}, []byte("body\r\n"))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("Send to a silent server: %v; want a timeout", err)
	}
	if err := c.Noop(); !errors.Is(err, ErrBroken) {
		t.Fatalf("NOOP after a timeout: %v; want ErrBroken", err)
	}
}

// TestAuthChallenges: AUTH sends the mechanism's first response with the
// command and answers each 334 challenge; a 535 is a refusal naming AUTH;
// a challenge the mechanism cannot answer cancels the exchange with "*".
func TestAuthChallenges(t *testing.T) {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	f := startFake(t, "250-fake\r\n250 AUTH LOGIN PLAIN\r\n", map[string][]string{
		"AUTH": {"334 " + b64("Password:"), "535 5.7.8 bad credentials", "334 " + b64("Something else:")},
		// The answers to challenges are lines of their own, which the fake
		// takes for verbs.
		b64("secret"): {"235 2.7.0 ok"},
		"*":           {"501 5.7.0 cancelled"},
	})
	c, _ := dial(t, f)
	if err := c.Auth(sasl.NewLoginClient("kms", "secret")); err != nil {
		t.Fatalf("AUTH LOGIN: %v", err)
	}
	err := c.Auth(sasl.NewPlainClient("", "kms", "wrong"))
	var r *Reply
	if !errors.As(err, &r) || r.Command != "AUTH PLAIN" || r.Code != 535 || r.Enhanced != "5.7.8" {
		t.Fatalf("AUTH PLAIN refused: %v; want AUTH PLAIN 535 5.7.8", err)
	}
	if err := c.Auth(sasl.NewLoginClient("kms", "secret")); !errors.Is(err, sasl.ErrUnexpectedServerChallenge) {
		t.Fatalf("AUTH LOGIN with a strange challenge: %v; want the mechanism's error", err)
	}
	if err := c.Noop(); err != nil {
		t.Fatalf("NOOP after a cancelled AUTH: %v; want the session in step", err)
	}
	c.Close()
	lines, _ := f.got()
	want := []string{"AUTH LOGIN " + b64("kms"), b64("secret"), "AUTH PLAIN " + b64("\x00kms\x00wrong"), "AUTH LOGIN " + b64("kms"), "*", "NOOP"}
	if !slices.Equal(lines[1:], want) {
		t.Fatalf("the server got %q; want EHLO, then %q", lines, want)
	}
}

// TestAuthCancelUnanswered: when the "*" that cancels an exchange gets no
// reply, client and server no longer agree on where the session is, so the
// session is broken: the next command is refused without being sent
// instead of reading a stray reply as its own.
func TestAuthCancelUnanswered(t *testing.T) {
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	var mu sync.Mutex
	var got []string
	addr := scriptedServer(t, func(_ *textproto.Conn, line string) string {
		mu.Lock()
		got = append(got, line)
		mu.Unlock()
		switch {
		case strings.HasPrefix(line, "EHLO"):
			return "250-scripted\r\n250 AUTH LOGIN"
		case strings.HasPrefix(line, "AUTH"):
			return "334 " + b64("Something else:")
		}
		return "" // the "*" and anything after it: silence
	})
	c := connect(t, addr, 200*time.Millisecond)
	if err := c.Auth(sasl.NewLoginClient("kms", "secret")); !errors.Is(err, sasl.ErrUnexpectedServerChallenge) {
		t.Fatalf("AUTH LOGIN with a strange challenge: %v; want the mechanism's error", err)
	}
	if err := c.Noop(); !errors.Is(err, ErrBroken) {
		t.Fatalf("NOOP after an unanswered cancel: %v; want ErrBroken", err)
	}
	if err := c.Auth(sasl.NewLoginClient("kms", "secret")); !errors.Is(err, ErrBroken) {
		t.Fatalf("AUTH after an unanswered cancel: %v; want ErrBroken", err)
	}
	c.Close()
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"AUTH LOGIN " + b64("kms"), "*"}; !slices.Equal(got[1:], want) {
		t.Fatalf("the server got %q; want EHLO, then %q and nothing more", got, want)
	}
}

// TestGreetingRefused: a 4xx greeting (a server shutting down) is a
// temporary refusal, a 5xx one final.
func TestGreetingRefused(t *testing.T) {
	for _, tt := range []struct {
		greeting  string
		temporary bool
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
		_, err = New(conn, time.Second)
		conn.Close()
		ln.Close()
		var r *Reply
		if !errors.As(err, &r) || r.Command != "greeting" || r.Temporary() != tt.temporary {
			t.Errorf("greeting %q: %v; want a greeting refusal, temporary %v", tt.greeting, err, tt.temporary)
		}
	}
}

// TestRefusesAddressInjection: an address with a line break or angle
// bracket would smuggle a command; nothing is sent.
func TestRefusesAddressInjection(t *testing.T) {
	f := startFake(t, pipeliningEHLO, nil)
	c, w := dial(t, f)
	for _, to := range []string{"a@example.com>\r\nRCPT TO:<b@example.com", "a@example.com\n"} {
		if _, err := c.Send("kms@example.com", []string{to}, []byte("x\r\n")); err == nil {
			t.Errorf("Send to %q: no error", to)
		}
	}
	if got := w.take(); len(got) != 0 {
		t.Fatalf("wrote %q; want nothing", got)
	}
}

func TestSplitEnhanced(t *testing.T) {
	for _, tt := range []struct{ msg, enhanced, text string }{
		{"5.1.1 no such user", "5.1.1", "no such user"},
		{"4.7.0 try later\nsecond line", "4.7.0", "try later\nsecond line"},
		{"no code here", "", "no code here"},
		{"3.1.1 not a class", "", "3.1.1 not a class"},
		{"5.1 short", "", "5.1 short"},
		{"5.x.1 letters", "", "5.x.1 letters"},
	} {
		enhanced, text := splitEnhanced(tt.msg)
		if enhanced != tt.enhanced || text != tt.text {
			t.Errorf("splitEnhanced(%q) = %q, %q; want %q, %q", tt.msg, enhanced, text, tt.enhanced, tt.text)
		}
	}
}

// TestBDATCarriesWhatDATADoes: the chunk BDAT sends is what a server
// reads back from the dot-stuffed data of the same message.
func TestBDATCarriesWhatDATADoes(t *testing.T) {
	for _, msg := range []string{"", "a", "a\r", "a\n", "\n\n", ".\r\n.a\nb\r\r\n", "x\r\ny\r"} {
		r := textproto.NewReader(bufio.NewReader(bytes.NewReader(AppendData(nil, []byte(msg)))))
		viaDATA, err := r.ReadDotBytes() // LF line ends
		if err != nil {
			t.Fatal(err)
		}
		chunk := appendLines(nil, []byte(msg), false)
		if got := strings.ReplaceAll(string(chunk), "\r\n", "\n"); got != string(viaDATA) || strings.Count(string(chunk), "\n") != strings.Count(string(chunk), "\r\n") {
			t.Errorf("%q: BDAT sends %q, DATA gives %q", msg, chunk, viaDATA)
		}
	}
}

// TestAppendData: the message on the wire, as net/textproto's DotWriter
// sends it.
func TestAppendData(t *testing.T) {
	for _, tt := range []struct{ msg, want string }{
		{"", ".\r\n"},
		{"a\r\nb\r\n", "a\r\nb\r\n.\r\n"},
		{"a\nb", "a\r\nb\r\n.\r\n"},
		{".\r\n.a\r\nb.\r\n\r\n..", "..\r\n..a\r\nb.\r\n\r\n...\r\n.\r\n"},
	} {
		if got := AppendData([]byte("x"), []byte(tt.msg)); string(got) != "x"+tt.want {
			t.Errorf("AppendData(%q) = %q; want %q", tt.msg, got[1:], tt.want)
		}
	}
}

// Package smtpclient is the client side of SMTP (RFC 5321) that kms sends
// mail with: greeting, EHLO, STARTTLS, AUTH, and mail transactions that
// are pipelined (RFC 2920) when the server offers PIPELINING.
//
// It exists beside go-smtp, whose server kms uses for inbound mail,
// because go-smtp's client sends one command and waits for its reply
// before the next: MAIL, RCPT, DATA and the data are four round trips a
// message. Pipelined they are two (MAIL, every RCPT and DATA in one
// write; then the dot-stuffed data in one write), as Postfix sends; and
// one, to a server that also offers CHUNKING (RFC 3030), for a message
// to one recipient: MAIL, RCPT and "BDAT n LAST" with the message in one
// write. At a stream of replies to a relay on loopback the two round
// trips saved ~4% of the CPU a renewal, between kms and the relay, and a
// fifth of its latency; over a WAN each one saved is a round-trip time
// a message.
//
// A refusal is a *Reply, which names the command the server refused and
// carries its code. After any other error (the connection failed or timed
// out) the client is unusable and should be closed.
package smtpclient

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
)

// Reply is a server's refusal: a reply to Command other than the one
// that lets the session go on.
type Reply struct {
	Command  string // what was refused: "greeting", "EHLO", "MAIL FROM:<a@b>", "RCPT TO:<c@d>", "DATA", "end of data", ...
	Code     int    // 421, 550, ...
	Enhanced string // the enhanced status code (RFC 3463), "5.1.1", or ""
	Message  string // the reply's text after the codes, lines joined by "\n"
}

func (r *Reply) Error() string {
	if r.Enhanced != "" {
		return fmt.Sprintf("%s: %d %s %s", r.Command, r.Code, r.Enhanced, r.Message)
	}
	return fmt.Sprintf("%s: %d %s", r.Command, r.Code, r.Message)
}

// Temporary says whether the refusal is a 4xx, which asks the client to
// try again later.
func (r *Reply) Temporary() bool { return r.Code >= 400 && r.Code < 500 }

// ErrBroken is returned by a client whose connection is out of step with
// the server (an earlier error, or a DATA the server took although the
// transaction had been refused), so that it cannot carry another command.
var ErrBroken = errors.New("smtp: the connection is out of step after an earlier error; close it")

// Client is one SMTP session. It is not safe for concurrent use.
type Client struct {
	conn    net.Conn
	text    *textproto.Reader
	timeout time.Duration
	name    string            // the name given in EHLO, again after STARTTLS
	ext     map[string]string // EHLO keywords, upper case, to their parameters
	broken  bool
	buf     []byte // the next write, kept for reuse
	body    []byte // a BDAT chunk being built, kept for reuse
}

// New reads the server's greeting on conn. timeout bounds each wait for a
// reply, and the writes before it (0: none). New does not close conn on
// failure.
func New(conn net.Conn, timeout time.Duration) (*Client, error) {
	c := &Client{conn: conn, timeout: timeout}
	c.text = textproto.NewReader(bufio.NewReader(conn))
	c.deadline()
	if _, err := c.read("greeting", 220); err != nil {
		return nil, err
	}
	return c, nil
}

// Hello says EHLO as name, and HELO when the server refuses EHLO with a
// 5xx (an old server: then no extension, no pipelining).
func (c *Client) Hello(name string) error {
	if strings.ContainsAny(name, "\r\n ") {
		return fmt.Errorf("smtp: EHLO name %q: a space or line break in it", name)
	}
	c.name = name
	msg, err := c.command("EHLO", 250, "EHLO "+name)
	var r *Reply
	if errors.As(err, &r) && r.Code >= 500 {
		c.ext = nil
		_, err = c.command("HELO", 250, "HELO "+name)
		return err
	}
	if err != nil {
		return err
	}
	c.ext = map[string]string{}
	lines := strings.Split(msg, "\n")
	for _, l := range lines[1:] {
		kw, param, _ := strings.Cut(l, " ")
		c.ext[strings.ToUpper(kw)] = param
	}
	return nil
}

// Extension says whether the server's EHLO reply offered the keyword ext
// (case does not matter), and with which parameters.
func (c *Client) Extension(ext string) (bool, string) {
	param, ok := c.ext[strings.ToUpper(ext)]
	return ok, param
}

// StartTLS upgrades the session (RFC 3207) and says EHLO again, as the
// server forgets what it learnt before. The server must have offered
// STARTTLS; config verifies its certificate.
func (c *Client) StartTLS(config *tls.Config) error {
	if ok, _ := c.Extension("STARTTLS"); !ok {
		return errors.New("smtp: the server does not offer STARTTLS")
	}
	if _, err := c.command("STARTTLS", 220, "STARTTLS"); err != nil {
		return err
	}
	tc := tls.Client(c.conn, config)
	c.deadline()
	if err := tc.Handshake(); err != nil {
		c.broken = true
		return fmt.Errorf("smtp: TLS handshake: %w", err)
	}
	c.conn = tc
	c.text = textproto.NewReader(bufio.NewReader(tc))
	return c.Hello(c.name)
}

// TLSConnectionState returns the TLS state once StartTLS has succeeded
// (or of a *tls.Conn given to New).
func (c *Client) TLSConnectionState() (tls.ConnectionState, bool) {
	if tc, ok := c.conn.(*tls.Conn); ok {
		return tc.ConnectionState(), true
	}
	return tls.ConnectionState{}, false
}

// Auth authenticates with a (RFC 4954): its first response goes with the
// AUTH command, later ones answer the server's 334 challenges.
func (c *Client) Auth(a sasl.Client) error {
	if c.broken {
		return ErrBroken
	}
	mech, resp, err := a.Start()
	if err != nil {
		return fmt.Errorf("smtp: AUTH: %w", err)
	}
	line := "AUTH " + mech
	if resp != nil {
		line += " " + encodeSASL(resp)
	}
	for {
		c.buf = append(append(c.buf[:0], line...), "\r\n"...)
		if err := c.write(); err != nil {
			return err
		}
		code, msg, err := c.text.ReadResponse(0)
		if err != nil {
			return c.replyErr("AUTH "+mech, err)
		}
		switch code {
		case 235:
			return nil
		case 334:
			challenge, err := base64.StdEncoding.DecodeString(msg)
			if err != nil {
				c.broken = true
				return fmt.Errorf("smtp: AUTH %s: the server's challenge is not base64: %w", mech, err)
			}
			next, err := a.Next(challenge)
			if err != nil {
				// "*" cancels the exchange (RFC 4954 section 4).
				c.buf = append(c.buf[:0], "*\r\n"...)
				if c.write() == nil {
					if _, _, rerr := c.text.ReadResponse(0); rerr != nil {
						c.broken = true // no reply to the "*": out of step
					}
				}
				return fmt.Errorf("smtp: AUTH %s: %w", mech, err)
			}
			line = encodeSASL(next)
		default:
			enhanced, text := splitEnhanced(msg)
			return &Reply{Command: "AUTH " + mech, Code: code, Enhanced: enhanced, Message: text}
		}
	}
}

// encodeSASL encodes a SASL response for the wire: base64, and "=" for an
// empty one (RFC 4954).
func encodeSASL(b []byte) string {
	if len(b) == 0 {
		return "="
	}
	return base64.StdEncoding.EncodeToString(b)
}

// Send runs one mail transaction of msg from from to every address in to,
// and returns once the server has answered the end of the data: nil is
// its 250. The server gets msg with every line ending in CRLF (sent
// dot-stuffed with DATA, as it is with BDAT).
//
// With PIPELINING, MAIL, the RCPTs and DATA go in one write and their
// replies are read together; the first refusal among them is the error.
// With CHUNKING as well and one recipient, the message goes in that same
// write as one BDAT LAST chunk (see sendChunked).
// Any refused recipient fails the whole transaction, as kms wants each of
// its messages delivered to all its recipients or retried. A server that
// answers DATA with 354 although it refused something would take the data
// for the recipients it accepted: the client then drops the connection,
// which makes the server discard the transaction (RFC 5321 section 3.8),
// and is broken afterwards.
//
// dataSent reports whether the data went out, so the server may have the
// message even though err is not nil (the end-of-data reply was lost or
// refused).
func (c *Client) Send(from string, to []string, msg []byte) (dataSent bool, err error) {
	if c.broken {
		return false, ErrBroken
	}
	if len(to) == 0 {
		return false, errors.New("smtp: no recipient")
	}
	for _, a := range append([]string{from}, to...) {
		if strings.ContainsAny(a, "\r\n<>") {
			return false, fmt.Errorf("smtp: address %q: a line break or angle bracket in it", a)
		}
	}
	commands := make([]string, 0, len(to)+2)
	commands = append(commands, "MAIL FROM:<"+from+">"+c.mailParams())
	for _, rcpt := range to {
		commands = append(commands, "RCPT TO:<"+rcpt+">")
	}
	pipelining, _ := c.Extension("PIPELINING")
	if chunking, _ := c.Extension("CHUNKING"); pipelining && chunking && len(to) == 1 {
		return c.sendChunked(commands, msg)
	}
	commands = append(commands, "DATA")
	if pipelining {
		err = c.envelopePipelined(commands)
	} else {
		err = c.envelope(commands)
	}
	if err != nil {
		return false, err
	}
	c.buf = AppendData(c.buf[:0], msg)
	if err := c.write(); err != nil {
		return true, err
	}
	_, err = c.read("end of data", 250)
	return true, err
}

// sendChunked sends MAIL, RCPT, "BDAT n LAST" and the message (its lines
// ending in CRLF, not dot-stuffed) in one write, and reads the three
// replies. The server reads and drops the chunk when it refused MAIL or
// RCPT (RFC 3030 section 2), so a refusal leaves the session in step. It
// is kept to one recipient: with several, one refused RCPT would not stop
// the message going to the others, as it does with DATA (see Send).
func (c *Client) sendChunked(envelope []string, msg []byte) (dataSent bool, err error) {
	c.body = appendLines(c.body[:0], msg, false)
	bdat := "BDAT " + strconv.Itoa(len(c.body)) + " LAST"
	commands := append(envelope, bdat)
	refused, _, err := c.pipeline(commands, c.body)
	if err != nil {
		return true, err // the server may have had all of it
	}
	// The data was taken only if nothing before the chunk was refused.
	var r *Reply
	if errors.As(refused, &r) && r.Command != bdat {
		return false, refused
	}
	return true, refused
}

// mailParams is what MAIL FROM carries, as net/smtp sends it: BODY=8BITMIME
// and SMTPUTF8 where the server offers them.
func (c *Client) mailParams() string {
	var p string
	if ok, _ := c.Extension("8BITMIME"); ok {
		p += " BODY=8BITMIME"
	}
	if ok, _ := c.Extension("SMTPUTF8"); ok {
		p += " SMTPUTF8"
	}
	return p
}

// expect is the reply code each envelope command needs: 250 for MAIL, 25x
// for RCPT (251 forwards), 354 for DATA.
func expect(command string) int {
	switch {
	case strings.HasPrefix(command, "RCPT"):
		return 25
	case command == "DATA":
		return 354
	}
	return 250
}

// envelope sends the commands one at a time, each after the reply to the
// one before, and stops at the first refusal.
func (c *Client) envelope(commands []string) error {
	for _, cmd := range commands {
		if _, err := c.command(cmd, expect(cmd), cmd); err != nil {
			return err
		}
	}
	return nil
}

// envelopePipelined sends the commands in one write and then reads all
// their replies; nil means the server waits for the data.
func (c *Client) envelopePipelined(commands []string) error {
	refused, dataTaken, err := c.pipeline(commands, nil)
	if err != nil {
		return err
	}
	if refused != nil && dataTaken {
		c.broken = true
		c.conn.Close()
	}
	return refused
}

// pipeline sends the commands, and then tail, in one write, and reads
// every command's reply (RFC 2920). refused is the first refusal, lastOK
// says whether the last command was accepted, and err is a failure of the
// connection (no reply at all).
func (c *Client) pipeline(commands []string, tail []byte) (refused error, lastOK bool, err error) {
	c.buf = c.buf[:0]
	for _, cmd := range commands {
		c.buf = append(append(c.buf, cmd...), "\r\n"...)
	}
	c.buf = append(c.buf, tail...)
	if err := c.write(); err != nil {
		return nil, false, err
	}
	for _, cmd := range commands {
		_, rerr := c.read(cmd, expect(cmd))
		var r *Reply
		if rerr != nil && !errors.As(rerr, &r) {
			return nil, false, rerr
		}
		if rerr != nil && refused == nil {
			refused = rerr
		}
		lastOK = rerr == nil
	}
	return refused, lastOK, nil
}

// Reset ends the current transaction (RSET), so that the session can
// carry another after a refusal.
func (c *Client) Reset() error {
	if c.broken {
		return ErrBroken
	}
	_, err := c.command("RSET", 250, "RSET")
	return err
}

// Noop asks the server whether the session is alive.
func (c *Client) Noop() error {
	if c.broken {
		return ErrBroken
	}
	_, err := c.command("NOOP", 250, "NOOP")
	return err
}

// Quit ends the session politely and closes the connection.
func (c *Client) Quit() error {
	var err error
	if !c.broken {
		_, err = c.command("QUIT", 221, "QUIT")
	}
	if cerr := c.conn.Close(); err == nil {
		err = cerr
	}
	return err
}

// Close closes the connection without QUIT.
func (c *Client) Close() error { return c.conn.Close() }

// command sends one command line and reads its reply, which must have
// the code want (a prefix of it, as textproto.Reader.ReadResponse has it:
// 25 takes 250 and 251). name is what a refusal names.
func (c *Client) command(name string, want int, line string) (string, error) {
	if c.broken {
		return "", ErrBroken
	}
	c.buf = append(append(c.buf[:0], line...), "\r\n"...)
	if err := c.write(); err != nil {
		return "", err
	}
	return c.read(name, want)
}

// write sends buf, with the deadline for it and the replies it asks for.
func (c *Client) write() error {
	c.deadline()
	if _, err := c.conn.Write(c.buf); err != nil {
		c.broken = true
		return fmt.Errorf("smtp: write: %w", err)
	}
	return nil
}

// deadline starts the timeout for the next exchange.
func (c *Client) deadline() {
	if c.timeout > 0 {
		c.conn.SetDeadline(time.Now().Add(c.timeout))
	}
}

// read reads one reply, which must have the code want; a refusal is a
// *Reply naming command.
func (c *Client) read(command string, want int) (string, error) {
	_, msg, err := c.text.ReadResponse(want)
	if err != nil {
		return "", c.replyErr(command, err)
	}
	return msg, nil
}

// replyErr turns textproto's error for a reply into a *Reply, and marks
// the client broken for anything else (the connection failed, or what
// came was not SMTP).
func (c *Client) replyErr(command string, err error) error {
	var te *textproto.Error
	if errors.As(err, &te) {
		enhanced, text := splitEnhanced(te.Msg)
		return &Reply{Command: command, Code: te.Code, Enhanced: enhanced, Message: text}
	}
	c.broken = true
	return fmt.Errorf("smtp: %s: %w", command, err)
}

// splitEnhanced takes the enhanced status code (RFC 3463, "class.subject.
// detail") off the front of a reply's text, if it has one.
func splitEnhanced(msg string) (enhanced, text string) {
	code, rest, _ := strings.Cut(msg, " ")
	parts := strings.Split(code, ".")
	if len(parts) != 3 || (parts[0] != "2" && parts[0] != "4" && parts[0] != "5") {
		return "", msg
	}
	for _, p := range parts[1:] {
		if n, err := strconv.Atoi(p); err != nil || n < 0 || n > 999 {
			return "", msg
		}
	}
	return code, rest
}

// AppendData appends msg to dst as SMTP data (RFC 5321 section 4.5.2):
// every line ending in CRLF (a bare LF gets its CR), a line that starts
// with "." sent with another in front, then the end-of-data line ".". It
// is what net/textproto's DotWriter sends, a line at a time rather than a
// byte.
func AppendData(dst, msg []byte) []byte {
	return append(appendLines(dst, msg, true), ".\r\n"...)
}

// appendLines appends msg to dst with every line ending in CRLF: a bare
// LF gets its CR, and a last line without an end gets one. With stuff, a
// line that starts with "." gets another in front (DATA); without, the
// lines are what the server receives either way (BDAT carries them as
// they are).
func appendLines(dst, msg []byte, stuff bool) []byte {
	for len(msg) > 0 {
		line := msg
		i := bytes.IndexByte(msg, '\n')
		if i >= 0 {
			line, msg = msg[:i], msg[i+1:]
		} else {
			msg = nil
		}
		if stuff && len(line) > 0 && line[0] == '.' {
			dst = append(dst, '.')
		}
		dst = append(dst, line...)
		if len(line) == 0 || line[len(line)-1] != '\r' {
			dst = append(dst, '\r')
		}
		dst = append(dst, '\n')
	}
	return dst
}

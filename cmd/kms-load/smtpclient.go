package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"net"
	"net/textproto"
	"strings"
)

// smtpClient is the users' side of an SMTP connection, as small as the
// generator needs: EHLO, then mail transactions, nothing else (no
// STARTTLS, no AUTH: the daemon's SMTP listener on loopback needs
// neither). It exists instead of net/smtp because of the CPU that the
// generator takes from the daemon it measures: with PIPELINING (RFC 2920),
// which the daemon advertises, a transaction is two writes and two waits
// instead of four of each, as Postfix sends towards such a server.
//
// Replies are read with net/textproto, so a refusal is a *textproto.Error
// carrying its code, as with net/smtp. After an error the connection may
// be broken, or the refused transaction still open on the server (a
// refused RCPT after an accepted MAIL): the sender closes it, and opens a
// new one for a retry.
type smtpClient struct {
	conn       net.Conn
	text       *textproto.Reader
	pipelining bool     // the server's EHLO advertised PIPELINING
	mailParams string   // what net/smtp appends to MAIL FROM: BODY=8BITMIME, SMTPUTF8 when advertised
	buf        []byte   // the next write, kept for reuse
	ext        []string // the EHLO keywords, upper case, for the tests
}

// newSMTPClient reads the server's greeting on conn and says EHLO as
// localName (HELO if the server refuses EHLO). It does not close conn on
// failure.
func newSMTPClient(conn net.Conn, localName string) (*smtpClient, error) {
	c := &smtpClient{conn: conn, text: textproto.NewReader(bufio.NewReader(conn))}
	if _, _, err := c.text.ReadResponse(220); err != nil {
		return nil, err
	}
	msg, err := c.command(250, "EHLO "+localName)
	var te *textproto.Error
	if errors.As(err, &te) && te.Code >= 500 {
		// An old server: HELO, and one command at a time.
		if _, err := c.command(250, "HELO "+localName); err != nil {
			return nil, err
		}
		return c, nil
	}
	if err != nil {
		return nil, err
	}
	c.extensions(msg)
	return c, nil
}

// extensions reads the EHLO reply's keywords (its lines after the first).
func (c *smtpClient) extensions(msg string) {
	lines := strings.Split(msg, "\n")
	for _, l := range lines[1:] {
		kw, _, _ := strings.Cut(l, " ")
		kw = strings.ToUpper(kw)
		c.ext = append(c.ext, kw)
		switch kw {
		case "PIPELINING":
			c.pipelining = true
		case "8BITMIME":
			c.mailParams += " BODY=8BITMIME"
		case "SMTPUTF8":
			c.mailParams += " SMTPUTF8"
		}
	}
}

// Close closes the connection without QUIT, as net/smtp's Close does.
func (c *smtpClient) Close() error { return c.conn.Close() }

// command sends one command line and reads its reply, which must have
// the code expect (a prefix of it, as textproto.Reader.ReadResponse has
// it: 25 takes 250 and 251).
func (c *smtpClient) command(expect int, line string) (string, error) {
	c.buf = append(append(c.buf[:0], line...), "\r\n"...)
	if _, err := c.conn.Write(c.buf); err != nil {
		return "", err
	}
	_, msg, err := c.text.ReadResponse(expect)
	return msg, err
}

// send runs one mail transaction from one sender to one recipient and
// returns once the server has answered the end of the data: nil is its
// 250. msg is sent dot-stuffed, with every line ending in CRLF.
func (c *smtpClient) send(from, to string, msg []byte) error {
	for _, a := range []string{from, to} {
		if strings.ContainsAny(a, "\r\n<>") {
			return fmt.Errorf("SMTP address %q: a line break or angle bracket in it", a)
		}
	}
	mail, rcpt := "MAIL FROM:<"+from+">"+c.mailParams, "RCPT TO:<"+to+">"
	var err error
	if c.pipelining {
		err = c.envelopePipelined(mail, rcpt)
	} else {
		err = c.envelope(mail, rcpt)
	}
	if err != nil {
		return err
	}
	c.buf = appendData(c.buf[:0], msg)
	if _, err := c.conn.Write(c.buf); err != nil {
		return err
	}
	_, _, err = c.text.ReadResponse(250)
	return err
}

// envelope sends MAIL, RCPT and DATA one at a time, each after the
// reply to the one before.
func (c *smtpClient) envelope(mail, rcpt string) error {
	if _, err := c.command(250, mail); err != nil {
		return err
	}
	if _, err := c.command(25, rcpt); err != nil {
		return err
	}
	_, err := c.command(354, "DATA")
	return err
}

// envelopePipelined sends MAIL, RCPT and DATA in one write and then reads
// their three replies (RFC 2920); nil means the server waits for the data.
func (c *smtpClient) envelopePipelined(mail, rcpt string) error {
	c.buf = append(c.buf[:0], mail...)
	c.buf = append(c.buf, "\r\n"...)
	c.buf = append(c.buf, rcpt...)
	c.buf = append(c.buf, "\r\nDATA\r\n"...)
	if _, err := c.conn.Write(c.buf); err != nil {
		return err
	}
	var refused error // the first refusal; the later replies are read all the same
	for _, expect := range []int{250, 25, 354} {
		_, _, err := c.text.ReadResponse(expect)
		if err != nil && !isReply(err) {
			return err // no reply at all: the connection is gone
		}
		if err != nil && refused == nil {
			refused = err
		}
		if err == nil && expect == 354 && refused != nil {
			// A server that took DATA although it refused MAIL or RCPT
			// waits for data: an empty message, then the refusal counts.
			if _, err := c.command(250, "."); err != nil && !isReply(err) {
				return err
			}
		}
	}
	return refused
}

// isReply says whether err is a reply of the server's (a refusal), rather
// than the connection failing.
func isReply(err error) bool {
	var te *textproto.Error
	return errors.As(err, &te)
}

// appendData appends msg to dst as SMTP data (RFC 5321 4.5.2): every line
// ending in CRLF (a bare LF gets its CR), a line that starts with "." sent
// with another in front, then the end-of-data line ".". It is what
// net/smtp's data writer (textproto.DotWriter) sends.
func appendData(dst, msg []byte) []byte {
	for len(msg) > 0 {
		line := msg
		i := bytes.IndexByte(msg, '\n')
		if i >= 0 {
			line, msg = msg[:i], msg[i+1:]
		} else {
			msg = nil
		}
		if len(line) > 0 && line[0] == '.' {
			dst = append(dst, '.')
		}
		dst = append(dst, line...)
		if len(line) == 0 || line[len(line)-1] != '\r' {
			dst = append(dst, '\r')
		}
		dst = append(dst, '\n')
	}
	return append(dst, ".\r\n"...)
}

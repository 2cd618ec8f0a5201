package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// sinkConn is one SMTP session of the sink: the daemon's relay
// (mail/smtpclient, which pipelines) on the other end. It speaks just what a relay client needs:
// EHLO/HELO, MAIL, RCPT, DATA, BDAT, RSET, NOOP and QUIT, with PIPELINING
// (replies go out when the client has nothing more buffered for us) and
// CHUNKING (the relay's client sends a message to one recipient as one
// BDAT chunk, in the same write as its MAIL and RCPT), and
// answers 502 to the other commands of RFC 5321 and its extensions, 500
// to anything else.
type sinkConn struct {
	s       *sink
	conn    net.Conn
	r       *bufio.Reader // flushes w before it waits for the client
	w       *bufio.Writer
	greeted bool     // EHLO or HELO seen
	mail    bool     // MAIL accepted: a transaction is open
	rcpts   []string // the transaction's accepted recipients
	chunks  []byte   // the BDAT chunks of the message so far
}

func newSinkConn(s *sink, conn net.Conn) *sinkConn {
	c := &sinkConn{s: s, conn: conn}
	c.w = bufio.NewWriter(deadlineWriter{conn})
	c.r = bufio.NewReaderSize(flushReader{c}, sinkReadBuffer)
	return c
}

// flushReader is what the session reads through: before it waits for
// the client it sends the replies written so far. Replies to pipelined
// commands thus go out together, and none is held back while the client
// waits for it.
type flushReader struct{ c *sinkConn }

func (f flushReader) Read(p []byte) (int, error) {
	if f.c.w.Buffered() > 0 {
		if err := f.c.w.Flush(); err != nil {
			return 0, err
		}
	}
	if err := f.c.conn.SetReadDeadline(time.Now().Add(sinkReadTimeout)); err != nil {
		return 0, err
	}
	return f.c.conn.Read(p)
}

// deadlineWriter bounds each write to the client by sinkWriteTimeout.
type deadlineWriter struct{ conn net.Conn }

func (d deadlineWriter) Write(p []byte) (int, error) {
	if err := d.conn.SetWriteDeadline(time.Now().Add(sinkWriteTimeout)); err != nil {
		return 0, err
	}
	return d.conn.Write(p)
}

// Errors that end a command or a message, with their reply.
var (
	errLineTooLong     = fmt.Errorf("a line over %d bytes", sinkMaxLine)
	errMessageTooLarge = fmt.Errorf("a message over %d bytes", sinkMaxMessage)
	// errChunkSize: a BDAT whose size cannot be read, so that the end of
	// its chunk, and the next command, cannot be found.
	errChunkSize = errors.New("BDAT without a chunk size")
	// errQuit ends the session after QUIT's reply.
	errQuit = errors.New("QUIT")
)

// serve runs the session until the client quits or goes, or the sink
// closes. The caller closes the connection.
func (c *sinkConn) serve() {
	c.reply("220 " + sinkHostname + " ESMTP kms-load sink")
	var err error
	for err == nil {
		var line string
		if line, err = c.readCommand(); err == nil {
			err = c.handle(line)
		}
	}
	c.end(err)
}

// end answers, or logs, what ended the session.
func (c *sinkConn) end(err error) {
	var ne net.Error
	switch {
	case errors.Is(err, errQuit):
	case errors.Is(err, errLineTooLong):
		c.reply("500 5.5.2 Line too long, closing connection")
	case errors.Is(err, errChunkSize):
		c.reply("501 5.5.4 Syntax: BDAT size [LAST], closing connection")
	case errors.As(err, &ne) && ne.Timeout():
		c.reply("421 4.4.2 Idle too long, closing connection")
	case errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET):
		// The client went without QUIT, or the sink is closing: the
		// daemon's relay keeps sessions open until it stops.
		return
	default:
		c.s.log.Printf("session with %s: %v", c.conn.RemoteAddr(), err)
		return
	}
	c.w.Flush()
}

// reply queues a reply line; it goes out before the session next waits
// for the client.
func (c *sinkConn) reply(line string) {
	c.w.WriteString(line)
	c.w.WriteString("\r\n")
}

// readCommand reads a command line, without its line ending (CRLF, or a
// bare LF, which clients of old send).
func (c *sinkConn) readCommand() (string, error) {
	line, err := c.r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) || len(line) > sinkMaxLine {
		return "", errLineTooLong
	}
	if err != nil {
		return "", err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return string(line), nil
}

// handle runs one command. An error ends the session.
func (c *sinkConn) handle(line string) error {
	verb, arg, _ := strings.Cut(line, " ")
	verb = strings.ToUpper(verb)
	switch verb {
	case "EHLO", "HELO":
		c.hello(verb, strings.TrimSpace(arg))
	case "MAIL":
		c.mailFrom(arg)
	case "RCPT":
		c.rcptTo(arg)
	case "DATA":
		return c.data(arg)
	case "BDAT":
		return c.bdat(arg)
	case "RSET":
		c.reset()
		c.reply("250 2.0.0 OK")
	case "NOOP":
		c.reply("250 2.0.0 OK")
	case "QUIT":
		c.reply("221 2.0.0 Bye")
		return errQuit
	case "VRFY", "EXPN", "HELP", "TURN", "SEND", "SOML", "SAML", "STARTTLS", "AUTH", "ETRN", "ATRN", "LHLO":
		c.reply("502 5.5.1 " + verb + " not implemented here")
	default:
		c.reply("500 5.5.2 Command not recognized")
	}
	return nil
}

// reset ends the transaction, if one is open.
func (c *sinkConn) reset() {
	c.mail, c.rcpts, c.chunks = false, nil, nil
}

// hello answers EHLO with the extensions the sink has, HELO plainly; both
// reset the session (RFC 5321 4.1.4).
func (c *sinkConn) hello(verb, domain string) {
	if domain == "" {
		c.reply("501 5.5.4 " + verb + " needs the client's domain")
		return
	}
	c.reset()
	c.greeted = true
	if verb == "HELO" {
		c.reply("250 " + sinkHostname)
		return
	}
	c.reply("250-" + sinkHostname)
	c.reply("250-PIPELINING")
	c.reply("250-8BITMIME")
	c.reply("250-CHUNKING")
	c.reply("250-ENHANCEDSTATUSCODES")
	c.reply(fmt.Sprintf("250 SIZE %d", sinkMaxMessage))
}

// mailFrom opens a transaction from any sender. Its ESMTP parameters
// (BODY=8BITMIME from the relay's client) are accepted and ignored.
func (c *sinkConn) mailFrom(arg string) {
	switch {
	case !c.greeted:
		c.reply("503 5.5.1 Say EHLO or HELO first")
		return
	case c.mail:
		c.reply("503 5.5.1 Sender already given")
		return
	}
	if _, err := parsePath(arg, "FROM:"); err != nil {
		c.reply("501 5.5.4 Syntax: MAIL FROM:<address>")
		return
	}
	c.mail, c.rcpts = true, nil
	c.reply("250 2.1.0 OK")
}

// rcptTo accepts the run's users and the admin address; anyone else is
// refused permanently, so that mail the run did not expect shows in the
// daemon's log instead of being counted.
func (c *sinkConn) rcptTo(arg string) {
	if !c.mail {
		c.reply("503 5.5.1 MAIL first")
		return
	}
	to, err := parsePath(arg, "TO:")
	switch {
	case err != nil || to == "":
		c.reply("501 5.5.4 Syntax: RCPT TO:<address>")
	case len(c.rcpts) >= sinkMaxRcpts:
		c.reply(fmt.Sprintf("452 4.5.3 Too many recipients: %d at most", sinkMaxRcpts))
	case !c.s.accepts(to):
		c.reply("550 5.1.1 no such user in this load run")
	default:
		c.rcpts = append(c.rcpts, to)
		c.reply("250 2.1.5 OK")
	}
}

// data takes the message, keeps it and hands it to the generator before
// the 250. An error (the connection lost mid-message) ends the session.
func (c *sinkConn) data(arg string) error {
	switch {
	case arg != "":
		c.reply("501 5.5.4 DATA takes no argument")
		return nil
	case !c.mail:
		c.reply("503 5.5.1 MAIL first")
		return nil
	case len(c.rcpts) == 0:
		// As RFC 2920 has it for a pipelined DATA after refused RCPTs.
		c.reply("554 5.5.1 No valid recipients")
		return nil
	}
	c.reply("354 End data with <CR><LF>.<CR><LF>")
	rcpts := c.rcpts
	c.reset()
	raw, err := readData(c.r, sinkMaxMessage, sinkMaxLine)
	switch {
	case errors.Is(err, errMessageTooLarge):
		c.reply(fmt.Sprintf("552 5.3.4 Message too large: over %d bytes", sinkMaxMessage))
	case errors.Is(err, errLineTooLong):
		c.reply(fmt.Sprintf("554 5.6.0 Message refused: a line over %d bytes", sinkMaxLine))
	case err != nil:
		return fmt.Errorf("reading the message: %w", err)
	default:
		c.s.keep(raw, rcpts)
		c.reply("250 2.0.0 OK: kept")
	}
	return nil
}

// bdat takes a chunk of a message (RFC 3030), and keeps the message at
// its LAST chunk, before the 250. The chunk follows the command whatever
// the reply, so a refused one is read and dropped; a size that cannot be
// read leaves the end of the chunk unknown, and ends the session.
func (c *sinkConn) bdat(arg string) error {
	sizeArg, last, _ := strings.Cut(strings.TrimSpace(arg), " ")
	size, err := strconv.ParseUint(sizeArg, 10, 31)
	if err != nil || (last != "" && !strings.EqualFold(last, "LAST")) {
		return errChunkSize
	}
	refuse := ""
	switch {
	case !c.mail:
		refuse = "503 5.5.1 MAIL first"
	case len(c.rcpts) == 0:
		refuse = "554 5.5.1 No valid recipients"
	case len(c.chunks)+int(size) > sinkMaxMessage:
		refuse = fmt.Sprintf("552 5.3.4 Message too large: over %d bytes", sinkMaxMessage)
	}
	if refuse != "" {
		if _, err := io.CopyN(io.Discard, c.r, int64(size)); err != nil {
			return fmt.Errorf("reading a refused chunk: %w", err)
		}
		c.reset()
		c.reply(refuse)
		return nil
	}
	n := len(c.chunks)
	c.chunks = slices.Grow(c.chunks, int(size))[:n+int(size)]
	if _, err := io.ReadFull(c.r, c.chunks[n:]); err != nil {
		return fmt.Errorf("reading the message: %w", err)
	}
	if last == "" {
		c.reply(fmt.Sprintf("250 2.0.0 %d octets received", size))
		return nil
	}
	raw, rcpts := c.chunks, c.rcpts
	c.reset()
	c.s.keep(raw, rcpts)
	c.reply("250 2.0.0 OK: kept")
	return nil
}

// parsePath reads the address of a MAIL or RCPT argument, arg being
// prefix (FROM: or TO:, any case), optional spaces and <address>; any
// source route in it is dropped (RFC 5321 4.1.2) and what follows the
// ">" (ESMTP parameters) ignored.
func parsePath(arg, prefix string) (string, error) {
	if len(arg) < len(prefix) || !strings.EqualFold(arg[:len(prefix)], prefix) {
		return "", fmt.Errorf("no %s", prefix)
	}
	rest := strings.TrimLeft(arg[len(prefix):], " ")
	end := strings.IndexByte(rest, '>')
	if !strings.HasPrefix(rest, "<") || end < 0 {
		return "", errors.New("no <address>")
	}
	addr := rest[1:end]
	if strings.HasPrefix(addr, "@") {
		_, a, ok := strings.Cut(addr, ":")
		if !ok {
			return "", errors.New("a source route without its address")
		}
		addr = a
	}
	return addr, nil
}

// readData reads a message's data from r through its end-of-data line
// (".", RFC 5321 4.1.1.4) and returns the message as sent: CRLF line
// endings, the dot that the client put in front of a line starting with
// "." taken away (4.5.2). Only CRLF ends a line: a bare LF is data, so a
// "." after it is neither unstuffed nor the end of the data, as go-smtp
// had it, so that nothing can be smuggled past the end of a message.
//
// The message is read a line at a time (bufio's ReadSlice, which scans
// the buffer for the LF with bytes.IndexByte) rather than a byte at a
// time. A message over maxBytes, or with a line over maxLine bytes (CRLF
// included), is read through its end all the same and refused with
// errMessageTooLarge or errLineTooLong: the session can go on. Any other
// error is the connection's (io.ErrUnexpectedEOF when it closed).
func readData(r *bufio.Reader, maxBytes, maxLine int) ([]byte, error) {
	msg := make([]byte, 0, sinkMessageBuffer)
	var refused error
	lineStart, prevCR := true, false
	lineLen := 0 // bytes of the current line so far
	for {
		seg, err := r.ReadSlice('\n')
		full := errors.Is(err, bufio.ErrBufferFull) // a line longer than r's buffer: a piece of it
		if err != nil && !full {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		// A line ends at a CRLF, whose CR may end the piece before.
		n := len(seg)
		ends := !full && (n >= 2 && seg[n-2] == '\r' || n == 1 && prevCR)
		prevCR = seg[n-1] == '\r'
		lineLen += n
		data := seg
		if lineStart && seg[0] == '.' {
			if ends && n == 3 {
				if refused != nil {
					return nil, refused
				}
				return msg, nil
			}
			data = seg[1:]
		}
		long := lineLen > maxLine
		lineStart = ends
		if ends {
			lineLen = 0
		}
		switch {
		case refused != nil:
		case long:
			refused, msg = errLineTooLong, nil
		case len(msg)+len(data) > maxBytes:
			refused, msg = errMessageTooLarge, nil
		default:
			msg = append(msg, data...)
		}
	}
}

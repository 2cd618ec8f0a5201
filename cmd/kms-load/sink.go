package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// sink is the SMTP server the daemon's relay transport delivers to: the
// mail clients' side of the reply path, in memory. It accepts mail for the
// run's users and the admin address only, with no TLS and no
// authentication (it listens on loopback), and keeps every message's raw
// bytes and arrival time. Each message is also handed to the generator as
// it arrives, from the SMTP session's goroutine, so replies are matched
// without polling anything.
type sink struct {
	addr   string
	srv    *smtp.Server
	served chan struct{}

	mu      sync.Mutex
	allowed map[string]bool // lower-case recipient addresses accepted
	admin   string          // the admin address, lower case
	msgs    []*reply        // everything received, in order
	handler func(*reply)    // the generator's; nil: messages are only kept
}

// reply is a message the daemon sent: through the sink, or a Maildir file.
type reply struct {
	raw   []byte    // the message as received (CRLF from the sink, LF from a Maildir)
	at    time.Time // when it arrived: the end of DATA, or the file seen in new/
	rcpts []string  // the envelope recipients; nil for a Maildir file
	where string    // where it was received, for error messages
}

// startSink listens on addr (host:port on loopback; port 0 picks a free
// one) and serves until close. adminAddress is accepted as a recipient
// from the start; the users are added with allow as they are made. Errors
// of the SMTP sessions are written to logw.
func startSink(addr, adminAddress string, logw io.Writer) (*sink, error) {
	if err := loopback(addr); err != nil {
		return nil, fmt.Errorf("--sink: %w", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("SMTP sink: %w", err)
	}
	s := &sink{addr: ln.Addr().String(), served: make(chan struct{}), allowed: map[string]bool{},
		admin: strings.ToLower(adminAddress)}
	s.allowed[s.admin] = true
	s.srv = smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) { return &sinkSession{s: s}, nil }))
	s.srv.Domain = "kms-load.localhost"
	s.srv.MaxMessageBytes = 4 << 20
	s.srv.MaxRecipients = 100
	s.srv.ReadTimeout = 5 * time.Minute
	s.srv.WriteTimeout = time.Minute
	s.srv.ErrorLog = log.New(logw, "kms-load: SMTP sink: ", 0)
	go func() {
		s.srv.Serve(ln)
		close(s.served)
	}()
	return s, nil
}

// close stops the sink. It closes sessions rather than waiting for them:
// the daemon's relay keeps its sessions open between messages.
func (s *sink) close() {
	s.srv.Close()
	<-s.served
}

// allow adds recipients the sink accepts mail for.
func (s *sink) allow(addrs ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range addrs {
		s.allowed[strings.ToLower(a)] = true
	}
}

// setHandler has h called with every message from now on.
func (s *sink) setHandler(h func(*reply)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.handler = h
}

// received returns the messages received so far.
func (s *sink) received() []*reply {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*reply(nil), s.msgs...)
}

// adminMail counts the messages received for the admin address.
func (s *sink) adminMail() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, m := range s.msgs {
		for _, r := range m.rcpts {
			if strings.EqualFold(r, s.admin) {
				n++
				break
			}
		}
	}
	return n
}

// sinkSession is one SMTP session of the daemon's relay.
type sinkSession struct {
	s     *sink
	rcpts []string
}

func (ss *sinkSession) Reset()        { ss.rcpts = nil }
func (ss *sinkSession) Logout() error { return nil }

func (ss *sinkSession) Mail(string, *smtp.MailOptions) error {
	ss.rcpts = nil
	return nil
}

// Rcpt accepts the run's users and the admin address; anyone else is
// refused permanently, so that mail the run did not expect shows in the
// daemon's log instead of being counted.
func (ss *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	ss.s.mu.Lock()
	ok := ss.s.allowed[strings.ToLower(to)]
	ss.s.mu.Unlock()
	if !ok {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user in this load run"}
	}
	ss.rcpts = append(ss.rcpts, to)
	return nil
}

// Data keeps the message and hands it to the generator before the 250.
func (ss *sinkSession) Data(r io.Reader) error {
	var b bytes.Buffer
	b.Grow(8 << 10)
	if _, err := b.ReadFrom(r); err != nil {
		if errors.Is(err, smtp.ErrDataTooLarge) {
			return err
		}
		return fmt.Errorf("reading the message: %w", err)
	}
	m := &reply{raw: b.Bytes(), at: time.Now(), rcpts: ss.rcpts}
	ss.rcpts = nil
	ss.s.mu.Lock()
	ss.s.msgs = append(ss.s.msgs, m)
	m.where = fmt.Sprintf("message %d at the SMTP sink", len(ss.s.msgs))
	h := ss.s.handler
	ss.s.mu.Unlock()
	if h != nil {
		h(m)
	}
	return nil
}

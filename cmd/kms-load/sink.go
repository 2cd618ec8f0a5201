package main

import (
	"fmt"
	"io"
	"log"
	"net"
	"strings"
	"sync"
	"time"
)

// sink is the SMTP server the daemon's relay transport delivers to: the
// mail clients' side of the reply path, in memory. It accepts mail for the
// run's users and the admin address only, with no TLS and no
// authentication (it listens on loopback), and keeps every message's raw
// bytes and arrival time. Each message is also handed to the generator as
// it arrives, from the SMTP session's goroutine, so replies are matched
// without polling anything.
//
// It is a minimal SMTP server of its own (sinkConn) rather than a library
// one because it shares the CPUs with the daemon it measures: it reads a
// message a line at a time out of a large buffer instead of a byte at a
// time, and answers pipelined commands in one write.
type sink struct {
	addr string
	ln   net.Listener
	log  *log.Logger
	wg   sync.WaitGroup // the accept loop and the sessions

	mu      sync.Mutex
	closed  bool
	conns   map[net.Conn]bool // open sessions, closed by close
	allowed map[string]bool   // lower-case recipient addresses accepted
	admin   string            // the admin address, lower case
	msgs    []*reply          // everything received, in order
	handler func(*reply)      // the generator's; nil: messages are only kept
}

// reply is a message the daemon sent: through the sink, or a Maildir file.
type reply struct {
	raw   []byte    // the message as received (CRLF from the sink, LF from a Maildir)
	at    time.Time // when it arrived: the end of DATA, or the file seen in new/
	rcpts []string  // the envelope recipients; nil for a Maildir file
	where string    // where it was received, for error messages
}

// The sink's limits: those it had as a go-smtp server.
const (
	sinkMaxMessage = 4 << 20 // bytes of a message, dot-unstuffed
	sinkMaxRcpts   = 100     // recipients of a transaction
	// sinkMaxLine bounds a command line and a line of a message,
	// CRLF included (RFC 5321 asks for 1000 at least).
	sinkMaxLine       = 2000
	sinkReadTimeout   = 5 * time.Minute
	sinkWriteTimeout  = time.Minute
	sinkReadBuffer    = 64 << 10 // a reply of the daemon, some 6-8 KB, in one read
	sinkHostname      = "kms-load.localhost"
	sinkMessageBuffer = 8 << 10 // what a message's buffer starts with
)

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
	s := &sink{addr: ln.Addr().String(), ln: ln, log: log.New(logw, "kms-load: SMTP sink: ", 0),
		conns: map[net.Conn]bool{}, allowed: map[string]bool{}, admin: strings.ToLower(adminAddress)}
	s.allowed[s.admin] = true
	s.wg.Add(1)
	go s.serve()
	return s, nil
}

// serve accepts connections until close, each served on a goroutine.
func (s *sink) serve() {
	defer s.wg.Done()
	pause := 5 * time.Millisecond
	for {
		conn, err := s.ln.Accept()
		if err != nil {
			if s.isClosed() {
				return
			}
			// Out of file descriptors, say: wait rather than spin.
			s.log.Printf("accept: %v", err)
			time.Sleep(pause)
			pause = min(2*pause, time.Second)
			continue
		}
		pause = 5 * time.Millisecond
		if !s.track(conn) {
			conn.Close()
			return
		}
		go func() {
			defer s.wg.Done()
			defer s.untrack(conn)
			newSinkConn(s, conn).serve()
		}()
	}
}

func (s *sink) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// track registers a session, unless the sink is closing.
func (s *sink) track(conn net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[conn] = true
	s.wg.Add(1)
	return true
}

func (s *sink) untrack(conn net.Conn) {
	conn.Close()
	s.mu.Lock()
	delete(s.conns, conn)
	s.mu.Unlock()
}

// close stops the sink. It closes sessions rather than waiting for them:
// the daemon's relay keeps its sessions open between messages.
func (s *sink) close() {
	s.mu.Lock()
	s.closed = true
	s.ln.Close()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// allow adds recipients the sink accepts mail for.
func (s *sink) allow(addrs ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range addrs {
		s.allowed[strings.ToLower(a)] = true
	}
}

// accepts says whether mail for the recipient rcpt is taken.
func (s *sink) accepts(rcpt string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.allowed[strings.ToLower(rcpt)]
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

// keep records a message and hands it to the generator, before its 250.
func (s *sink) keep(raw []byte, rcpts []string) {
	m := &reply{raw: raw, at: time.Now(), rcpts: rcpts}
	s.mu.Lock()
	s.msgs = append(s.msgs, m)
	m.where = fmt.Sprintf("message %d at the SMTP sink", len(s.msgs))
	h := s.handler
	s.mu.Unlock()
	if h != nil {
		h(m)
	}
}

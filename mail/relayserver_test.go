package mail

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// testRelay is a real SMTP submission server on 127.0.0.1:0 with error
// injection, in the manner of maddy's testutils: STARTTLS with a
// self-signed certificate, AUTH PLAIN checked against one account, and
// per-recipient scripted replies to RCPT TO.
type testRelay struct {
	addr string
	pool *x509.CertPool // trusts the server's certificate; nil without TLS

	mu       sync.Mutex
	script   map[string][]int // recipient -> reply codes for successive RCPTs; the last repeats
	mailCode int              // the reply to MAIL FROM when not 0 (a 5xx: the relay refuses the sender)
	rcpts    map[string]int   // RCPTs seen per recipient
	msgs     []relayed
	authSeen int
	sessions int // SMTP sessions opened
}

// relayed is a message the relay accepted.
type relayed struct {
	from string
	to   []string
	data []byte
	tls  bool
	user string
}

const (
	relayUser = "kms-relay"
	relayPass = "s3cret relay password"
)

// startRelay starts a relay; withTLS offers STARTTLS and then requires
// AUTH before MAIL.
func startRelay(t testing.TB, withTLS bool) *testRelay {
	t.Helper()
	r := &testRelay{script: map[string][]int{}, rcpts: map[string]int{}}
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		r.mu.Lock()
		r.sessions++
		r.mu.Unlock()
		_, on := c.TLSConnectionState()
		return &relaySession{relay: r, tls: on, needAuth: withTLS}, nil
	}))
	srv.Domain = "relay.test"
	srv.ErrorLog = discardPrinter{}
	if withTLS {
		var cert tls.Certificate
		cert, r.pool = selfSigned(t)
		srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{cert}}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = ln.Addr().String()
	done := make(chan struct{})
	go func() { srv.Serve(ln); close(done) }()
	t.Cleanup(func() {
		// Close, not Shutdown: a client may keep a session open between
		// messages (Relay pools them), and tests need not wait for it.
		srv.Close()
		<-done
	})
	return r
}

// reply scripts the replies to RCPT TO:<rcpt>, e.g. 451, 250: a temporary
// failure, then acceptance.
func (r *testRelay) reply(rcpt string, codes ...int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.script[rcpt] = codes
}

// auths counts the AUTH attempts the relay saw.
func (r *testRelay) auths() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.authSeen
}

// rcptCount counts the RCPT TO the relay saw for rcpt.
func (r *testRelay) rcptCount(rcpt string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.rcpts[rcpt]
}

func (r *testRelay) received() []relayed {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]relayed(nil), r.msgs...)
}

// relayConfig is a RelayConfig for this server that works.
func (r *testRelay) relayConfig() RelayConfig {
	cfg := RelayConfig{Addr: r.addr, Hostname: "kms.example.com"}
	if r.pool != nil {
		cfg.Username, cfg.Password = relayUser, []byte(relayPass)
		cfg.TLSConfig = &tls.Config{RootCAs: r.pool, ServerName: "localhost"}
	}
	return cfg
}

type relaySession struct {
	relay    *testRelay
	tls      bool
	needAuth bool
	user     string
	from     string
	to       []string
}

func (s *relaySession) AuthMechanisms() []string { return []string{sasl.Plain} }

func (s *relaySession) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, user, pass string) error {
		s.relay.mu.Lock()
		s.relay.authSeen++
		s.relay.mu.Unlock()
		if user != relayUser || pass != relayPass {
			return smtp.ErrAuthFailed
		}
		s.user = user
		return nil
	}), nil
}

func (s *relaySession) Mail(from string, _ *smtp.MailOptions) error {
	if s.needAuth && s.user == "" {
		return smtp.ErrAuthRequired
	}
	s.relay.mu.Lock()
	code := s.relay.mailCode
	s.relay.mu.Unlock()
	if code != 0 {
		return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "sender address rejected"}
	}
	s.from = from
	return nil
}

func (s *relaySession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.relay.mu.Lock()
	codes := s.relay.script[to]
	n := s.relay.rcpts[to]
	s.relay.rcpts[to]++
	s.relay.mu.Unlock()
	code := 250
	if len(codes) > 0 {
		code = codes[min(n, len(codes)-1)]
	}
	switch code / 100 {
	case 2:
		s.to = append(s.to, to)
		return nil
	case 4:
		return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{4, 2, 0}, Message: "mailbox busy, try later"}
	default:
		return &smtp.SMTPError{Code: code, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such mailbox"}
	}
}

func (s *relaySession) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.relay.mu.Lock()
	defer s.relay.mu.Unlock()
	s.relay.msgs = append(s.relay.msgs, relayed{from: s.from, to: s.to, data: data, tls: s.tls, user: s.user})
	return nil
}

func (s *relaySession) Reset()        { s.from, s.to = "", nil }
func (s *relaySession) Logout() error { return nil }

type discardPrinter struct{}

func (discardPrinter) Printf(string, ...any) {}
func (discardPrinter) Println(...any)        {}

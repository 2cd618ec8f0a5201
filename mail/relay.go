package mail

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-sasl"

	"github.com/kmsmail/kms/mail/smtpclient"
)

// Errors of the relay session that are about the relay or the
// configuration rather than the message.
var (
	// ErrNoStartTLS: the relay does not offer STARTTLS and relay.starttls
	// requires it.
	ErrNoStartTLS = errors.New("the relay does not offer STARTTLS, which relay.starttls requires (fix the relay, or set relay.starttls: false for a relay on a trusted network)")
	// ErrAuthInClear: a username is configured but the session is not
	// encrypted, and kms does not send a password in clear.
	ErrAuthInClear = errors.New("refusing to send the relay password over an unencrypted connection (enable STARTTLS on the relay and relay.starttls, or remove relay.username)")
)

// RelayConfig configures a Relay. The zero value of every field but Addr
// and Hostname is a working default, and the secure one: STARTTLS required.
type RelayConfig struct {
	Addr     string // host:port of the submission server
	Hostname string // the name kms gives in EHLO (config smtp.hostname)
	Username string // "" means no AUTH
	Password []byte // read by the caller from relay.password_file or KMS_RELAY_PASSWORD
	// AllowPlaintext is relay.starttls: false. The session then stays in
	// clear, even if the relay offers STARTTLS: such relays are typically a
	// local MTA with a self-signed certificate that would fail verification.
	AllowPlaintext bool
	// TLSConfig verifies the relay's certificate; nil means the system
	// roots and the host name of Addr.
	TLSConfig   *tls.Config
	DialTimeout time.Duration // default 30s
	// Timeout bounds the wait for each reply, including the one after the
	// message data. Default 2 minutes; the whole session is further bounded
	// by the context passed to Deliver.
	Timeout time.Duration
}

// Relay delivers through an SMTP submission server. Sessions are kept
// open between messages (see pooledClient), and each message's MAIL, RCPT
// and DATA are pipelined when the relay offers PIPELINING, or sent with
// the message as one BDAT chunk when it also offers CHUNKING (smtpclient).
//
// Failures are classified by where they happen. Up to and including MAIL
// FROM (connect, TLS, EHLO, AUTH) a failure is the relay's or the
// configuration's and would hit every message alike, so it is temporary even
// when the reply is a 5xx: mail waits in the queue for the operator instead
// of being given up wholesale. A 5xx to RCPT TO or to the message data is
// about this message and is permanent.
type Relay struct {
	addr, hostname   string
	username         string
	password         string
	plain            bool
	tls              *tls.Config
	dial, cmdTimeout time.Duration
	idle             chan *pooledClient // open sessions ready for the next message
}

// pooledClient is an SMTP session kept open between messages, so that a
// burst of mail (a cohort's reminders) does not pay a connection, a TLS
// handshake and AUTH for every message.
type pooledClient struct {
	conn  net.Conn // the TCP connection, under TLS if any
	c     *smtpclient.Client
	since time.Time // when it was last used
	sent  int       // messages this session has carried
}

// Pooling limits: relays close idle sessions after a few minutes (RFC 5321
// asks servers to wait 5), and a session carries a bounded number of
// messages so that a relay's per-session limits are never reached. At
// least relayPoolSize sessions are kept, and as many as the outbox has
// delivery workers by default (four per P): with fewer, every delivery
// beyond the pool ended its session and the next one dialled again.
const (
	relayIdleMax     = 30 * time.Second
	relayPoolSize    = 8
	relayMaxMessages = 100
)

// NewRelay checks cfg and returns a Relay.
func NewRelay(cfg RelayConfig) (*Relay, error) {
	host, _, err := net.SplitHostPort(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("relay.addr %q: want host:port, e.g. smtp.example.com:587: %w", cfg.Addr, err)
	}
	if cfg.Hostname == "" {
		return nil, errors.New("relay: empty EHLO hostname (set smtp.hostname)")
	}
	if cfg.Username != "" && cfg.AllowPlaintext {
		return nil, fmt.Errorf("relay: %w", ErrAuthInClear)
	}
	r := &Relay{addr: cfg.Addr, hostname: cfg.Hostname, username: cfg.Username, password: string(cfg.Password),
		plain: cfg.AllowPlaintext, dial: cfg.DialTimeout, cmdTimeout: cfg.Timeout, idle: make(chan *pooledClient, max(relayPoolSize, defaultWorkers()))}
	if r.dial <= 0 {
		r.dial = 30 * time.Second
	}
	if r.cmdTimeout <= 0 {
		r.cmdTimeout = 2 * time.Minute
	}
	if cfg.TLSConfig != nil {
		r.tls = cfg.TLSConfig.Clone()
	} else {
		r.tls = &tls.Config{}
	}
	if r.tls.ServerName == "" {
		r.tls.ServerName = host
	}
	if r.tls.MinVersion == 0 {
		r.tls.MinVersion = tls.VersionTLS12
	}
	return r, nil
}

// Deliver sends msg to the relay, over a session kept open from an
// earlier message when there is one, else a new one. Cancelling ctx aborts
// the session.
func (r *Relay) Deliver(ctx context.Context, from string, to []string, msg []byte, _ string) error {
	if len(to) == 0 {
		return Permanent(errors.New("relay: no recipient"))
	}
	if pc := r.takeIdle(); pc != nil {
		sent, err := r.transact(ctx, pc, from, to, msg)
		if err == nil || sent || IsPermanent(err) || ctx.Err() != nil {
			return err
		}
		// The kept session failed before the relay had the message (it
		// timed out on its side, say): nothing was delivered, so a fresh
		// session may try at once.
	}
	pc, err := r.connect(ctx)
	if err != nil {
		return err
	}
	_, err = r.transact(ctx, pc, from, to, msg)
	return err
}

// takeIdle returns a kept session that is recent enough, closing stale ones.
func (r *Relay) takeIdle() *pooledClient {
	for {
		select {
		case pc := <-r.idle:
			if time.Since(pc.since) < relayIdleMax {
				return pc
			}
			pc.c.Close()
		default:
			return nil
		}
	}
}

// connect opens, greets and authenticates a new session.
func (r *Relay) connect(ctx context.Context) (*pooledClient, error) {
	d := net.Dialer{Timeout: r.dial}
	conn, err := d.DialContext(ctx, "tcp", r.addr)
	if err != nil {
		return nil, fmt.Errorf("relay %s: connect: %w", r.addr, err)
	}
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	c, err := r.open(conn)
	if err == nil {
		err = r.auth(c)
	}
	if err != nil {
		conn.Close()
		return nil, err
	}
	return &pooledClient{conn: conn, c: c}, nil
}

// transact sends one message on pc, then keeps the session for the next
// message or closes it. sent reports whether the relay may have the
// message, i.e. the failure came after DATA began; before that a retry on
// a new session cannot duplicate it.
func (r *Relay) transact(ctx context.Context, pc *pooledClient, from string, to []string, msg []byte) (sent bool, err error) {
	// The client's timeout bounds each reply only; closing the connection
	// is what makes the context bound the whole transaction.
	stop := context.AfterFunc(ctx, func() { pc.conn.Close() })
	sent, err = r.send(pc.c, from, to, msg)
	pc.sent++
	cancelled := !stop() || ctx.Err() != nil
	switch {
	case err == nil && !cancelled:
		r.keep(pc)
		return true, nil
	case err != nil && cancelled:
		pc.c.Close()
		return sent, fmt.Errorf("relay %s: %w (%v)", r.addr, ctx.Err(), err)
	case err != nil && IsPermanent(err) && pc.c.Reset() == nil:
		// The relay refused this message; the session is fine for others.
		r.keep(pc)
		return sent, err
	}
	pc.c.Close()
	return sent, err
}

// keep puts a session back for the next message, or ends it.
func (r *Relay) keep(pc *pooledClient) {
	pc.since = time.Now()
	if pc.sent >= relayMaxMessages {
		_ = pc.c.Quit()
		return
	}
	select {
	case r.idle <- pc:
	default:
		_ = pc.c.Quit()
	}
}

// Close ends the kept sessions.
func (r *Relay) Close() {
	for pc := r.takeIdle(); pc != nil; pc = r.takeIdle() {
		_ = pc.c.Quit()
	}
}

// auth logs in when a username is configured, over TLS only.
func (r *Relay) auth(c *smtpclient.Client) error {
	if r.username == "" {
		return nil
	}
	if _, ok := c.TLSConnectionState(); !ok {
		return fmt.Errorf("relay %s: %w", r.addr, ErrAuthInClear)
	}
	_, mechs := c.Extension("AUTH")
	if !slices.Contains(strings.Fields(strings.ToUpper(mechs)), sasl.Plain) {
		return fmt.Errorf("relay %s: does not offer AUTH PLAIN, the only mechanism kms uses", r.addr)
	}
	if err := c.Auth(sasl.NewPlainClient("", r.username, r.password)); err != nil {
		return fmt.Errorf("relay %s: AUTH as %s refused (check relay.username and the password): %w", r.addr, r.username, err)
	}
	return nil
}

// send runs one mail transaction. A 5xx to MAIL FROM is the relay's or
// the configuration's (see Relay) and stays temporary; a 5xx to RCPT, DATA
// or the message's data is about this message and is permanent.
func (r *Relay) send(c *smtpclient.Client, from string, to []string, msg []byte) (sent bool, err error) {
	sent, err = c.Send(from, to, msg)
	if err == nil {
		return true, nil
	}
	err = fmt.Errorf("relay %s: %w", r.addr, err)
	var reply *smtpclient.Reply
	if errors.As(err, &reply) && reply.Code >= 500 && reply.Code < 600 && !strings.HasPrefix(reply.Command, "MAIL") {
		return sent, Permanent(err)
	}
	return sent, err
}

// open greets the relay, says EHLO as our hostname and, unless plaintext
// is allowed, starts TLS (which says EHLO again inside it: that is the one
// the relay's policy sees).
func (r *Relay) open(conn net.Conn) (*smtpclient.Client, error) {
	c, err := smtpclient.New(conn, r.cmdTimeout)
	if err != nil {
		return nil, fmt.Errorf("relay %s: %w", r.addr, err)
	}
	if err := c.Hello(r.hostname); err != nil {
		return nil, fmt.Errorf("relay %s: %w", r.addr, err)
	}
	if r.plain {
		return c, nil
	}
	if ok, _ := c.Extension("STARTTLS"); !ok {
		return nil, fmt.Errorf("relay %s: %w", r.addr, ErrNoStartTLS)
	}
	if err := c.StartTLS(r.tls); err != nil {
		return nil, fmt.Errorf("relay %s: STARTTLS: %w", r.addr, err)
	}
	return c, nil
}

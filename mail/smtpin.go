package mail

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmsmail/kms/clock"
	"github.com/kmsmail/kms/kms"
)

// InboundStore is the part of the store the SMTP listener uses (*kms.Store
// implements it). AcceptInbound must be durable when it returns: the
// listener answers 250 right after.
type InboundStore interface {
	AcceptInbound(ctx context.Context, raw []byte, mailFrom, remoteAddr string, now time.Time) (id int64, duplicate bool, err error)
	// AcceptInboundClaimed is AcceptInbound storing a new message already
	// claimed for lease (> 0), for a hand-over (see InboundHandoff).
	AcceptInboundClaimed(ctx context.Context, raw []byte, mailFrom, remoteAddr string, now time.Time, lease time.Duration) (id int64, duplicate bool, err error)
}

// ServerConfig configures the inbound SMTP server. Zero values of the
// limits take the defaults shown; none of them means "unlimited".
type ServerConfig struct {
	Addr            string // listen address, for ListenAndServe (config smtp.listen)
	Hostname        string // greeting name (smtp.hostname)
	Address         string // the KMS address, the only recipient accepted
	MaxMessageBytes int64  // default 1 MiB
	// TLSConfig enables STARTTLS when non-nil. STARTTLS is offered, not
	// required: the sending MTA decides, and a request's authenticity rests
	// on its code or signature, not on the transport.
	TLSConfig           *tls.Config
	ReadTimeout         time.Duration // per command, and for the whole DATA; default 5 minutes
	WriteTimeout        time.Duration // per reply; default 1 minute
	MaxConnectionsPerIP int           // 0: no cap
	MaxSessionTime      time.Duration // a connection is closed after this long; default 30 minutes
	Store               InboundStore
	Clock               clock.Clock  // default clock.System{}
	Log                 *slog.Logger // default: discard
	Notify              func()       // called after each newly stored message not handed over; must not block
	// Handoff, if set, is given each newly stored message (the request
	// processor), which then need not claim it from the store.
	Handoff    InboundHandoff
	Registerer prometheus.Registerer // nil: metrics are kept but not registered
}

// Server is the KMS's inbound SMTP server. It is never an open relay: RCPT
// is accepted for the KMS address only (compared case-insensitively), at
// most maxRecipients times. A message is read whole and committed to the
// store before the 250; a store failure is a 451, so the client keeps the
// message and retries; a retry of a message already stored (the 250 was
// lost) is answered 250 and not stored again. The null sender is accepted:
// the processing layer drops such mail unanswered.
//
// Trace header: the stored bytes are the client's bytes exactly, with no
// Received: header prepended. The store recognises a retried message by
// the digest of its bytes, and a Received: header (its time, the client's
// port or even IP may differ on a retry) would make every retry look new.
// The trace data RFC 5321 section 4.4 asks for is kept instead in the
// inbound row (remote_addr, received_at) and the "message accepted" log
// line (IP, HELO name, TLS, envelope sender, row id). Either choice would
// leave S/MIME verification alone: headers outside the signed part are not
// covered by a multipart/signed signature, nor by an opaque one.
type Server struct {
	srv    *smtp.Server
	cfg    ServerConfig
	addr   string // the KMS address
	m      serverMetrics
	lnMu   sync.Mutex
	lns    []*limitListener
	commit sync.RWMutex // held shared while a message is committed
	closed bool         // guarded by commit
}

type serverMetrics struct {
	accepted, duplicate prometheus.Counter
	rejected            *prometheus.CounterVec
}

// Reasons a message or connection is refused, the label of
// kms_smtp_rejected_total.
const (
	rejectRecipient   = "recipient"   // RCPT for another address: 550
	rejectRecipients  = "recipients"  // too many RCPT: 452
	rejectSize        = "size"        // over max_message_bytes: 552
	rejectStore       = "store"       // the store failed: 451
	rejectAborted     = "aborted"     // the client went away during DATA/BDAT
	rejectConnections = "connections" // over the per-IP cap: 421
)

// maxRecipients is how many RCPT a transaction may have. Only one address
// is ever accepted; a client that repeats it a few times is odd but
// harmless, more is someone probing.
const maxRecipients = 5

// NewServer checks cfg and builds the server; Serve starts it.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.Store == nil {
		return nil, errors.New("smtp: no store")
	}
	if at := strings.LastIndexByte(cfg.Address, '@'); at <= 0 || at == len(cfg.Address)-1 {
		return nil, fmt.Errorf("smtp: KMS address %q is not user@domain (set `address`)", cfg.Address)
	}
	if cfg.Hostname == "" {
		return nil, errors.New("smtp: empty hostname (set smtp.hostname)")
	}
	if cfg.MaxMessageBytes <= 0 {
		cfg.MaxMessageBytes = 1 << 20
	}
	cfg.ReadTimeout = orDefault(cfg.ReadTimeout, 5*time.Minute)
	cfg.WriteTimeout = orDefault(cfg.WriteTimeout, time.Minute)
	cfg.MaxSessionTime = orDefault(cfg.MaxSessionTime, 30*time.Minute)
	if cfg.Clock == nil {
		cfg.Clock = clock.System{}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Notify == nil {
		cfg.Notify = func() {}
	}
	s := &Server{cfg: cfg, addr: cfg.Address}
	s.m = serverMetrics{
		accepted: prometheus.NewCounter(prometheus.CounterOpts{Name: "kms_smtp_accepted_total",
			Help: "Messages received over SMTP and stored."}),
		duplicate: prometheus.NewCounter(prometheus.CounterOpts{Name: "kms_smtp_duplicate_total",
			Help: "Messages received again after being stored (answered 250, not stored twice)."}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kms_smtp_rejected_total",
			Help: "SMTP recipients, messages and connections refused, by reason."}, []string{"reason"}),
	}
	for _, r := range []string{rejectRecipient, rejectRecipients, rejectSize, rejectStore, rejectAborted, rejectConnections} {
		s.m.rejected.WithLabelValues(r)
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{s.m.accepted, s.m.duplicate, s.m.rejected} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("smtp: register metrics: %w", err)
			}
		}
	}

	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Addr = cfg.Addr
	srv.Domain = cfg.Hostname
	srv.TLSConfig = cfg.TLSConfig
	// go-smtp enforces this for DATA (while reading), for BDAT (summing the
	// chunk sizes before reading each) and for MAIL SIZE=.
	// go-smtp stops reading DATA after exactly MaxMessageBytes and then
	// fails, before it sees the final dot: a message of exactly the limit
	// would get 552. One byte more here lets it through; Data keeps the
	// exact limit (a message over it is still refused with 552).
	srv.MaxMessageBytes = cfg.MaxMessageBytes + 1
	srv.ReadTimeout = cfg.ReadTimeout
	srv.WriteTimeout = cfg.WriteTimeout
	srv.ErrorLog = slogPrinter{cfg.Log}
	s.srv = srv
	return s, nil
}

// Serve accepts connections on ln until Shutdown. It returns nil after
// Shutdown, or the listener's error.
func (s *Server) Serve(ln net.Listener) error {
	ll := newLimitListener(ln, s.cfg.MaxConnectionsPerIP, s.cfg.MaxSessionTime, func(ip string) {
		s.m.rejected.WithLabelValues(rejectConnections).Inc()
		s.cfg.Log.Warn("smtp: connection refused: too many from one address", "ip", ip, "max", s.cfg.MaxConnectionsPerIP)
	})
	s.lnMu.Lock()
	s.lns = append(s.lns, ll)
	s.lnMu.Unlock()
	return s.srv.Serve(ll)
}

// ListenAndServe listens on cfg.Addr and serves.
func (s *Server) ListenAndServe() error {
	ln, err := net.Listen("tcp", s.cfg.Addr)
	if err != nil {
		return fmt.Errorf("smtp: listen on %s (smtp.listen): %w", s.cfg.Addr, err)
	}
	return s.Serve(ln)
}

// Shutdown stops accepting connections and waits for the open ones to end
// until ctx is done; then it closes those left, waits for messages being
// committed to the store, and returns ctx's error. Nothing is lost by the
// close: a message is acknowledged only after it is stored, and a client
// cut off before its 250 sends it again.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if err != nil && ctx.Err() != nil {
		s.lnMu.Lock()
		for _, ll := range s.lns {
			ll.closeAll()
		}
		s.lnMu.Unlock()
	}
	s.commit.Lock()
	s.closed = true
	s.commit.Unlock()
	if errors.Is(err, smtp.ErrServerClosed) {
		return nil
	}
	return err
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	_, tlsOn := c.TLSConnectionState()
	return &session{srv: s, remote: c.Conn().RemoteAddr().String(), helo: c.Hostname(), tls: tlsOn}, nil
}

// session is one SMTP connection's state between EHLO and QUIT.
type session struct {
	srv    *Server
	remote string
	helo   string
	tls    bool
	// With BDAT, go-smtp runs Data in a goroutine of its own and may call
	// Reset while it is still running (an aborted transfer), hence mu.
	mu    sync.Mutex
	from  string
	rcpts int
}

// Errors at the protocol edge: a code and a generic text; the cause goes
// to the log only.
var (
	errNoSuchUser = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1},
		Message: "no such user here; this server only accepts mail for its own address"}
	errTooManyRcpts = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3},
		Message: "too many recipients"}
	errTempFailure = &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0},
		Message: "temporary local problem, please try again later"}
	errShuttingDown = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2},
		Message: "shutting down, please try again later"}
)

// sender returns the envelope sender of the transaction.
func (s *session) sender() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.from
}

func (s *session) log() *slog.Logger {
	return s.srv.cfg.Log.With("remote", s.remote, "helo", s.helo, "tls", s.tls, "mail_from", s.sender())
}

func (s *session) Mail(from string, _ *smtp.MailOptions) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.from, s.rcpts = from, 0
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !strings.EqualFold(strings.TrimSpace(to), s.srv.addr) {
		s.srv.m.rejected.WithLabelValues(rejectRecipient).Inc()
		s.srv.cfg.Log.Info("smtp: recipient refused", "remote", s.remote, "helo", s.helo, "mail_from", s.from, "rcpt", to)
		return errNoSuchUser
	}
	if s.rcpts >= maxRecipients {
		s.srv.m.rejected.WithLabelValues(rejectRecipients).Inc()
		s.srv.cfg.Log.Info("smtp: too many recipients", "remote", s.remote, "helo", s.helo, "mail_from", s.from, "max", maxRecipients)
		return errTooManyRcpts
	}
	s.rcpts++
	return nil
}

func (s *session) Data(r io.Reader) error {
	from := s.sender()
	max := s.srv.cfg.MaxMessageBytes
	// go-smtp bounds r already; the limit here keeps that true whatever
	// the transfer mode.
	raw, err := io.ReadAll(io.LimitReader(r, max+1))
	if err == nil && int64(len(raw)) > max {
		err = smtp.ErrDataTooLarge
	}
	if err != nil {
		var se *smtp.SMTPError
		if errors.As(err, &se) && se.Code == smtp.ErrDataTooLarge.Code {
			s.srv.m.rejected.WithLabelValues(rejectSize).Inc()
			s.log().Info("smtp: message refused: too large", "max_bytes", max)
			return smtp.ErrDataTooLarge
		}
		s.srv.m.rejected.WithLabelValues(rejectAborted).Inc()
		s.log().Info("smtp: message transfer aborted", "err", err)
		return err
	}
	return s.store(raw, from)
}

// maxHandedOverBytes is the largest message handed to the processor in
// memory (InboundHandoff). A request is a few kilobytes; with at most
// handoverRoom messages waiting, this bounds their memory to 64 MiB
// whatever max_message_bytes allows.
const maxHandedOverBytes = 64 << 10

// store commits raw; only its success may become a 250.
func (s *session) store(raw []byte, from string) error {
	s.srv.commit.RLock()
	defer s.srv.commit.RUnlock()
	if s.srv.closed {
		return errShuttingDown
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	now := s.srv.cfg.Clock.Now()
	h := s.srv.cfg.Handoff
	if len(raw) > maxHandedOverBytes {
		h = nil // memory stays bounded: the processor claims it from the store
	}
	var lease time.Duration
	if h != nil {
		var ok bool
		if lease, ok = h.Reserve(); !ok {
			h, lease = nil, 0
		}
	}
	id, dup, err := s.srv.cfg.Store.AcceptInboundClaimed(ctx, raw, from, s.remote, now, lease)
	if h != nil && (err != nil || dup) {
		h.Cancel()
	}
	if err != nil {
		s.srv.m.rejected.WithLabelValues(rejectStore).Inc()
		s.log().Error("smtp: cannot store message; answered 451", "bytes", len(raw), "err", err)
		return errTempFailure
	}
	if dup {
		s.srv.m.duplicate.Inc()
		s.log().Info("smtp: message received again; already stored", "inbound_id", id, "bytes", len(raw))
		return nil
	}
	if h != nil {
		// As the row stores it (milliseconds, UTC), so that a message is
		// verified at the same instant whichever way it reaches the
		// processor.
		received := time.UnixMilli(now.UnixMilli()).UTC()
		h.Deliver(kms.Inbound{ID: id, MailFrom: from, RemoteAddr: s.remote, Raw: raw, ReceivedAt: received, Attempts: 1})
	}
	s.srv.m.accepted.Inc()
	s.log().Info("smtp: message accepted", "inbound_id", id, "bytes", len(raw))
	if h == nil {
		s.srv.cfg.Notify() // a hand-over wakes its taker itself
	}
	return nil
}

func (s *session) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.from, s.rcpts = "", 0
}

func (s *session) Logout() error { return nil }

// slogPrinter sends go-smtp's internal errors (a connection reset, a
// panic in a handler) to the daemon's log.
type slogPrinter struct{ log *slog.Logger }

func (p slogPrinter) Printf(format string, v ...any) {
	p.log.Info("smtp: " + fmt.Sprintf(format, v...))
}
func (p slogPrinter) Println(v ...any) { p.log.Info("smtp: " + strings.TrimSpace(fmt.Sprintln(v...))) }

package mail

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmsmail/kms/clock"
)

// IMAPSecurity says how the connection to the IMAP server is encrypted.
// There is no plaintext mode: the account password never crosses the
// network in clear.
type IMAPSecurity int

// The ways to reach an IMAP server.
const (
	// IMAPSecurityAuto chooses by port, as imap.addr documents it: 993 is
	// implicit TLS, every other port (143, normally) STARTTLS.
	IMAPSecurityAuto IMAPSecurity = iota
	// IMAPImplicitTLS speaks TLS from the first byte (port 993).
	IMAPImplicitTLS
	// IMAPStartTLS connects in clear and upgrades with STARTTLS before
	// logging in; a server that refuses STARTTLS is an error.
	IMAPStartTLS
)

// Errors of an IMAP session that are about the account or the
// configuration; Run retries them with a longer backoff than network
// errors, since they need an administrator.
var (
	// ErrIMAPLogin: the server refused the username or password.
	ErrIMAPLogin = errors.New("the IMAP server refused the login (check imap.username and the password in imap.password_file or KMS_IMAP_PASSWORD)")
	// ErrIMAPMailbox: the mailbox to fetch from cannot be selected, or
	// the folder fetched messages move to cannot be created.
	ErrIMAPMailbox = errors.New("the IMAP mailbox cannot be used (check imap.mailbox, and that the account may read and change it)")
)

// imapFlagTooLarge marks a message over the size limit, so that later
// passes leave it alone. \Flagged is set with it, for the administrator
// looking at the mailbox with a mail client.
const imapFlagTooLarge imap.Flag = "$KMSTooLarge"

// IMAPOptions configures an IMAPFetcher. Addr, Username, Password and
// Store are required; every other zero value is a working default.
type IMAPOptions struct {
	Addr     string // host:port (imap.addr)
	Username string // imap.username
	Password []byte // from config.IMAPPassword
	Mailbox  string // imap.mailbox; default INBOX
	Security IMAPSecurity
	// TLSConfig verifies the server's certificate; nil means the system
	// roots and the host name of Addr.
	TLSConfig *tls.Config
	// DoneFolder is where a message goes once it is stored. The default,
	// "", deletes it from Mailbox (\Deleted, then UID EXPUNGE where the
	// server has UIDPLUS, else EXPUNGE): the store keeps the message's
	// exact bytes in its inbound row, so the mailbox copy is redundant, and
	// a mailbox that only grows would one day hit its quota and refuse new
	// requests. A folder name keeps a copy on the server instead (MOVE, or
	// COPY then delete); the folder is created if missing. Each session
	// starts with an EXPUNGE, which finishes a removal a dropped session
	// left half done (the message marked \Deleted, not yet expunged).
	DoneFolder string
	// MaxMessageBytes is the largest message fetched (default 1 MiB; pass
	// smtp.max_message_bytes). A larger one is never downloaded: it stays
	// in the mailbox, flagged, and is logged and counted once.
	MaxMessageBytes int64
	// PollInterval is how often the mailbox is searched; default 30s. A
	// server with IDLE wakes the fetcher sooner when mail arrives.
	PollInterval time.Duration
	// DialTimeout bounds connecting, TLS, login and SELECT; default 30s.
	// Each later command is bounded by imapclient's own timeouts.
	DialTimeout time.Duration
	Store       InboundStore
	Clock       clock.Clock           // default clock.System{}
	Log         *slog.Logger          // default: discard
	Notify      func()                // called after each newly stored message; must not block
	Registerer  prometheus.Registerer // nil: metrics are kept but not registered
}

// IMAPFetcher moves requests from an IMAP mailbox into the inbound queue,
// the way the SMTP listener does for mail sent to it.
//
// Exactly once: a message is fetched (BODY.PEEK[], so it is not even
// marked \Seen), committed with Store.AcceptInbound, and only then removed
// from the mailbox. A crash or a dropped connection between the two leaves
// it in the mailbox; the next pass fetches the same bytes, the store
// recognises their digest (duplicate), and the message is removed without
// being queued twice. Nothing is removed that the store has not committed.
// With DoneFolder set, that window may leave two copies in the folder.
//
// Envelope sender: a mailbox has no SMTP envelope, so the sender is the
// Return-Path header the delivering server wrote (the topmost one), or,
// without one, the first From address. "Return-Path: <>" (a bounce) gives
// "", which the processor drops unanswered, as it does for the SMTP null
// sender; a Return-Path that is not an address is ignored. The sender is
// only logged and checked for null: replies go to the address on record,
// never to it (SPEC section 4). remoteAddr is "imap:" + Addr.
//
// A message over MaxMessageBytes is not downloaded; it is flagged
// ($KMSTooLarge and \Flagged) and left for an administrator. A message the
// server refuses to hand over is logged and skipped; the rest of the pass
// goes on. A network or store failure ends the session: Run reconnects
// with backoff.
type IMAPFetcher struct {
	opt      IMAPOptions
	host     string
	remote   string // remoteAddr of every stored message
	security IMAPSecurity
	tls      *tls.Config
	m        imapMetrics
	// afterStore, when set (tests), runs between the store's commit and the
	// removal from the mailbox: the window a crash may hit.
	afterStore func()

	mu          sync.Mutex // one session at a time; guards the fields below
	uidValidity uint32
	skipped     map[imap.UID]bool // set aside this UIDVALIDITY, in case the server drops our keyword
}

type imapMetrics struct {
	fetched, duplicate prometheus.Counter
	errors             *prometheus.CounterVec
}

// Kinds of kms_imap_errors_total.
const (
	imapErrConnect  = "connect"   // dial, TLS, greeting, or the connection dropped
	imapErrLogin    = "login"     // the server refused the credentials
	imapErrMailbox  = "mailbox"   // SELECT, LIST or CREATE refused
	imapErrSearch   = "search"    // SEARCH or the size FETCH failed
	imapErrFetch    = "fetch"     // one message's FETCH failed
	imapErrStore    = "store"     // AcceptInbound failed
	imapErrRemove   = "remove"    // delete, move or flag failed
	imapErrTooLarge = "too_large" // a message over MaxMessageBytes, set aside
)

// NewIMAPFetcher checks opt and builds the fetcher; Run starts it.
func NewIMAPFetcher(opt IMAPOptions) (*IMAPFetcher, error) {
	host, port, err := net.SplitHostPort(opt.Addr)
	if err != nil || host == "" {
		return nil, fmt.Errorf("imap.addr %q: want host:port, e.g. imap.example.com:993", opt.Addr)
	}
	if opt.Username == "" {
		return nil, errors.New("imap: empty username (set imap.username)")
	}
	if len(opt.Password) == 0 {
		return nil, errors.New("imap: empty password (set imap.password_file or KMS_IMAP_PASSWORD)")
	}
	if opt.Store == nil {
		return nil, errors.New("imap: no store")
	}
	if opt.Mailbox == "" {
		opt.Mailbox = "INBOX"
	}
	if opt.DoneFolder != "" && sameMailbox(opt.DoneFolder, opt.Mailbox) {
		return nil, fmt.Errorf("imap: the done folder %q is the mailbox fetched from; name another folder, or none to delete fetched messages", opt.DoneFolder)
	}
	if opt.MaxMessageBytes <= 0 {
		opt.MaxMessageBytes = 1 << 20
	}
	opt.PollInterval = orDefault(opt.PollInterval, 30*time.Second)
	opt.DialTimeout = orDefault(opt.DialTimeout, 30*time.Second)
	if opt.Clock == nil {
		opt.Clock = clock.System{}
	}
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	if opt.Notify == nil {
		opt.Notify = func() {}
	}
	f := &IMAPFetcher{opt: opt, host: host, remote: "imap:" + opt.Addr, security: opt.Security, skipped: map[imap.UID]bool{}}
	switch f.security {
	case IMAPSecurityAuto:
		f.security = IMAPStartTLS
		if port == "993" {
			f.security = IMAPImplicitTLS
		}
	case IMAPImplicitTLS, IMAPStartTLS:
	default:
		return nil, fmt.Errorf("imap: unknown security mode %d", opt.Security)
	}
	if opt.TLSConfig != nil {
		f.tls = opt.TLSConfig.Clone()
	} else {
		f.tls = &tls.Config{}
	}
	if f.tls.ServerName == "" {
		f.tls.ServerName = host
	}
	if f.tls.MinVersion == 0 {
		f.tls.MinVersion = tls.VersionTLS12
	}
	f.m = imapMetrics{
		fetched: prometheus.NewCounter(prometheus.CounterOpts{Name: "kms_imap_fetched_total",
			Help: "Messages fetched over IMAP and stored."}),
		duplicate: prometheus.NewCounter(prometheus.CounterOpts{Name: "kms_imap_duplicate_total",
			Help: "Messages fetched over IMAP again after being stored (removed, not stored twice)."}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kms_imap_errors_total",
			Help: "IMAP fetch failures, and messages set aside as too large, by kind."}, []string{"kind"}),
	}
	for _, k := range []string{imapErrConnect, imapErrLogin, imapErrMailbox, imapErrSearch, imapErrFetch, imapErrStore, imapErrRemove, imapErrTooLarge} {
		f.m.errors.WithLabelValues(k)
	}
	if opt.Registerer != nil {
		for _, c := range []prometheus.Collector{f.m.fetched, f.m.duplicate, f.m.errors} {
			if err := opt.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("imap: register metrics: %w", err)
			}
		}
	}
	return f, nil
}

// sameMailbox compares mailbox names; INBOX is case-insensitive (RFC 3501
// section 5.1).
func sameMailbox(a, b string) bool {
	return a == b || (strings.EqualFold(a, "INBOX") && strings.EqualFold(b, "INBOX"))
}

// Backoff after a failed session: network and store failures retry soon,
// since they usually pass; a refused login or mailbox waits much longer,
// since it needs an administrator and repeated failed logins can get the
// account locked.
const (
	imapRetryMin      = time.Second
	imapRetryMax      = 5 * time.Minute
	imapLoginRetryMin = 5 * time.Minute
	imapLoginRetryMax = time.Hour
)

// imapBackoff is the wait before attempt n+1 after n failures in a row.
func imapBackoff(err error, n int) time.Duration {
	lo, hi := imapRetryMin, imapRetryMax
	if errors.Is(err, ErrIMAPLogin) || errors.Is(err, ErrIMAPMailbox) {
		lo, hi = imapLoginRetryMin, imapLoginRetryMax
	}
	d := lo
	for i := 1; i < n && d < hi; i++ {
		d *= 2
	}
	return min(d, hi)
}

// Run fetches until ctx ends, then returns nil. It keeps one session open,
// searching the mailbox every PollInterval or when IDLE reports new mail,
// and reconnects with backoff after a failure. Run and FetchOnce take
// turns: a call waits while the other holds a session.
func (f *IMAPFetcher) Run(ctx context.Context) error {
	f.opt.Log.Info("imap: fetching requests", "addr", f.opt.Addr, "mailbox", f.opt.Mailbox, "username", f.opt.Username)
	failures := 0
	for {
		ok, err := f.serve(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if ok {
			failures = 0
		}
		failures++
		delay := imapBackoff(err, failures)
		f.opt.Log.Error("imap: session failed; will reconnect", "addr", f.opt.Addr, "err", err, "retry_in", delay.String(), "failures", failures)
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// serve runs one session until it fails or ctx ends; ok says whether it
// got as far as one complete pass, which resets the backoff.
func (f *IMAPFetcher) serve(ctx context.Context) (ok bool, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.connect(ctx)
	if err != nil {
		return false, err
	}
	defer s.close()
	for {
		if _, err := f.pass(ctx, s); err != nil {
			return ok, err
		}
		ok = true
		if err := f.wait(ctx, s); err != nil {
			return ok, err
		}
	}
}

// FetchOnce connects, moves every message waiting in the mailbox into the
// store, and logs out. It returns how many messages were newly stored
// (fetched again after a crash, a message counts as removed, not stored).
func (f *IMAPFetcher) FetchOnce(ctx context.Context) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := f.connect(ctx)
	if err != nil {
		return 0, err
	}
	defer s.close()
	n, err := f.pass(ctx, s)
	if err == nil {
		s.logout()
	}
	return n, err
}

// fail counts err under kind and returns it.
func (f *IMAPFetcher) fail(kind string, err error) error {
	f.m.errors.WithLabelValues(kind).Inc()
	return err
}

package mail

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmsmail/kms/clock"
	"github.com/kmsmail/kms/kms"
	"github.com/kmsmail/kms/mail/smime"
	"github.com/kmsmail/kms/policy"
)

// Lifecycle is what the request processor needs of kms.Service.
type Lifecycle interface {
	EnrollByCode(ctx context.Context, addr, code string, pub crypto.PublicKey, req kms.Request) (*kms.Certificate, error)
	Renew(ctx context.Context, serial string, req kms.Request) (*kms.Certificate, error)
	Rekey(ctx context.Context, serial string, pub crypto.PublicKey, req kms.Request) (*kms.Certificate, error)
	CertForSigner(ctx context.Context, der []byte) (*kms.Certificate, error)
	GetUser(ctx context.Context, addr string) (*kms.UserDetail, error)
	RefuseInbound(ctx context.Context, id int64, reply *kms.Reply, outcome string) error
	Policies() policy.Set
}

// InboundQueue is the store side of received mail.
type InboundQueue interface {
	ClaimInbound(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]kms.Inbound, error)
	RetryInbound(ctx context.Context, id int64, next time.Time, why string) error
	FinishInbound(ctx context.Context, id int64, state kms.InboundState, outcome string, now time.Time) error
	// ReleaseInbound gives back claimed messages that were not processed,
	// so that they need not wait for their lease.
	ReleaseInbound(ctx context.Context, ids []int64) error
	// MailKindOf tells what kms sent with a Message-ID, so that a renewal
	// answering a reminder is recognised.
	MailKindOf(ctx context.Context, messageID string) (kms.OutboxKind, error)
}

// Identity is the KMS's own certificates and key: the current certificate
// signs, and any of them may be the one a request was encrypted to.
type Identity interface {
	KMSCertificates() []*x509.Certificate
	KMS() (*x509.Certificate, crypto.Signer)
}

// ProcessorOptions configure a Processor.
type ProcessorOptions struct {
	Service  Lifecycle
	Queue    InboundQueue
	Identity Identity
	// Roots are the CAs whose certificates may sign renewal requests: the
	// KMS root, plus CAs trusted for imported certificates.
	Roots *x509.CertPool
	// Intermediates help build chains (the issuing CA).
	Intermediates *x509.CertPool
	Limits        smime.Limits
	Clock         clock.Clock
	Log           *slog.Logger
	Registerer    prometheus.Registerer
	// Workers is how many messages are processed at once (default: four
	// per CPU). A worker spends most of a renewal waiting for the store's
	// commit, so a few per CPU keep the signing key busy.
	Workers int
	// Poll is how often the queue is checked without a Notify (default 1s).
	Poll time.Duration
	// MaxAttempts is how often a message whose processing failed for a
	// temporary reason is tried before it is set aside as failed (default 8).
	MaxAttempts int
}

// Processor turns received messages into lifecycle operations: enrollment
// by code (SPEC 4.1) and renewal or rekey by signed request (SPEC 4.2). It
// answers only users on record, at the address on record, and drops
// everything else without a reply (SPEC 4: no backscatter).
type Processor struct {
	opt  ProcessorOptions
	wake chan struct{}
	// tableDue says the inbound table may hold rows due now: set by Notify
	// (a message stored without a hand-over), by the poll tick, at start
	// and when messages are given back; cleared before each claim, which
	// sets it again when it fills its batch. A claim is a write
	// transaction, and the hand-over stream must not pay one every few
	// messages to find the table empty: under kms-load the claims were
	// 1.5-1.8% of the daemon's CPU in profiles (cumulative, with the group
	// commits they led), nearly all empty.
	tableDue atomic.Bool
	handled  *prometheus.CounterVec
	chains   *smime.ChainCache // signers whose chain verified, across requests
	// handover brings messages from the SMTP listener as they are stored
	// (InboundHandoff: Reserve, Cancel and Deliver are its methods).
	*handover[kms.Inbound]
	handedOver, handoverExpired prometheus.Counter
}

// InboundHandoff takes received messages from the SMTP listener straight to
// the request processor (*Processor implements it), so that the processor
// need not claim them from the inbound table and read them back: the
// listener stores a message already claimed (Store.AcceptInboundClaimed)
// under a promise of room (Reserve), gives the promise back when nothing
// new was stored (Cancel), and hands the message over after the commit
// (Deliver). See handover.
type InboundHandoff interface {
	Reserve() (lease time.Duration, ok bool)
	Cancel()
	Deliver(m kms.Inbound)
}

// lease is how long a claimed message is ours before another worker may
// take it; processing one message takes milliseconds.
const lease = 2 * time.Minute

// NewProcessor builds a Processor.
func NewProcessor(opt ProcessorOptions) *Processor {
	if opt.Workers <= 0 {
		opt.Workers = defaultWorkers()
	}
	if opt.Poll <= 0 {
		opt.Poll = time.Second
	}
	if opt.MaxAttempts <= 0 {
		opt.MaxAttempts = 8
	}
	if opt.Log == nil {
		opt.Log = slog.New(slog.DiscardHandler)
	}
	p := &Processor{opt: opt, wake: make(chan struct{}, 1), chains: smime.NewChainCache(10000),
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kms_mail_requests_total",
			Help: "Received messages by outcome: issued, rejected (answered), dropped (not answered), failed."},
			[]string{"outcome", "reason"})}
	p.handedOver = prometheus.NewCounter(prometheus.CounterOpts{Name: "kms_inbound_handed_over_total",
		Help: "Received messages handed to the processor in memory by the SMTP listener, instead of claimed from the inbound table."})
	p.handoverExpired = prometheus.NewCounter(prometheus.CounterOpts{Name: "kms_inbound_handoff_expired_total",
		Help: "Handed-over messages that waited in memory for half their lease and were left to be claimed from the table."})
	p.handover = newHandover(lease, func(m kms.Inbound) int64 { return m.ID }, func(m kms.Inbound) time.Time { return m.ReceivedAt })
	p.handover.release, p.handover.wake, p.handover.expired = p.releaseIDs, p.wakeUp, p.handoverExpired.Inc
	if opt.Registerer != nil {
		opt.Registerer.MustRegister(p.handled, p.handedOver, p.handoverExpired)
	}
	return p
}

// Notify wakes the workers: a message was just stored in the inbound
// table without being handed over.
func (p *Processor) Notify() {
	p.tableDue.Store(true)
	p.wakeUp()
}

// wakeUp wakes the workers for a handed-over message.
func (p *Processor) wakeUp() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Run processes the queue until ctx ends: messages handed over by the SMTP
// listener first, and after at most a claim's worth of them, messages
// claimed from the inbound table (retries, and what did not fit in memory).
func (p *Processor) Run(ctx context.Context) error {
	p.handover.start()
	var wg sync.WaitGroup
	work := make(chan kms.Inbound)
	for i := 0; i < p.opt.Workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for m := range work {
				p.processOne(ctx, m)
			}
		}()
	}
	defer func() {
		close(work)
		wg.Wait()
		p.handover.stop()
	}()
	t := time.NewTicker(p.opt.Poll)
	defer t.Stop()
	perClaim := 4 * p.opt.Workers
	p.tableDue.Store(true) // what a predecessor left
	for {
		for {
			select {
			case <-t.C:
				// Retries and expired hand-overs fall due without a word,
				// also while hand-overs keep this loop busy.
				p.tableDue.Store(true)
			default:
			}
			handed, ok := p.feedHandedOver(ctx, work, perClaim)
			if !ok {
				return nil
			}
			var batch []kms.Inbound
			if p.tableDue.Swap(false) {
				var err error
				batch, err = p.opt.Queue.ClaimInbound(ctx, p.opt.Clock.Now(), lease, perClaim)
				if err != nil {
					p.tableDue.Store(true)
					if ctx.Err() != nil {
						return nil
					}
					p.opt.Log.Error("inbound: claim failed", "err", err)
					break
				}
				if len(batch) == perClaim {
					p.tableDue.Store(true) // there may be more
				}
			}
			for i, m := range batch {
				select {
				case work <- m:
				case <-ctx.Done():
					p.release(batch[i:])
					return nil
				}
			}
			if len(batch) == 0 && handed == 0 {
				break
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-p.wake:
		case <-t.C:
			p.tableDue.Store(true) // as above
		}
	}
}

// feedHandedOver passes up to limit handed-over messages to the workers
// and says how many; ok is false when ctx ended meanwhile.
func (p *Processor) feedHandedOver(ctx context.Context, work chan<- kms.Inbound, limit int) (n int, ok bool) {
	for n < limit {
		m, found := p.handover.take(p.opt.Clock.Now())
		if !found {
			return n, true
		}
		select {
		case work <- m:
			n++
			p.handedOver.Inc()
		case <-ctx.Done():
			p.release([]kms.Inbound{m})
			return n, false
		}
	}
	return n, true
}

// processOne handles one message and records its fate; a temporary failure
// is retried with backoff, and a message that keeps failing is set aside.
func (p *Processor) processOne(ctx context.Context, m kms.Inbound) {
	err := p.processSafely(ctx, m)
	if err == nil {
		return
	}
	if ctx.Err() != nil {
		p.release([]kms.Inbound{m}) // cut short by the shutdown
		return
	}
	now := p.opt.Clock.Now()
	if m.Attempts >= p.opt.MaxAttempts {
		p.opt.Log.Error("inbound: giving up on message", "id", m.ID, "attempts", m.Attempts, "err", err)
		p.count("failed", "gave_up")
		if ferr := p.opt.Queue.FinishInbound(ctx, m.ID, kms.InboundFailed, err.Error(), now); ferr != nil {
			p.opt.Log.Error("inbound: cannot record failure", "id", m.ID, "err", ferr)
		}
		return
	}
	backoff := time.Duration(1<<min(m.Attempts, 10)) * time.Second
	p.opt.Log.Warn("inbound: processing failed, will retry", "id", m.ID, "attempt", m.Attempts, "retry_in", backoff, "err", err)
	if rerr := p.opt.Queue.RetryInbound(ctx, m.ID, now.Add(backoff), err.Error()); rerr != nil {
		p.opt.Log.Error("inbound: cannot schedule retry", "id", m.ID, "err", rerr)
	}
}

// release gives back claimed messages that a shutdown leaves unprocessed.
// Without it they would wait for their lease after the restart (on
// PostgreSQL; a SQLite daemon gives back every claim when it starts).
func (p *Processor) release(ms []kms.Inbound) {
	ids := make([]int64, len(ms))
	for i, m := range ms {
		ids[i] = m.ID
	}
	p.releaseIDs(ids)
}

func (p *Processor) releaseIDs(ids []int64) {
	if len(ids) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	defer p.tableDue.Store(true) // given back rows are due at once
	if err := p.opt.Queue.ReleaseInbound(ctx, ids); err != nil {
		p.opt.Log.Warn("inbound: cannot give back claimed messages at shutdown; they wait for their lease", "messages", len(ids), "err", err)
	}
}

// processSafely is Process with a panic turned into an error: a message
// that trips a bug must not crash the daemon (which would then meet the
// same message again after a restart); it is retried and set aside.
func (p *Processor) processSafely(ctx context.Context, m kms.Inbound) (err error) {
	defer func() {
		if r := recover(); r != nil {
			p.opt.Log.Error("inbound: panic while processing a message", "id", m.ID, "panic", r, "stack", string(debug.Stack()))
			p.count("failed", "panic")
			err = fmt.Errorf("panic: %v", r)
		}
	}()
	return p.Process(ctx, m)
}

func (p *Processor) count(outcome, reason string) {
	p.handled.WithLabelValues(outcome, reason).Inc()
}

// request is one message being processed.
type request struct {
	in        kms.Inbound
	msg       *smime.Request
	messageID string // with angle brackets, for In-Reply-To
}

// Process handles one received message to the end: a certificate issued,
// a rejection queued, or the message dropped. It returns an error only for
// temporary failures worth a retry (the database, a concurrent change).
func (p *Processor) Process(ctx context.Context, in kms.Inbound) error {
	log := p.opt.Log.With("inbound", in.ID, "mail_from", in.MailFrom, "remote", in.RemoteAddr)
	if in.MailFrom == "" {
		return p.drop(ctx, in, "null return path (a bounce or notification)", log)
	}
	msg, err := smime.ParseRequest(in.Raw, p.opt.Limits)
	if err != nil {
		return p.refuse(ctx, request{in: in}, "", "unreadable", fmt.Sprintf("kms could not read your message: %v.", err), err, log)
	}
	r := request{in: in, msg: msg}
	if msg.MessageID != "" {
		r.messageID = "<" + msg.MessageID + ">"
	}
	log = log.With("from", msg.From, "message_id", msg.MessageID)
	switch {
	case msg.IsAutoSubmitted():
		return p.drop(ctx, in, "Auto-Submitted: "+msg.AutoSubmitted, log)
	case strings.HasPrefix(msg.ContentType, "multipart/report"):
		return p.drop(ctx, in, "delivery or disposition report", log)
	}
	if msg.Kind == smime.KindEnveloped {
		inner, err := p.decrypt(msg)
		if err != nil {
			return p.refuse(ctx, r, msg.From, "undecryptable",
				"kms could not decrypt your message. Encrypt requests to the certificate kms signs its mail with, or send them unencrypted.", err, log)
		}
		msg, r.msg = inner, inner
	}
	if msg.Kind == smime.KindSigned || msg.Kind == smime.KindSignedOpaque {
		return p.signed(ctx, r, log)
	}
	return p.enrollment(ctx, r, nil, log)
}

// decrypt tries each KMS certificate the request may be encrypted to.
func (p *Processor) decrypt(msg *smime.Request) (*smime.Request, error) {
	_, key := p.opt.Identity.KMS()
	dec, ok := key.(crypto.Decrypter)
	if !ok {
		return nil, errors.New("the KMS key cannot decrypt")
	}
	var lastErr error
	for _, c := range p.opt.Identity.KMSCertificates() {
		inner, err := msg.Decrypt(c, dec)
		if err == nil {
			return inner, nil
		}
		lastErr = err
		if !errors.Is(err, smime.ErrNotRecipient) {
			break
		}
	}
	return nil, lastErr
}

// defaultWorkers is the concurrency of the processor and of the delivery
// worker when none is configured: four per CPU, at least four. Measured
// with kms-load on 2 cores: 2 processor workers left the p50 latency at
// 230 ms, 8 brought it to 70 ms at the same rate; 16 gained nothing more.
func defaultWorkers() int {
	return max(4, 4*runtime.GOMAXPROCS(0))
}

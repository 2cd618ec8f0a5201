package mail

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmsmail/kms/clock"
	"github.com/kmsmail/kms/kms"
)

// OutboxStore is the part of the store the delivery worker uses
// (*kms.Store implements it).
type OutboxStore interface {
	ClaimOutbox(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]kms.OutboxMessage, error)
	MarkSent(ctx context.Context, id int64, now time.Time) error
	RetryOutbox(ctx context.Context, id int64, next time.Time, why string) error
	FailOutbox(ctx context.Context, id int64, why string, now time.Time) error
	// ReleaseOutbox gives back claims on mails handed over in memory that
	// the worker stopped before delivering.
	ReleaseOutbox(ctx context.Context, ids []int64) error
}

// OutboxConfig configures an Outbox. Zero values of the tuning fields take
// the defaults shown.
type OutboxConfig struct {
	Store      OutboxStore
	Renderer   Renderer
	Transport  Transport
	Clock      clock.Clock           // default clock.System{}
	Log        *slog.Logger          // default: discard
	Registerer prometheus.Registerer // nil: metrics are kept but not registered
	From       string                // envelope sender: the KMS address
	// Admin is the administrators' address. Undeliverable mail is logged at
	// ERROR with it so that alerting can route the line; the store cannot
	// yet queue a notice to it (see the package report).
	Admin        string
	RetryFor     time.Duration // how long a mail is retried, from its creation; default 5 days
	Rate         float64       // messages per second over all workers; 0: no cap
	PollInterval time.Duration // how often the queue is looked at without Notify; default 30s
	BatchSize    int           // most rows claimed at once; default 16
	Lease        time.Duration // how long a claimed row is ours; default 2 minutes
	Workers      int           // concurrent deliveries; default four per CPU
}

// Outbox is the delivery worker. See Run.
type Outbox struct {
	store     OutboxStore
	render    Renderer
	transport Transport
	clock     clock.Clock
	log       *slog.Logger
	from      string
	admin     string
	retryFor  time.Duration
	poll      time.Duration
	batch     int
	lease     time.Duration
	workers   int
	limit     *limiter
	notify    chan struct{}
	m         outboxMetrics
	// tableDue says the outbox table may hold mail due now, as
	// Processor.tableDue does for the inbound table: set by Notify (mail
	// queued in the table), by the poll tick, at start and when claims
	// are given back; cleared before each claim, which sets it again when
	// it fills its batch. Replies handed over in memory no longer pay an
	// empty claim (a write transaction) every batch of them.
	tableDue atomic.Bool

	// handover brings certificate replies from the issuing transaction
	// (kms.Handoff: Reserve, Cancel and Deliver are its methods).
	*handover[kms.OutboxMessage]
}

type outboxMetrics struct {
	sent, retried, rateLimited prometheus.Counter
	handedOver, handoffExpired prometheus.Counter
	failed                     *prometheus.CounterVec
	latency                    prometheus.Histogram
}

// Reasons a mail is given up, the label of kms_outbox_failed_total.
const (
	failPermanent = "permanent" // the next hop refused it (5xx)
	failExpired   = "expired"   // temporary failures until retry_for ran out
	failRender    = "render"    // it could not be rendered
)

// storeTimeout bounds recording a delivery's outcome, which is done even
// when Run's context is cancelled: a delivery that happened must be marked.
const storeTimeout = 30 * time.Second

// NewOutbox checks cfg and builds the worker; Run starts it.
func NewOutbox(cfg OutboxConfig) (*Outbox, error) {
	if cfg.Store == nil || cfg.Renderer == nil || cfg.Transport == nil {
		return nil, errors.New("outbox: Store, Renderer and Transport are required")
	}
	if cfg.From == "" {
		return nil, errors.New("outbox: empty envelope sender (set `address`)")
	}
	o := &Outbox{store: cfg.Store, render: cfg.Renderer, transport: cfg.Transport, clock: cfg.Clock, log: cfg.Log,
		from: cfg.From, admin: cfg.Admin, retryFor: cfg.RetryFor, poll: cfg.PollInterval, batch: cfg.BatchSize,
		lease: cfg.Lease, workers: cfg.Workers, notify: make(chan struct{}, 1)}
	if o.clock == nil {
		o.clock = clock.System{}
	}
	if o.log == nil {
		o.log = slog.New(slog.DiscardHandler)
	}
	o.retryFor = orDefault(o.retryFor, 5*24*time.Hour)
	o.poll = orDefault(o.poll, 30*time.Second)
	o.lease = orDefault(o.lease, 2*time.Minute)
	if o.batch <= 0 {
		o.batch = 16
	}
	if o.workers <= 0 {
		o.workers = defaultWorkers()
	}
	o.limit = newLimiter(o.clock, cfg.Rate)
	o.handover = newHandover(o.lease, func(m kms.OutboxMessage) int64 { return m.ID },
		func(m kms.OutboxMessage) time.Time { return m.CreatedAt })
	o.handover.release, o.handover.wake = o.releaseClaims, o.wakeUp
	o.m = outboxMetrics{
		sent:    prometheus.NewCounter(prometheus.CounterOpts{Name: "kms_outbox_sent_total", Help: "Mails delivered."}),
		retried: prometheus.NewCounter(prometheus.CounterOpts{Name: "kms_outbox_retried_total", Help: "Delivery attempts that failed temporarily and were rescheduled."}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kms_outbox_failed_total",
			Help: "Mails given up, by reason: permanent (5xx), expired (retry_for ran out), render."}, []string{"reason"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "kms_outbox_delivery_seconds",
			Help: "Time from queueing to delivery.", Buckets: prometheus.ExponentialBuckets(1, 4, 10)}),
		rateLimited: prometheus.NewCounter(prometheus.CounterOpts{Name: "kms_outbox_rate_limited_total",
			Help: "Times delivery waited for the relay.rate cap."}),
		handedOver: prometheus.NewCounter(prometheus.CounterOpts{Name: "kms_outbox_handed_over_total",
			Help: "Mails handed to delivery in memory by the transaction that queued them, instead of claimed from the outbox table."}),
		handoffExpired: prometheus.NewCounter(prometheus.CounterOpts{Name: "kms_outbox_handoff_expired_total",
			Help: "Handed-over mails that waited in memory for half their lease and were left to be claimed from the table."}),
	}
	o.handover.expired = o.m.handoffExpired.Inc
	for _, r := range []string{failPermanent, failExpired, failRender} {
		o.m.failed.WithLabelValues(r)
	}
	if cfg.Registerer != nil {
		for _, c := range []prometheus.Collector{o.m.sent, o.m.retried, o.m.failed, o.m.latency, o.m.rateLimited, o.m.handedOver, o.m.handoffExpired} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("outbox: register metrics: %w", err)
			}
		}
	}
	return o, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

// Notify wakes the worker at once, so that mail newly queued in the table
// does not wait for the poll interval. It never blocks.
func (o *Outbox) Notify() {
	o.tableDue.Store(true)
	o.wakeUp()
}

// wakeUp wakes the worker for mail handed over in memory.
func (o *Outbox) wakeUp() {
	select {
	case o.notify <- struct{}{}:
	default:
	}
}

// releaseClaims gives back claims on mails this worker will not deliver.
func (o *Outbox) releaseClaims(ids []int64) {
	if len(ids) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	defer o.tableDue.Store(true) // given back mail is due at once
	if err := o.store.ReleaseOutbox(ctx, ids); err != nil {
		o.log.Warn("outbox: cannot give back mails handed over and not delivered; they wait for their lease", "mails", len(ids), "err", err)
	}
}

// DeliveryKey identifies a queued mail across delivery attempts: the row id
// and a hash of its Message-ID, which together cannot collide even if a
// database is restored and ids are reused. It is what Maildir names files
// by.
func DeliveryKey(m kms.OutboxMessage) string {
	h := sha256.Sum256([]byte(m.MessageID))
	return fmt.Sprintf("%d-%x", m.ID, h[:8])
}

// Run delivers mail until ctx is done, then lets the deliveries in flight
// finish (each is bounded by half the lease) and returns nil. It claims due rows, never more than there are idle
// workers and rate tokens, so that a claimed row is worked on at once and is
// finished well inside its lease; each row is rendered, delivered, and
// marked sent, retried with backoff, or failed.
func (o *Outbox) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	o.handover.start()
	defer func() {
		wg.Wait()
		o.handover.stop()
		// Sessions a transport keeps open between messages end with the
		// worker.
		if c, ok := o.transport.(interface{ Close() }); ok {
			c.Close()
		}
	}()
	busy := make(chan struct{}, o.workers) // one token per delivery in flight
	release := func(k int) {
		for range k {
			<-busy
		}
	}
	handed := 0            // hand-overs since the last claim from the table
	o.tableDue.Store(true) // what a predecessor left
	tick := time.NewTicker(o.poll)
	defer tick.Stop()
	for ctx.Err() == nil {
		select {
		case busy <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		// Mail handed over in memory goes first; a claim from the table
		// still runs after at most a batch of them, so that retries and
		// other mail are not starved by a stream of replies.
		if handed < o.batch {
			if m, ok := o.handover.take(o.clock.Now()); ok {
				if _, err := o.limit.take(ctx, 1, o.m.rateLimited.Inc); err != nil {
					release(1)
					o.releaseClaims([]int64{m.ID})
					return nil
				}
				handed++
				o.m.handedOver.Inc()
				wg.Go(func() {
					defer release(1)
					o.deliver(ctx, m)
				})
				continue
			}
		}
		handed = 0
		select {
		case <-tick.C:
			// Retries fall due without a word, also while hand-overs
			// keep this loop busy.
			o.tableDue.Store(true)
		default:
		}
		if !o.tableDue.Swap(false) {
			release(1)
			o.idle(ctx) // returns at once when a hand-over waits
			continue
		}
		k := 1
	more:
		for k < o.batch {
			select {
			case busy <- struct{}{}:
				k++
			default:
				break more
			}
		}
		n, err := o.limit.take(ctx, k, o.m.rateLimited.Inc)
		if err != nil {
			release(k)
			return nil
		}
		release(k - n)
		rows, err := o.store.ClaimOutbox(ctx, o.clock.Now(), o.lease, n)
		if err != nil {
			release(n)
			o.limit.refund(n)
			if ctx.Err() != nil {
				return nil
			}
			o.log.Error("outbox: cannot claim mail; will try again", "err", err)
			o.tableDue.Store(true)
			o.idle(ctx)
			continue
		}
		if len(rows) == n {
			o.tableDue.Store(true) // there may be more
		}
		o.limit.refund(n - len(rows))
		release(n - len(rows))
		for _, m := range rows {
			wg.Go(func() {
				defer release(1)
				o.deliver(ctx, m)
			})
		}
		if len(rows) < n {
			o.idle(ctx) // nothing more is due
		}
	}
	return nil
}

// idle waits for Notify, the poll interval or the end of ctx.
func (o *Outbox) idle(ctx context.Context) {
	if o.handover.waiting() {
		return // Deliver notifies after its send, so a later one wakes us
	}
	t := time.NewTimer(o.poll)
	defer t.Stop()
	select {
	case <-o.notify:
	case <-t.C:
		o.tableDue.Store(true)
	case <-ctx.Done():
	}
}

// deliver makes one delivery attempt of m and records its outcome.
func (o *Outbox) deliver(ctx context.Context, m kms.OutboxMessage) {
	log := o.log.With("outbox_id", m.ID, "kind", string(m.Kind), "to", m.To, "attempt", m.Attempts)
	// A delivery still running when the lease ends could be claimed and
	// delivered a second time; half the lease leaves room to record it.
	// Shutdown does not cut a delivery short: a relay session aborted
	// after the final dot may have been accepted, and would be sent again.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.lease/2)
	defer cancel()
	rendered := false
	msg, err := o.render.Render(dctx, m)
	if err == nil {
		rendered = true
		err = o.transport.Deliver(dctx, o.from, []string{m.To}, msg, DeliveryKey(m))
	}
	// The outcome is recorded even when ctx was cancelled meanwhile.
	sctx, cancelStore := context.WithTimeout(context.WithoutCancel(ctx), storeTimeout)
	defer cancelStore()
	now := o.clock.Now()
	switch {
	case err == nil:
		if err := o.store.MarkSent(sctx, m.ID, now); err != nil {
			log.Error("outbox: delivered but cannot mark it sent; it may be delivered again", "err", err)
			return
		}
		o.m.sent.Inc()
		o.m.latency.Observe(now.Sub(m.CreatedAt).Seconds())
		log.Info("mail delivered", "message_id", m.MessageID)
	case !rendered:
		// A bug or a payload the renderer cannot handle: retrying would
		// fail the same way.
		o.fail(sctx, log, m, now, failRender, fmt.Errorf("render: %w", err))
	case IsPermanent(err):
		o.fail(sctx, log, m, now, failPermanent, err)
	default:
		deadline := m.CreatedAt.Add(o.retryFor)
		if !now.Before(deadline) {
			o.fail(sctx, log, m, now, failExpired,
				fmt.Errorf("gave up after %d attempts over %s: %w", m.Attempts, o.retryFor, err))
			return
		}
		next := now.Add(backoff(m.Attempts))
		if next.After(deadline) {
			next = deadline // one last attempt when retry_for runs out
		}
		o.retry(sctx, log, m, now, next, err)
	}
}

// backoff is the wait after the attempt-th failed attempt: 1 minute,
// doubling, at most an hour.
func backoff(attempt int) time.Duration {
	return min(time.Minute<<min(max(attempt-1, 0), 6), time.Hour)
}

func (o *Outbox) retry(ctx context.Context, log *slog.Logger, m kms.OutboxMessage, now, next time.Time, cause error) {
	if err := o.store.RetryOutbox(ctx, m.ID, next, cause.Error()); err != nil {
		log.Error("outbox: cannot reschedule; the lease will release it", "err", err, "cause", cause)
		return
	}
	o.m.retried.Inc()
	log.Warn("delivery failed; will retry", "next_attempt", next, "in", next.Sub(now), "err", cause)
}

func (o *Outbox) fail(ctx context.Context, log *slog.Logger, m kms.OutboxMessage, now time.Time, reason string, cause error) {
	if err := o.store.FailOutbox(ctx, m.ID, cause.Error(), now); err != nil {
		log.Error("outbox: cannot record the failure; it will be tried again", "err", err, "cause", cause)
		return
	}
	o.m.failed.WithLabelValues(reason).Inc()
	log.Error("mail undeliverable; the administrators must be told", "reason", reason, "admin", o.admin,
		"message_id", m.MessageID, "err", cause)
}

package kms

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are the counters the lifecycle operations update. Gauges that
// describe the database (certificates by state, outbox depth) are read at
// scrape time by StateCollector instead, so they are right after a restart.
type Metrics struct {
	Issued  *prometheus.CounterVec // by operation: enrollment, renewal, rekey
	Refused *prometheus.CounterVec // by operation and reason
	Revoked *prometheus.CounterVec // by reason
	Lapsed  prometheus.Counter
	// Reminders counts reminder mails queued.
	Reminders prometheus.Counter
}

// NewMetrics creates the counters and registers them with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Issued: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kms_certificates_issued_total",
			Help: "Certificates issued, by operation."}, []string{"operation"}),
		Refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kms_requests_refused_total",
			Help: "Requests refused, by operation and reason."}, []string{"operation", "reason"}),
		Revoked: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "kms_certificates_revoked_total",
			Help: "Certificates revoked, by RFC 5280 reason."}, []string{"reason"}),
		Lapsed: prometheus.NewCounter(prometheus.CounterOpts{Name: "kms_users_lapsed_total",
			Help: "Users whose certificate expired unrenewed."}),
	}
	m.Reminders = prometheus.NewCounter(prometheus.CounterOpts{Name: "kms_reminders_sent_total",
		Help: "Reminder mails queued."})
	reg.MustRegister(m.Issued, m.Refused, m.Revoked, m.Lapsed, m.Reminders)
	return m
}

// StateCollector reports database state at scrape time.
type StateCollector struct {
	svc     *Service
	certs   *prometheus.Desc
	users   *prometheus.Desc
	outbox  *prometheus.Desc
	oldest  *prometheus.Desc
	due     *prometheus.Desc
	overdue *prometheus.Desc
	commits *prometheus.Desc
	txs     *prometheus.Desc
}

// NewStateCollector returns a collector over svc's store.
func NewStateCollector(svc *Service) *StateCollector {
	return &StateCollector{
		svc:    svc,
		certs:  prometheus.NewDesc("kms_certificates", "Certificates by state.", []string{"state"}, nil),
		users:  prometheus.NewDesc("kms_users", "Users by state.", []string{"state"}, nil),
		outbox: prometheus.NewDesc("kms_outbox_pending", "Mail waiting to be delivered.", nil, nil),
		oldest: prometheus.NewDesc("kms_outbox_oldest_pending_seconds", "Age of the oldest undelivered mail.", nil, nil),
		due:    prometheus.NewDesc("kms_reminders_due", "Reminders due and not yet queued.", nil, nil),
		overdue: prometheus.NewDesc("kms_reminders_overdue_seconds",
			"How far behind its schedule the oldest due reminder is: the scheduler's lag.", nil, nil),
		commits: prometheus.NewDesc("kms_sqlite_commits_total",
			"SQLite commits, each one fsync (SQLite store only).", nil, nil),
		txs: prometheus.NewDesc("kms_sqlite_transactions_total",
			"Write transactions those commits carried: transactions per commit is the group commit's batch size.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *StateCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.certs
	ch <- c.users
	ch <- c.outbox
	ch <- c.oldest
	ch <- c.due
	ch <- c.overdue
	ch <- c.commits
	ch <- c.txs
}

// Collect implements prometheus.Collector.
func (c *StateCollector) Collect(ch chan<- prometheus.Metric) {
	if c.svc.store.dialect.name == "sqlite" {
		g := &c.svc.store.group
		ch <- prometheus.MustNewConstMetric(c.commits, prometheus.CounterValue, float64(g.commits.Load()))
		ch <- prometheus.MustNewConstMetric(c.txs, prometheus.CounterValue, float64(g.txs.Load()))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	certs, users, err := c.svc.Counts(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.certs, err)
		return
	}
	for _, st := range []CertState{CertCurrent, CertSuperseded, CertExpired, CertRevoked} {
		ch <- prometheus.MustNewConstMetric(c.certs, prometheus.GaugeValue, float64(certs[st]), string(st))
	}
	for _, st := range []UserState{UserInvited, UserActive, UserLapsed, UserDisabled} {
		ch <- prometheus.MustNewConstMetric(c.users, prometheus.GaugeValue, float64(users[st]), string(st))
	}
	n, oldest, err := c.svc.store.OutboxDepth(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.outbox, err)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.outbox, prometheus.GaugeValue, float64(n))
	age := 0.0
	if n > 0 {
		age = c.svc.clock.Now().Sub(oldest).Seconds()
	}
	ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, age)
	st, err := c.svc.ReminderBacklog(ctx)
	if err != nil {
		ch <- prometheus.NewInvalidMetric(c.due, err)
		return
	}
	ch <- prometheus.MustNewConstMetric(c.due, prometheus.GaugeValue, float64(st.Due))
	ch <- prometheus.MustNewConstMetric(c.overdue, prometheus.GaugeValue, st.Overdue.Seconds())
}

// OutboxDepth returns how many mails wait and when the oldest was queued.
func (s *Store) OutboxDepth(ctx context.Context) (int, time.Time, error) {
	var (
		n      int
		oldest *int64
	)
	err := s.db.QueryRowContext(ctx, `SELECT COUNT(*), MIN(created_at) FROM outbox WHERE state = 'pending'`).Scan(&n, &oldest)
	if err != nil || oldest == nil {
		return n, time.Time{}, err
	}
	return n, fromMS(*oldest), nil
}

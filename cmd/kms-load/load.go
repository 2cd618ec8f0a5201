package main

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/kmsmail/kms/admin"
	"github.com/kmsmail/kms/mail/smime"
	"github.com/kmsmail/kms/mail/smtpclient"
)

// target is a running daemon as the generator reaches it.
type target struct {
	SMTPAddr string        // the SMTP listener, host:port on loopback
	Admin    *admin.Client // enrolls the users
	// Sink receives the daemon's mail over SMTP (its relay transport).
	// When nil, Maildir's new/ is polled instead.
	Sink       *sink
	Maildir    string // the daemon's Maildir, without a Sink
	KMSAddress string // kms@DOMAIN: requests go there, replies are signed as it
	Domain     string // the users' mail domain, one the daemon serves
	// Roots are the KMS CA certificates (GET /ca.pem): replies are
	// verified against them before they count.
	Roots *x509.CertPool
}

// options size a run. Zero values take the defaults of main's flags.
type options struct {
	Users       int           // distinct users, each enrolled by mail first
	Renewals    int           // renewal requests in all, spread over the users
	Concurrency int           // SMTP connections sending at once
	UserKey     string        // the users' key type: p256 or rsa2048
	Timeout     time.Duration // the whole run, enrollment included
	Poll        time.Duration // how often the Maildir is looked at
	Log         io.Writer     // progress lines; nil discards
	// DaemonPID is the daemon's process, whose CPU time during the timed
	// window is reported; 0 when it is not known.
	DaemonPID int
	// CPUProfile, when set, receives this process's CPU profile of the
	// timed window.
	CPUProfile io.Writer
	// BeforeWindow, when set, runs once everything is prepared, just
	// before the clock starts: the signing rate is measured there, with
	// the daemon idle and nothing else of the run left to do.
	BeforeWindow func(context.Context) error
	// Progress, when set, is called each time a request completes (its
	// 250 and its reply both in), with the phase (renewals or the
	// enrollment) and how many of its requests are complete of how many.
	// It runs with the generator's lock held and must not block: the
	// crash test uses it to signal the goroutine that kills the daemon.
	Progress func(renewal bool, done, want int)
	// Settle, when set, runs after the renewals are verified and before
	// the replies received more than once are checked: it waits until the
	// daemon has nothing left to deliver, so that a redelivery that comes
	// after the last request completed is checked too.
	Settle func(context.Context) error
}

// outcome is what a run measured.
type outcome struct {
	Renewals  int             // renewal replies received and verified
	Elapsed   time.Duration   // the timed window: the first renewal sent to the last reply in
	Latencies []time.Duration // per renewal: the SMTP 250 to the reply's arrival
	Arrivals  []time.Time     // per renewal: when its reply arrived, in the order seen
	Enrolled  int
	// Retries counts SMTP transactions tried again after a failure (the
	// connection refused or cut, a 4xx): 0 unless the daemon failed or
	// restarted during the run.
	Retries int
	// Redeliveries counts replies received more than once, every copy
	// with the same Message-ID and certificate (the relay's at least
	// once across a crash).
	Redeliveries int
	// CPU is the CPU time used during the timed window.
	CPU cpuWindow
}

// cpuWindow is the CPU time at the start and the end of the timed window.
type cpuWindow struct{ Start, End cpuSample }

// user is one simulated mail user: a key and the newest certificate.
type user struct {
	email string
	key   crypto.Signer
	csr   []byte            // the enrollment request, with the code
	cert  *x509.Certificate // the certificate the next renewal is signed with
	left  int               // messages still to send in this phase
	next  *request          // the next message, prepared before the clock; nil: made when sent
}

// request is a message sent and waiting for its reply. It completes when
// both the 250 and the reply have been seen, in either order: a fast
// daemon can deliver the reply before the sender has read its 250.
type request struct {
	id      string // the Message-ID, without angle brackets
	u       *user
	renewal bool
	signer  *x509.Certificate // the certificate that signed a renewal; nil for an enrollment
	msg     []byte            // the message; nil until made
	sent    time.Time         // the 250
	arrived time.Time         // the reply's arrival
	claimed bool              // a reply is being matched to it
	reply   *reply            // the reply, verified only after the phase
	copies  []*reply          // further replies to it: redeliveries, or a doubled effect
	// verified is the new certificate of the reply, once verified.
	verified *x509.Certificate
	// cert is the new certificate, taken from the reply during the phase
	// (without verification) when the user signs another request with it.
	cert *x509.Certificate
}

// generator runs one load test against a target.
type generator struct {
	t     target
	o     options
	runID string
	ours  map[string]bool // the users' addresses

	mu        sync.Mutex
	seq       int
	ready     chan *user // users whose next message can go out
	done      chan struct{}
	abort     chan struct{} // closed on the first failure found while matching
	failure   error
	byID      map[string]*request // every request of the run, by Message-ID without angle brackets
	all       []*request          // every request of the run, in the order sent
	reqs      []*request          // the current phase's requests
	want      int                 // replies the current phase waits for
	got       int
	retries   int // SMTP transactions tried again
	latencies []time.Duration
	arrivals  []time.Time
	last      time.Time // the last renewal reply's arrival
}

// runLoad enrolls o.Users users by mail, prepares each one's first renewal
// request, then, timed, has them send o.Renewals renewals over
// o.Concurrency SMTP connections and measures each from its 250 to its
// certificate reply. Replies are only matched to their requests during
// the timed window; every reply is verified after it, and any that fails
// fails the run.
func runLoad(ctx context.Context, t target, o options) (*outcome, error) {
	if o.Users <= 0 || o.Renewals < 0 || o.Concurrency <= 0 {
		return nil, fmt.Errorf("--users %d, --renewals %d, --concurrency %d: users and concurrency must be positive", o.Users, o.Renewals, o.Concurrency)
	}
	if o.Log == nil {
		o.Log = io.Discard
	}
	if o.Poll <= 0 {
		o.Poll = 2 * time.Millisecond
	}
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	var id [4]byte
	rand.Read(id[:])
	g := &generator{t: t, o: o, runID: hex.EncodeToString(id[:]), byID: map[string]*request{}, ours: map[string]bool{},
		abort: make(chan struct{})}
	if t.Sink != nil {
		t.Sink.setHandler(g.fromSink)
		defer t.Sink.setHandler(nil)
	}

	users, err := g.makeUsers(ctx)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(o.Log, "enrolling %d users by mail\n", len(users))
	for _, u := range users {
		u.left = 1
	}
	if err := g.prepare(ctx, users, false); err != nil {
		return nil, err
	}
	if err := g.phase(ctx, users, false, nil); err != nil {
		return nil, fmt.Errorf("enrollment: %w", err)
	}
	if err := g.verifyPhase(); err != nil {
		return nil, fmt.Errorf("enrollment: %w", err)
	}

	out := &outcome{Enrolled: len(users)}
	for i, u := range users {
		u.left = o.Renewals / len(users)
		if i < o.Renewals%len(users) {
			u.left++
		}
	}
	fmt.Fprintf(o.Log, "preparing the first renewal request of each user\n")
	if err := g.prepare(ctx, users, true); err != nil {
		return nil, err
	}
	if o.BeforeWindow != nil {
		if err := o.BeforeWindow(ctx); err != nil {
			return nil, err
		}
	}
	fmt.Fprintf(o.Log, "sending %d renewals over %d connections (timed)\n", o.Renewals, o.Concurrency)
	w := &window{pid: o.DaemonPID, profile: o.CPUProfile}
	if err := g.phase(ctx, users, true, w); err != nil {
		return nil, fmt.Errorf("renewals: %w", err)
	}
	out.CPU = cpuWindow{Start: w.start, End: w.end}
	g.mu.Lock()
	out.Latencies, out.Arrivals = g.latencies, g.arrivals
	out.Elapsed = g.last.Sub(w.start.at)
	n := len(g.reqs)
	g.mu.Unlock()
	fmt.Fprintf(o.Log, "verifying %d replies (after the timed window)\n", n)
	if err := g.verifyPhase(); err != nil {
		return nil, fmt.Errorf("renewals: %w", err)
	}
	out.Renewals = n
	if o.Settle != nil {
		if err := o.Settle(ctx); err != nil {
			return nil, err
		}
	}
	if out.Redeliveries, err = g.verifyCopies(); err != nil {
		return nil, err
	}
	g.mu.Lock()
	out.Retries = g.retries
	g.mu.Unlock()
	return out, nil
}

// makeUsers enrolls the users through the admin API and makes their keys.
// The sink accepts mail for them before the daemon sends the invitations.
func (g *generator) makeUsers(ctx context.Context) ([]*user, error) {
	users := make([]*user, g.o.Users)
	emails := make([]string, len(users))
	for i := range users {
		emails[i] = fmt.Sprintf("load-%s-%d@%s", g.runID, i, g.t.Domain)
		g.ours[emails[i]] = true
	}
	if g.t.Sink != nil {
		g.t.Sink.allow(emails...)
	}
	eg, ctx := errgroup.WithContext(ctx)
	eg.SetLimit(g.o.Concurrency)
	for i, email := range emails {
		eg.Go(func() error {
			en, err := g.t.Admin.Enroll(ctx, email, "kms-load")
			if err != nil {
				return fmt.Errorf("enroll %s through the admin API: %w", email, err)
			}
			key, err := newKey(g.o.UserKey)
			if err != nil {
				return err
			}
			csr, err := smime.CreateCSR(key, email, en.Code)
			if err != nil {
				return err
			}
			users[i] = &user{email: email, key: key, csr: csr}
			return nil
		})
	}
	return users, eg.Wait()
}

func newKey(kind string) (crypto.Signer, error) {
	switch kind {
	case "", "p256":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "rsa2048":
		return rsa.GenerateKey(rand.Reader, 2048)
	}
	return nil, fmt.Errorf("--user-key %q: use p256 or rsa2048", kind)
}

// newRequest makes the request for u's next message; g.mu is held.
func (g *generator) newRequest(u *user, renewal bool) *request {
	g.seq++
	r := &request{id: fmt.Sprintf("kms-load-%s-%d@load.invalid", g.runID, g.seq), u: u, renewal: renewal}
	if renewal {
		r.signer = u.cert
	}
	return r
}

// build makes r's message: a renewal signed with r.signer, or an
// enrollment with the user's CSR.
func (g *generator) build(r *request, now time.Time) error {
	if !r.renewal {
		r.msg = enrollmentMessage(r.u.email, g.t.KMSAddress, r.id, r.u.csr, now)
		return nil
	}
	var err error
	r.msg, err = renewalMessage(r.u.email, g.t.KMSAddress, r.id, r.u.key, r.signer, now)
	return err
}

// prepare makes every user's first message of the coming phase, so that
// the phase only sends bytes; later renewals of a user need the
// certificate of the reply before, and are signed when they go out.
func (g *generator) prepare(ctx context.Context, users []*user, renewal bool) error {
	var todo []*request
	g.mu.Lock()
	for _, u := range users {
		if u.left > 0 {
			u.next = g.newRequest(u, renewal)
			todo = append(todo, u.next)
		}
	}
	g.mu.Unlock()
	now := time.Now()
	eg, ctx := errgroup.WithContext(ctx)
	eg.SetLimit(runtime.NumCPU())
	for _, r := range todo {
		eg.Go(func() error {
			if err := ctx.Err(); err != nil {
				return err
			}
			return g.build(r, now)
		})
	}
	return eg.Wait()
}

// phase sends every user's messages (one enrollment each, or their
// renewals one after the other) and waits until every reply is matched to
// its request. With a window w, the phase is timed: the clock starts once
// the connections are open and stops at the last reply.
func (g *generator) phase(ctx context.Context, users []*user, renewal bool, w *window) error {
	total := 0
	for _, u := range users {
		total += u.left
	}
	g.mu.Lock()
	g.want, g.got, g.reqs = total, 0, nil
	g.ready = make(chan *user, len(users))
	g.done = make(chan struct{})
	ready, done := g.ready, g.done
	g.mu.Unlock()
	if total == 0 {
		return nil
	}
	// The connections open before the clock starts, and a daemon that
	// refuses them now is misconfigured rather than restarting: no retry.
	// Each sender owns its connection from here on, and closes it.
	conns := make([]*smtpclient.Client, 0, g.o.Concurrency)
	defer func() {
		for _, c := range conns { // those no sender took: the phase failed first
			c.Close()
		}
	}()
	for range g.o.Concurrency {
		c, err := g.dial()
		if err != nil {
			return err
		}
		conns = append(conns, c)
	}
	for _, u := range users {
		if u.left > 0 {
			ready <- u
		}
	}
	if w != nil {
		if err := w.begin(); err != nil {
			return err
		}
		defer w.finish()
	}
	run := ctx
	eg, ctx := errgroup.WithContext(ctx)
	eg.Go(func() error {
		select {
		case <-done:
			if w != nil {
				w.finish()
			}
			return errPhaseDone
		case <-g.abort:
			return g.failed()
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	if g.t.Sink == nil {
		eg.Go(func() error { return g.watch(ctx, done) })
	}
	for _, c := range conns {
		eg.Go(func() error { return g.send(ctx, c, ready, renewal) })
	}
	conns = nil
	err := eg.Wait()
	if errors.Is(err, errPhaseDone) {
		return nil
	}
	if err == nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		g.mu.Lock()
		defer g.mu.Unlock()
		if errors.Is(run.Err(), context.Canceled) {
			return fmt.Errorf("%d of %d replies when the run was interrupted: %w%s", g.got, g.want, context.Canceled, g.outstanding())
		}
		return fmt.Errorf("%d of %d replies after --timeout %s: %w%s", g.got, g.want, g.o.Timeout, context.DeadlineExceeded, g.outstanding())
	}
	return err
}

// outstanding names the first few requests of the phase that did not
// complete, and what of them was seen: the evidence of a lost message.
// g.mu is held.
func (g *generator) outstanding() string {
	const shown = 5
	var b strings.Builder
	n := 0
	for _, r := range g.reqs {
		if !r.sent.IsZero() && r.reply != nil {
			continue
		}
		if n++; n <= shown {
			fmt.Fprintf(&b, "\n  <%s> from %s: ", r.id, r.u.email)
			switch {
			case r.sent.IsZero() && !r.claimed:
				b.WriteString("no 250, no reply")
			case r.sent.IsZero():
				b.WriteString("no 250 (still being sent), a reply")
			default:
				b.WriteString("250 seen, no reply")
			}
		}
	}
	if n > shown {
		fmt.Fprintf(&b, "\n  and %d more", n-shown)
	}
	if len(g.reqs) < g.want {
		fmt.Fprintf(&b, "\n  and %d not sent yet", g.want-len(g.reqs))
	}
	return b.String()
}

// errPhaseDone ends a phase's goroutines once every reply is in.
var errPhaseDone = errors.New("phase complete")

// fail records the first failure found while matching replies and ends
// the phase.
func (g *generator) fail(err error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.failure == nil {
		g.failure = err
		close(g.abort)
	}
}

func (g *generator) failed() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.failure
}

// complete finishes r once both its 250 and its reply are in: it records
// the latency, gives the user the new certificate and puts them back in
// line. g.mu is held.
func (g *generator) complete(r *request) {
	if r.sent.IsZero() || r.reply == nil {
		return
	}
	u := r.u
	if r.cert != nil {
		u.cert = r.cert
	}
	u.left--
	if r.renewal {
		g.latencies = append(g.latencies, max(r.arrived.Sub(r.sent), 0))
		g.arrivals = append(g.arrivals, r.arrived)
		if r.arrived.After(g.last) {
			g.last = r.arrived
		}
	}
	g.got++
	if g.o.Progress != nil {
		g.o.Progress(r.renewal, g.got, g.want)
	}
	if g.got == g.want {
		close(g.done)
		return
	}
	if u.left > 0 {
		g.ready <- u // never blocks: one slot per user
	}
}

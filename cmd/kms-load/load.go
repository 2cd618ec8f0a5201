package main

import (
	"bytes"
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
	netmail "net/mail"
	"net/smtp"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/kmsmail/kms/admin"
	"github.com/kmsmail/kms/mail/smime"
)

// target is a running daemon as the generator reaches it.
type target struct {
	SMTPAddr   string        // the SMTP listener, host:port on loopback
	Admin      *admin.Client // enrolls the users
	Maildir    string        // the daemon's Maildir; its new/ is polled for replies
	KMSAddress string        // kms@DOMAIN
	Domain     string        // the users' mail domain, one the daemon serves
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
}

// outcome is what a run measured.
type outcome struct {
	Renewals  int             // certificate replies received for renewals
	Elapsed   time.Duration   // first renewal sent to last reply seen
	Latencies []time.Duration // per renewal: the SMTP 250 to the reply in new/
	Enrolled  int
}

// user is one simulated mail user: a key and the newest certificate.
type user struct {
	email string
	key   crypto.Signer
	csr   []byte            // the enrollment request, with the code
	cert  *x509.Certificate // the newest certificate, once enrolled
	left  int               // messages still to send in this phase
}

// request is a message sent and waiting for its reply. It completes when
// both the 250 and the reply have been seen, in either order: a fast
// daemon can deliver the reply before the sender has read its 250.
type request struct {
	u       *user
	renewal bool
	sent    time.Time // the 250
	arrived time.Time // the reply file seen in new/
	cert    *x509.Certificate
}

// generator runs one load test against a target.
type generator struct {
	t     target
	o     options
	runID string
	ready chan *user // users whose next message can go out
	done  chan struct{}

	mu        sync.Mutex
	seq       int
	pending   map[string]*request // by Message-ID, without angle brackets
	ours      map[string]bool     // the users' addresses
	want      int                 // replies the current phase waits for
	got       int
	latencies []time.Duration
	first     time.Time // the first renewal's 250
	last      time.Time // the last renewal completed
}

// runLoad enrolls o.Users users by mail, then has them send o.Renewals
// signed renewal requests over o.Concurrency SMTP connections, and measures
// each from its 250 to its certificate reply in the Maildir.
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
	g := &generator{t: t, o: o, runID: hex.EncodeToString(id[:]), pending: map[string]*request{}, ours: map[string]bool{}}

	users, err := g.makeUsers(ctx)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(o.Log, "enrolling %d users by mail\n", len(users))
	if err := g.phase(ctx, users, false); err != nil {
		return nil, fmt.Errorf("enrollment: %w", err)
	}
	out := &outcome{Enrolled: len(users)}
	for i := range users {
		users[i].left = o.Renewals / len(users)
		if i < o.Renewals%len(users) {
			users[i].left++
		}
	}
	fmt.Fprintf(o.Log, "sending %d renewals over %d connections\n", o.Renewals, o.Concurrency)
	err = g.phase(ctx, users, true)
	g.mu.Lock()
	out.Renewals, out.Latencies = len(g.latencies), g.latencies
	if !g.first.IsZero() {
		out.Elapsed = g.last.Sub(g.first)
	}
	g.mu.Unlock()
	if err != nil {
		return out, fmt.Errorf("renewals: %w", err)
	}
	return out, nil
}

// makeUsers enrolls the users through the admin API and makes their keys.
func (g *generator) makeUsers(ctx context.Context) ([]*user, error) {
	users := make([]*user, g.o.Users)
	for i := range users {
		email := fmt.Sprintf("load-%s-%d@%s", g.runID, i, g.t.Domain)
		en, err := g.t.Admin.Enroll(ctx, email, "kms-load")
		if err != nil {
			return nil, fmt.Errorf("enroll %s through the admin API: %w", email, err)
		}
		key, err := newKey(g.o.UserKey)
		if err != nil {
			return nil, err
		}
		csr, err := smime.CreateCSR(key, email, en.Code)
		if err != nil {
			return nil, err
		}
		users[i] = &user{email: email, key: key, csr: csr}
		g.ours[email] = true
	}
	return users, nil
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

// nextID returns a fresh Message-ID (without angle brackets); g.mu is held.
func (g *generator) nextID() string {
	g.seq++
	return fmt.Sprintf("kms-load-%s-%d@load.invalid", g.runID, g.seq)
}

// phase sends every user's messages (one enrollment each, or their
// renewals one after the other) and waits for all the replies.
func (g *generator) phase(ctx context.Context, users []*user, renewal bool) error {
	total := 0
	for _, u := range users {
		if !renewal {
			u.left = 1
		}
		total += u.left
	}
	g.mu.Lock()
	g.want, g.got = total, 0
	g.mu.Unlock()
	if total == 0 {
		return nil
	}
	g.ready = make(chan *user, len(users))
	g.done = make(chan struct{})
	for _, u := range users {
		if u.left > 0 {
			g.ready <- u
		}
	}
	eg, ctx := errgroup.WithContext(ctx)
	eg.Go(func() error { return g.watch(ctx, renewal) })
	for range g.o.Concurrency {
		eg.Go(func() error { return g.send(ctx, renewal) })
	}
	err := eg.Wait()
	if errors.Is(err, errPhaseDone) {
		return nil
	}
	if err == nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		g.mu.Lock()
		defer g.mu.Unlock()
		return fmt.Errorf("%d of %d replies after --timeout %s: %w", g.got, g.want, g.o.Timeout, context.DeadlineExceeded)
	}
	return err
}

// errPhaseDone ends a phase's goroutines once every reply is in.
var errPhaseDone = errors.New("phase complete")

// send is one SMTP connection: it takes ready users and sends each one's
// next message, several transactions a connection.
func (g *generator) send(ctx context.Context, renewal bool) error {
	c, err := smtp.Dial(g.t.SMTPAddr)
	if err != nil {
		return fmt.Errorf("SMTP connect %s: %w", g.t.SMTPAddr, err)
	}
	defer c.Close()
	if err := c.Hello("kms-load.localhost"); err != nil {
		return fmt.Errorf("SMTP EHLO: %w", err)
	}
	for {
		var u *user
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-g.done:
			c.Quit()
			return errPhaseDone
		case u = <-g.ready:
		}
		g.mu.Lock()
		id := g.nextID()
		r := &request{u: u, renewal: renewal}
		g.pending[id] = r
		g.mu.Unlock()
		now := time.Now()
		var msg []byte
		if renewal {
			msg, err = renewalMessage(u.email, g.t.KMSAddress, id, u.key, u.cert, now)
		} else {
			msg = enrollmentMessage(u.email, g.t.KMSAddress, id, u.csr, now)
		}
		if err != nil {
			return err
		}
		if err := transaction(c, u.email, g.t.KMSAddress, msg); err != nil {
			return fmt.Errorf("SMTP, message from %s: %w", u.email, err)
		}
		g.mu.Lock()
		r.sent = time.Now()
		if renewal && g.first.IsZero() {
			g.first = r.sent
		}
		g.complete(id, r)
		g.mu.Unlock()
	}
}

// transaction sends one message on an open connection.
func transaction(c *smtp.Client, from, to string, msg []byte) error {
	if err := c.Mail(from); err != nil {
		return err
	}
	if err := c.Rcpt(to); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(msg); err != nil {
		return err
	}
	return w.Close() // returns after the reply to the final dot: the 250
}

// complete finishes r once both its 250 and its reply are in: it records
// the latency, gives the user the new certificate and puts them back in
// line. g.mu is held.
func (g *generator) complete(id string, r *request) {
	if r.sent.IsZero() || r.arrived.IsZero() {
		return
	}
	delete(g.pending, id)
	r.u.cert = r.cert
	r.u.left--
	if r.renewal {
		lat := max(r.arrived.Sub(r.sent), 0)
		g.latencies = append(g.latencies, lat)
		g.last = r.arrived
	}
	g.got++
	if g.got == g.want {
		close(g.done)
		return
	}
	if r.u.left > 0 {
		g.ready <- r.u // never blocks: one slot per user
	}
}

// watch polls the Maildir's new/ for replies to pending requests, checks
// each (KMS signature, a certificate for the user), removes it as a mail
// reader would, and completes the request.
func (g *generator) watch(ctx context.Context, renewal bool) error {
	dir := filepath.Join(g.t.Maildir, "new")
	t := time.NewTicker(g.o.Poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-g.done:
			return errPhaseDone
		case <-t.C:
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			return fmt.Errorf("read Maildir %s: %w", dir, err)
		}
		for _, e := range entries {
			if err := g.consider(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
}

// consider handles one file of new/: a reply to a pending request, other
// mail to the run's users (invitations), or someone else's mail (left).
func (g *generator) consider(path string) error {
	seen := time.Now()
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	m, err := netmail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return nil // not ours to judge
	}
	to, _ := netmail.ParseAddress(m.Header.Get("To"))
	if to == nil || !g.ours[to.Address] {
		return nil
	}
	id := strings.Trim(m.Header.Get("In-Reply-To"), "<> ")
	g.mu.Lock()
	r := g.pending[id]
	g.mu.Unlock()
	if r == nil {
		return os.Remove(path) // an invitation, or a reply of an earlier phase
	}
	cert, err := g.certificate(raw, r.u)
	if err != nil {
		return fmt.Errorf("reply to %s (%q, %s): %w", r.u.email, m.Header.Get("Subject"), path, err)
	}
	g.mu.Lock()
	r.arrived, r.cert = seen, cert
	g.complete(id, r)
	g.mu.Unlock()
	// Removed after the user is back in line: an unlink waits for the
	// file system's journal, which is busy with the daemon's fsyncs.
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// certificate verifies a certificate reply and returns the certificate
// for u it carries.
func (g *generator) certificate(raw []byte, u *user) (*x509.Certificate, error) {
	// Maildir files have LF line ends; the signature is over CRLF.
	raw = bytes.ReplaceAll(raw, []byte("\n"), []byte("\r\n"))
	req, err := smime.ParseRequest(raw, smime.Limits{})
	if err != nil {
		return nil, err
	}
	v, err := req.Verify(smime.VerifyOptions{Roots: g.t.Roots, At: time.Now()})
	if err != nil {
		return nil, fmt.Errorf("the KMS signature does not verify: %w", err)
	}
	for _, c := range v.Signature.Certificates {
		if len(c.EmailAddresses) == 1 && c.EmailAddresses[0] == u.email && (u.cert == nil || !c.Equal(u.cert)) {
			return c, nil
		}
	}
	return nil, errors.New("not a certificate reply: it carries no new certificate for the user")
}

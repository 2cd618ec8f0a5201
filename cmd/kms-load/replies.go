package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	netmail "net/mail"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/kmsmail/kms/mail/smime"
)

// The daemon's replies: matched to their requests by In-Reply-To during a
// phase, which is all the timed window pays for, and verified after it.

// fromSink is the sink's handler: every message the daemon relays.
func (g *generator) fromSink(rep *reply) {
	h, err := readHeader(rep.raw)
	if err != nil {
		return // not a reply to anything; kept by the sink all the same
	}
	if err := g.match(rep, inReplyTo(h)); err != nil {
		g.fail(err)
	}
}

// readHeader parses the header fields of a message, not its body.
func readHeader(raw []byte) (netmail.Header, error) {
	m, err := netmail.ReadMessage(bytes.NewReader(raw))
	if err != nil {
		return nil, err
	}
	return m.Header, nil
}

func inReplyTo(h netmail.Header) string { return strings.Trim(h.Get("In-Reply-To"), "<> \t") }

// match pairs rep with the request it answers, if any, and completes the
// request. Nothing is verified here: when the user has another renewal to
// send, the new certificate is only taken out of the reply (a base64
// decode and a certificate parse) to sign it with. A reply to a request
// that has one already is kept as a copy, checked after the run by
// verifyCopies; a reply to no request of the run (an invitation) is
// ignored.
func (g *generator) match(rep *reply, id string) error {
	if id == "" {
		return nil
	}
	g.mu.Lock()
	r := g.byID[id]
	if r == nil {
		g.mu.Unlock()
		return nil
	}
	if r.claimed {
		r.copies = append(r.copies, rep)
		g.mu.Unlock()
		return nil
	}
	r.claimed = true
	needCert := r.renewal && r.u.left > 1
	g.mu.Unlock()
	var cert *x509.Certificate
	if needCert {
		var err error
		if cert, err = nextCert(rep.raw, r.u); err != nil {
			return fmt.Errorf("%s: %w", r.describe(rep), err)
		}
	}
	g.mu.Lock()
	r.reply, r.arrived, r.cert = rep, rep.at, cert
	g.complete(r)
	g.mu.Unlock()
	return nil
}

// describe names the reply rep to r, for errors.
func (r *request) describe(rep *reply) string {
	kind := "enrollment"
	if r.renewal {
		kind = "renewal"
	}
	return fmt.Sprintf("the reply to %s's %s request <%s> (%s)", r.u.email, kind, r.id, rep.where)
}

// nextCert takes the user's new certificate out of a certificate reply's
// certs-only attachment without verifying anything, and checks only that
// it is for the user's address and key, so that the next request can be
// signed with it. The reply is verified in full after the phase.
func nextCert(raw []byte, u *user) (*x509.Certificate, error) {
	i := bytes.Index(raw, []byte("smime-type=certs-only"))
	if i < 0 {
		return nil, errors.New("not a certificate reply: no certs-only attachment")
	}
	body := raw[i:]
	// The part's body starts after its header's empty line and ends at
	// the next boundary line; line ends may be CRLF or, from a Maildir, LF.
	start := bytes.Index(body, []byte("\n\r\n"))
	if j := bytes.Index(body, []byte("\n\n")); j >= 0 && (start < 0 || j < start) {
		start = j
	}
	if start < 0 {
		return nil, errors.New("certs-only attachment without a body")
	}
	body = body[start+1:]
	if end := bytes.Index(body, []byte("\n--")); end >= 0 {
		body = body[:end]
	}
	der := make([]byte, base64.StdEncoding.DecodedLen(len(body)))
	n, err := base64.StdEncoding.Decode(der, bytes.TrimSpace(body)) // skips the line ends
	if err != nil {
		return nil, fmt.Errorf("certs-only attachment: %w", err)
	}
	certs, err := smime.ParseCertsOnly(der[:n])
	if err != nil {
		return nil, err
	}
	for _, c := range certs {
		if len(c.EmailAddresses) == 1 && strings.EqualFold(c.EmailAddresses[0], u.email) {
			if !samePublicKey(c, u.key) {
				return nil, errors.New("the certificate for the user is not for the user's key")
			}
			return c, nil
		}
	}
	return nil, errors.New("the certs-only attachment holds no certificate for the user")
}

func samePublicKey(c *x509.Certificate, key crypto.Signer) bool {
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	return ok && pub.Equal(c.PublicKey)
}

// watch polls the Maildir's new/ for replies to pending requests, until
// the phase is done.
func (g *generator) watch(ctx context.Context, done <-chan struct{}) error {
	dir := filepath.Join(g.t.Maildir, "new")
	t := time.NewTicker(g.o.Poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-done:
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

// consider handles one file of new/: mail to the run's users (a reply to a
// pending request, or an invitation) is taken and removed as a mail
// reader would; anyone else's mail is left.
func (g *generator) consider(path string) error {
	rep := &reply{at: time.Now(), where: path}
	raw, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	rep.raw = raw
	h, err := readHeader(raw)
	if err != nil {
		return nil // not ours to judge
	}
	to, _ := netmail.ParseAddress(h.Get("To"))
	if to == nil || !g.ours[to.Address] {
		return nil
	}
	if err := g.match(rep, inReplyTo(h)); err != nil {
		return err
	}
	// Removed after the user is back in line: an unlink waits for the
	// file system's journal, which is busy with the daemon's fsyncs.
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// verifyPhase verifies every reply of the phase just ended, on all CPUs
// (the clock has stopped), and gives each enrolled user the certificate
// of their verified reply. It fails when any reply does, naming them.
func (g *generator) verifyPhase() error {
	g.mu.Lock()
	reqs := g.reqs
	g.mu.Unlock()
	errs := make([]error, len(reqs))
	certs := make([]*x509.Certificate, len(reqs))
	var wg sync.WaitGroup
	next := make(chan int)
	for range runtime.NumCPU() {
		wg.Go(func() {
			for i := range next {
				certs[i], errs[i] = g.verify(reqs[i])
			}
		})
	}
	for i := range reqs {
		next <- i
	}
	close(next)
	wg.Wait()
	var failed []error
	g.mu.Lock()
	for i, r := range reqs {
		if errs[i] != nil {
			failed = append(failed, errs[i])
			continue
		}
		r.verified = certs[i]
		if !r.renewal {
			r.u.cert = certs[i]
		}
	}
	g.mu.Unlock()
	return joinFailures(failed, fmt.Sprintf("%d of %d replies fail verification:", len(failed), len(reqs)))
}

// joinFailures is nil for no failures, the one for one, and else head
// followed by the first few.
func joinFailures(failed []error, head string) error {
	switch {
	case len(failed) == 0:
		return nil
	case len(failed) == 1:
		return failed[0]
	}
	const shown = 5
	msg := head
	for _, err := range failed[:min(len(failed), shown)] {
		msg += "\n  " + err.Error()
	}
	if len(failed) > shown {
		msg += fmt.Sprintf("\n  and %d more", len(failed)-shown)
	}
	return errors.New(msg)
}

// verifyCopies checks every reply that arrived for a request already
// answered, once every phase is verified, and returns how many there
// were. The relay transport delivers at least once: a daemon that crashes
// after the relay's 250 and before it records the delivery sends the same
// reply again, with the same Message-ID and the same certificate, which a
// mail client shows once; that is a redelivery, and counted. A copy with
// another Message-ID is the request answered twice, and one with another
// certificate the request acted on twice (two certificates for one
// request): either fails the run. Copies that arrive after runLoad
// returns are not seen here.
func (g *generator) verifyCopies() (int, error) {
	type copyOf struct {
		r   *request
		rep *reply
	}
	var todo []copyOf
	g.mu.Lock()
	for _, r := range g.all {
		for _, c := range r.copies {
			todo = append(todo, copyOf{r, c})
		}
	}
	g.mu.Unlock()
	var failed []error
	for _, c := range todo {
		if err := g.sameReply(c.r, c.rep); err != nil {
			failed = append(failed, fmt.Errorf("%s: %w", c.r.describe(c.rep), err))
		}
	}
	return len(todo), joinFailures(failed, fmt.Sprintf("%d of %d replies received again are not the same reply:", len(failed), len(todo)))
}

// sameReply checks that rep, a further reply to r, verifies and is the
// reply r had first: the same Message-ID, the same new certificate.
func (g *generator) sameReply(r *request, rep *reply) error {
	if r.verified == nil {
		return errors.New("received again, but the first reply was not verified")
	}
	cert, err := g.check(r, rep)
	if err != nil {
		return fmt.Errorf("received again: %w", err)
	}
	if !cert.Equal(r.verified) {
		return fmt.Errorf("a second, different certificate (serial %x; the first reply's is %x): the request took effect twice",
			cert.SerialNumber, r.verified.SerialNumber)
	}
	first, err1 := readHeader(r.reply.raw)
	again, err2 := readHeader(rep.raw)
	if err := errors.Join(err1, err2); err != nil {
		return err
	}
	if a, b := again.Get("Message-ID"), first.Get("Message-ID"); a == "" || a != b {
		return fmt.Errorf("received again with Message-ID %q (the first reply's is %q): the request was answered twice", a, b)
	}
	return nil
}

// verify checks a reply as a mail client would before trusting it, and
// returns the new certificate it carries: addressed and delivered to the
// user, signed by the KMS address with a chain to the CA roots, carrying a
// certificate for the user's address and key that chains to the roots too
// and is not the one that signed the request. A certificate taken from the
// reply during the phase must be that one.
func (g *generator) verify(r *request) (*x509.Certificate, error) {
	rep := r.reply
	if rep == nil {
		return nil, fmt.Errorf("request <%s> of %s: no reply", r.id, r.u.email)
	}
	c, err := g.check(r, rep)
	if err == nil && r.cert != nil && !r.cert.Equal(c) {
		err = errors.New("the certificate taken from it for the next renewal is not the one that verifies")
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", r.describe(rep), err)
	}
	return c, nil
}

// check makes verify's checks of one reply to r, the first or one
// received again, and returns its new certificate.
func (g *generator) check(r *request, rep *reply) (*x509.Certificate, error) {
	u := r.u
	h, err := readHeader(rep.raw)
	if err != nil {
		return nil, err
	}
	to, err := h.AddressList("To")
	if err != nil || len(to) != 1 || !strings.EqualFold(to[0].Address, u.email) {
		return nil, fmt.Errorf("addressed to %q, not to the user", h.Get("To"))
	}
	if rep.rcpts != nil && !containsFold(rep.rcpts, u.email) {
		return nil, fmt.Errorf("delivered to %v, not to the user", rep.rcpts)
	}
	req, err := smime.ParseRequest(rep.raw, smime.Limits{})
	if err != nil {
		return nil, err
	}
	v, err := req.Verify(smime.VerifyOptions{Roots: g.t.Roots, At: rep.at})
	if err != nil {
		return nil, fmt.Errorf("the KMS signature does not verify: %w", err)
	}
	if s := v.Signature.Signer; !containsFold(s.EmailAddresses, g.t.KMSAddress) {
		return nil, fmt.Errorf("signed by %v, not by the KMS address %s", s.EmailAddresses, g.t.KMSAddress)
	}
	var cert *x509.Certificate
	for _, c := range v.Signature.Certificates {
		if len(c.EmailAddresses) == 1 && strings.EqualFold(c.EmailAddresses[0], u.email) && (r.signer == nil || !c.Equal(r.signer)) {
			cert = c
			break
		}
	}
	if cert == nil {
		return nil, errors.New("not a certificate reply: it carries no new certificate for the user")
	}
	if !samePublicKey(cert, u.key) {
		return nil, errors.New("the new certificate is not for the user's key")
	}
	inter := x509.NewCertPool()
	for _, c := range v.Signature.Certificates {
		inter.AddCert(c)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: g.t.Roots, Intermediates: inter, CurrentTime: rep.at,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("the new certificate does not chain to the CA roots: %w", err)
	}
	return cert, nil
}

func containsFold(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

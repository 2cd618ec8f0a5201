package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/kmsmail/kms/mail/smtpclient"
)

// The sending side: the users' mail clients, one SMTP connection each,
// retrying as mail clients do.

// send is one SMTP connection: it takes ready users and sends each one's
// next message, several transactions a connection.
//
// It retries as a mail client does: when a transaction fails with the
// connection refused or cut, or with a 4xx, it reconnects with a short
// backoff, for as long as the run's --timeout allows, and sends the same
// bytes again. A message whose 250 was seen is never sent again. One whose
// 250 was not seen may have been committed all the same (the daemon
// crashed between its commit and the 250): the daemon recognises the same
// bytes by their digest, answers 250 and does not act twice. A 5xx fails
// the run. This is on in every run: a normal one reports 0 retries.
func (g *generator) send(ctx context.Context, c *smtpclient.Client, ready <-chan *user, renewal bool) error {
	// The client has no context: closing the connection ends a
	// transaction that a stuck daemon never answers.
	watch := func(c *smtpclient.Client) func() bool { return context.AfterFunc(ctx, func() { c.Close() }) }
	stop := watch(c)
	defer func() {
		if c != nil && stop() {
			c.Close()
		}
	}()
	for {
		var u *user
		select {
		case <-ctx.Done():
			return ctx.Err()
		case u = <-ready:
		}
		g.mu.Lock()
		r := u.next
		u.next = nil
		if r == nil {
			r = g.newRequest(u, renewal)
		}
		g.byID[r.id] = r
		g.reqs = append(g.reqs, r)
		g.all = append(g.all, r)
		g.mu.Unlock()
		if r.msg == nil {
			if err := g.build(r, time.Now()); err != nil {
				return err
			}
		}
		for attempt := 0; ; attempt++ {
			if c == nil {
				var err error
				if c, err = g.redial(ctx); err != nil {
					return err
				}
				stop = watch(c)
			}
			if attempt > 0 {
				g.mu.Lock()
				g.retries++
				g.mu.Unlock()
			}
			_, err := c.Send(u.email, []string{g.t.KMSAddress}, r.msg)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if !transient(err) {
				return fmt.Errorf("SMTP, message <%s> from %s: %w", r.id, u.email, err)
			}
			fmt.Fprintf(g.o.Log, "SMTP, message <%s> from %s: %v; sending it again\n", r.id, u.email, err)
			stop()
			c.Close()
			c = nil
		}
		g.mu.Lock()
		r.sent = time.Now()
		g.complete(r)
		g.mu.Unlock()
	}
}

// dial opens an SMTP connection to the daemon and greets it.
func (g *generator) dial() (*smtpclient.Client, error) {
	conn, err := net.Dial("tcp", g.t.SMTPAddr)
	if err != nil {
		return nil, fmt.Errorf("SMTP connect %s: %w", g.t.SMTPAddr, err)
	}
	c, err := greet(conn)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("SMTP greeting and EHLO: %w", err)
	}
	return c, nil
}

// Reconnection backoff: short, since the daemon on loopback is back (if
// it comes back) within a second or two of a crash.
const (
	retryFirst = 20 * time.Millisecond
	retryMax   = 500 * time.Millisecond
)

// redial reconnects after a failed transaction: it waits a backoff first
// (doubling from retryFirst up to retryMax) and tries until a connection
// is greeted or ctx, bounded by the run's --timeout, ends.
func (g *generator) redial(ctx context.Context) (*smtpclient.Client, error) {
	wait := retryFirst
	for {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
		c, err := g.dial()
		if err == nil {
			return c, nil
		}
		if !transient(err) {
			return nil, err // a 5xx greeting: the daemon refuses us for good
		}
		wait = min(2*wait, retryMax)
	}
}

// transient says whether a failed SMTP transaction is worth sending again:
// a 4xx reply, or anything that is not a reply at all (the connection
// refused, reset or closed, a garbled reply). A 5xx is final.
func transient(err error) bool {
	var r *smtpclient.Reply
	if errors.As(err, &r) {
		return r.Code < 500
	}
	return true
}

// greet reads the daemon's greeting on conn and says EHLO. The client is
// mail/smtpclient, the one the daemon's relay sends with: it pipelines
// (RFC 2920) and uses BDAT (RFC 3030) where the server offers them, as the
// daemon's does, so a request is one write and one wait instead of four
// of each, CPU that the generator would otherwise take from the daemon.
func greet(conn net.Conn) (*smtpclient.Client, error) {
	c, err := smtpclient.New(conn, 0)
	if err != nil {
		return nil, err
	}
	if err := c.Hello("kms-load.localhost"); err != nil {
		return nil, err
	}
	return c, nil
}

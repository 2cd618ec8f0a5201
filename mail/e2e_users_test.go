package mail

import (
	"context"
	"crypto"
	"crypto/x509"

	"github.com/kmsmail/kms/mail/smime"
)

// The users of the e2eDaemon tests: enrolled and renewed through the real
// mail path, as a mail client would.

// e2eUser is a user whose mail client is the test.
type e2eUser struct {
	email string
	key   crypto.Signer
	cert  *x509.Certificate // the newest certificate kms sent
	code  string            // the enrollment code the administrator gave
}

// invite enrolls email through the service, as `kms user enroll` does
// through the admin API, and returns the user with a fresh P-256 key.
func (d *e2eDaemon) invite(email string) *e2eUser {
	d.t.Helper()
	en, err := d.svc.Enroll(context.Background(), email, "", "admin:test")
	if err != nil {
		d.t.Fatalf("enroll %s: %v", email, err)
	}
	d.settleOrFail() // the invitation goes out now, not with the next reply
	return &e2eUser{email: email, key: e2eKey(d.t, "p256"), code: en.Code}
}

// certificateReply sends msg from u, lets it be processed and returns the
// certificate the reply carries, checking the reply's KMS signature.
func (d *e2eDaemon) certificateReply(u *e2eUser, msg []byte) *x509.Certificate {
	d.t.Helper()
	m := d.mark()
	if r := d.send(u.email, nil, msg); r.data != 250 {
		d.t.Fatalf("%s: SMTP %+v", u.email, r)
	}
	d.settleOrFail()
	got := d.deliveredAfter(m)
	if len(got) != 1 || got[0].to != "<"+u.email+">" {
		d.t.Fatalf("%s: want one certificate reply, the Maildir got %+v; queued %q; inbound %+v", u.email, got, d.queuedAfter(m), d.inboundAfter(m.inbound))
	}
	req, err := smime.ParseRequest(got[0].raw, smime.Limits{})
	if err != nil {
		d.t.Fatal(err)
	}
	v, err := req.Verify(smime.VerifyOptions{Roots: d.roots, At: d.clock.Now()})
	if err != nil {
		d.t.Fatalf("certificate reply does not verify: %v", err)
	}
	for _, c := range v.Signature.Certificates {
		if len(c.EmailAddresses) == 1 && c.EmailAddresses[0] == u.email {
			return c
		}
	}
	d.t.Fatalf("certificate reply to %s carries no certificate for it", u.email)
	return nil
}

// enroll has u send an enrollment request with its code and keeps the
// certificate it gets back.
func (d *e2eDaemon) enroll(u *e2eUser) {
	d.t.Helper()
	msg := e2ePlain(u.email, "enrollment", "", e2eCSRParts(e2eCSR(d.t, u.key, u.email, u.code)))
	u.cert = d.certificateReply(u, msg)
}

// renewal is a same-key renewal request signed with u's current certificate.
func (d *e2eDaemon) renewal(u *e2eUser, extra string) []byte {
	d.t.Helper()
	inner := e2eText("Please renew my certificate.")
	return e2eSigned(u.email, "Re: renew", extra, inner, e2eCMS(d.t, inner, u.key, u.cert, cmsOptions{at: d.clock.Now()}))
}

// renew has u renew by a signed request and keeps the new certificate; it
// returns the request, for replays.
func (d *e2eDaemon) renew(u *e2eUser) []byte {
	d.t.Helper()
	msg := d.renewal(u, "")
	u.cert = d.certificateReply(u, msg)
	return msg
}

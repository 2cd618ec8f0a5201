package demo

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kmsmail/kms/admin"
	"github.com/kmsmail/kms/kms"
)

// Options tell Run where the running kms is.
type Options struct {
	Schedule Schedule
	DataDir  string    // the daemon's data directory, for the narration
	SMTPAddr string    // host:port of its SMTP listener
	AdminURL string    // http://host:port of its admin API, which also serves /ca.pem
	Token    string    // the admin API token
	Maildir  string    // where it delivers the mail it sends
	Out      io.Writer // the narration
}

// How long a step that kms does at once (answer a request, deliver an
// invitation) may take, and how late a scheduled one (a reminder, an
// expiry) may be beyond its time: the daemon's maintenance tick, the
// delivery poll and a busy machine.
const (
	quick = 30 * time.Second
	late  = 15 * time.Second
)

// Intro explains what is about to happen, before the daemon starts.
func Intro(w io.Writer, s Schedule, dir string) {
	n := newNarrator(w, s.Month, time.Now())
	n.para("kms demo: the whole life of S/MIME certificates, in compressed time.")
	n.para("kms keeps the S/MIME certificates of a mail domain. An administrator " +
		"enrolls a user and gives them a one-time code; the user mails a " +
		"certificate request with the code and gets the certificate back by mail. " +
		"Before it expires kms reminds them, and they renew by replying with a " +
		"signed message. Whoever lets it expire must be enrolled again.")
	n.para(fmt.Sprintf("Here one month lasts %s: a certificate lives 18 months (%s), reminders "+
		"start at month 12 and repeat every 2 months, then every half month in the "+
		"last month (by default: every 14 days, then daily in the last week). "+
		"Everything is real: the kms daemon, SMTP on loopback, S/MIME signatures, "+
		"a Maildir. Alice and Bob are played by a small S/MIME mail client inside "+
		"this program.", s.Month, s.Lifetime))
	n.para("Starting kms in " + dir + " (the first start creates its database and its certificate authority)...")
}

// Run tells the story against a running kms: Alice and Bob are enrolled;
// Alice renews after her first reminder; Bob ignores his, lapses, is
// turned away by mail, and is enrolled again. It returns nil when every
// step happened, or an error naming the step that did not (ErrStepTimeout,
// ErrRefused).
func Run(ctx context.Context, o Options) error {
	s := &story{o: o, n: newNarrator(o.Out, o.Schedule.Month, time.Now()),
		admin: admin.NewClient(o.AdminURL, o.Token),
		alice: &user{name: "Alice Example", email: "alice@" + Domain},
		bob:   &user{name: "Bob Example", email: "bob@" + Domain},
	}
	if err := s.run(ctx); err != nil {
		return err
	}
	return s.summary(ctx)
}

// story is one run of the demo.
type story struct {
	o          Options
	n          *narrator
	admin      *admin.Client
	mb         *mailbox
	alice, bob *user
	renewedAt  float64 // month of Alice's renewal
	lapsedAt   float64 // month of Bob's lapse
}

func (s *story) run(ctx context.Context) error {
	n, alice, bob := s.n, s.alice, s.bob
	fmt.Fprintf(s.o.Out, "%6s %7s  %s\n", "month", "time", "what happens")
	n.say("kms is running.")
	n.more("Data: %s", s.o.DataDir)
	n.more("SMTP: %s, admin API: %s", s.o.SMTPAddr, s.o.AdminURL)
	tr, err := fetchTrust(ctx, s.o.AdminURL)
	if err != nil {
		return err
	}
	s.mb = newMailbox(s.o.Maildir, tr, n.mail)
	n.more("Alice's and Bob's mail client trusts the kms root CA, from %s/ca.pem.", s.o.AdminURL)

	// Enrollment: a code out of band, a request by mail, a certificate back.
	codes := map[*user]string{}
	for _, u := range []*user{alice, bob} {
		if codes[u], err = s.enroll(ctx, u); err != nil {
			return err
		}
	}
	for _, u := range []*user{alice, bob} {
		if _, err := s.mb.wait(ctx, u.name+"'s invitation", u.email, kindInvitation, quick); err != nil {
			return err
		}
	}
	if err := s.request(ctx, alice, codes[alice], false); err != nil {
		return err
	}
	if err := s.request(ctx, bob, codes[bob], true); err != nil {
		return err
	}
	for _, u := range []*user{alice, bob} {
		if err := s.install(ctx, u, kindCertificate); err != nil {
			return err
		}
	}

	// Month 12: the first reminders; Alice renews by a signed reply.
	n.say("Nothing to do now: a year passes while Alice and Bob sign their mail.")
	remA, err := s.mb.wait(ctx, "Alice's first reminder", alice.email, kindReminder, time.Until(alice.cert.NotBefore.Add(s.o.Schedule.First))+late)
	if err != nil {
		return err
	}
	if err := s.renew(ctx, alice, remA); err != nil {
		return err
	}
	if err := s.install(ctx, alice, kindRenewal); err != nil {
		return err
	}
	s.renewedAt = n.months()
	n.more("Her first certificate is superseded: it stays valid until it expires, and kms no longer reminds her of it.")
	if _, err := s.mb.wait(ctx, "Bob's first reminder", bob.email, kindReminder, time.Until(bob.cert.NotBefore.Add(s.o.Schedule.First))+late); err != nil {
		return err
	}
	n.say("Bob is away and does not read his mail. kms keeps reminding him, more often as the expiry nears.")

	// Month 18: Bob's certificate expires unrenewed.
	if _, err := s.mb.wait(ctx, "Bob's lapse notice", bob.email, kindLapse, time.Until(bob.cert.NotAfter)+late); err != nil {
		return err
	}
	if _, err := s.mb.wait(ctx, "the administrators' lapse notice", AdminAddress, kindLapseAdmin, quick); err != nil {
		return err
	}
	s.lapsedAt = n.months()
	n.say("Bob's certificate has expired: Bob is now lapsed, and the administrators know.")
	return s.comeBack(ctx)
}

// comeBack is Bob's return: too late to renew by mail, so he is enrolled
// again by the administrator.
func (s *story) comeBack(ctx context.Context) error {
	n, bob := s.n, s.bob
	var last *received
	for _, m := range s.mb.mails {
		if m.to == bob.email && m.kind == kindReminder {
			last = m
		}
	}
	if err := s.renew(ctx, bob, last); err != nil {
		return err
	}
	if _, err := s.mb.wait(ctx, "the answer to Bob's late renewal", bob.email, kindLapse, quick); err != nil {
		return err
	}
	n.say("No certificate for Bob: an expired certificate proves nothing, so a lapsed user cannot come back by mail.")
	code, err := s.enroll(ctx, bob)
	if err != nil {
		return err
	}
	if _, err := s.mb.wait(ctx, "Bob's new invitation", bob.email, kindInvitation, quick); err != nil {
		return err
	}
	if err := s.request(ctx, bob, code, true); err != nil {
		return err
	}
	return s.install(ctx, bob, kindCertificate)
}

// enroll is the administrator's `kms user enroll`, through the admin API
// as the command line does it.
func (s *story) enroll(ctx context.Context, u *user) (string, error) {
	s.n.say("The administrator enrolls %s:", firstName(u))
	s.n.more("$ kms user enroll %s --name %q", u.email, u.name)
	e, err := s.admin.Enroll(ctx, u.email, u.name)
	if err != nil {
		return "", fmt.Errorf("kms user enroll %s: %w", u.email, err)
	}
	s.n.more("One-time code %s, which the administrator tells %s in person: it never travels by mail.", e.Code, firstName(u))
	return e.Code, nil
}

// request is the user's enrollment: a new key, and a request carrying the
// code, mailed to kms.
func (s *story) request(ctx context.Context, u *user, code string, attach bool) error {
	if err := u.newKey(); err != nil {
		return err
	}
	msg, err := u.enrollmentMail(code, attach, time.Now())
	if err != nil {
		return err
	}
	how := "pasted into the text as PEM"
	if attach {
		how = "attached as application/pkcs10"
	}
	s.n.say("%s makes an ECDSA P-256 key and a certificate request (PKCS#10) with the code as its challengePassword, and mails it to %s (%s).",
		firstName(u), KMSAddress, how)
	return send(ctx, s.o.SMTPAddr, u.email, msg)
}

// renew is the user's reply to a kms mail, signed with their certificate.
func (s *story) renew(ctx context.Context, u *user, to *received) error {
	msg, err := u.renewalMail(to, time.Now())
	if err != nil {
		return err
	}
	if u == s.bob {
		s.n.say("Bob is back. He replies to his last reminder, signed with his certificate, which has expired.")
	} else {
		s.n.say("%s replies to %q, signed with her certificate (multipart/signed): the signature is the proof, no code or password needed.",
			firstName(u), to.subject)
	}
	return send(ctx, s.o.SMTPAddr, u.email, msg)
}

// install waits for kms's certificate reply to u and installs the
// certificate in u's mail client.
func (s *story) install(ctx context.Context, u *user, kind mailKind) error {
	m, err := s.mb.wait(ctx, fmt.Sprintf("%s's %s", firstName(u), strings.TrimPrefix(kind.label(), "a ")), u.email, kind, quick)
	if err != nil {
		return err
	}
	c, err := u.take(m, s.mb.trust, time.Now())
	if err != nil {
		return err
	}
	s.n.say("%s's mail client checks the certificate against the kms root and installs it. It is valid for %.0f months.",
		firstName(u), s.o.Schedule.Months(c.NotAfter.Sub(c.NotBefore)))
	return nil
}

// summary prints what happened to whom, from the admin API and the
// Maildir, and checks that the story ended as it should.
func (s *story) summary(ctx context.Context) error {
	w := s.o.Out
	fmt.Fprintf(w, "\nSummary after %.1f months (%.0f seconds):\n\n", s.n.months(), time.Since(s.n.start).Seconds())
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "user\tcertificates\treminders\tstate")
	for _, u := range []*user{s.alice, s.bob} {
		d, err := s.admin.GetUser(ctx, u.email)
		if err != nil {
			return fmt.Errorf("kms user show %s: %w", u.email, err)
		}
		var states []string
		current := 0
		for i := len(d.Certificates) - 1; i >= 0; i-- {
			states = append(states, string(d.Certificates[i].State))
			if d.Certificates[i].State == kms.CertCurrent {
				current++
			}
		}
		fmt.Fprintf(tw, "%s\t%d (%s)\t%d\t%s\n", u.email, len(d.Certificates), strings.Join(states, ", "),
			s.mb.received(u.email, kindReminder), d.State)
		if d.State != kms.UserActive || len(d.Certificates) != 2 || current != 1 {
			tw.Flush()
			return fmt.Errorf("%s ended %s with %d certificates (%s); the story expects active, with two, one current",
				u.email, d.State, len(d.Certificates), strings.Join(states, ", "))
		}
	}
	tw.Flush()
	fmt.Fprintln(w)
	n := s.n
	n.para(fmt.Sprintf("Alice renewed by mail at month %.1f, after her first reminder. Bob ignored "+
		"%d reminders, lapsed at month %.1f, was turned away by mail, and was enrolled "+
		"again by the administrator; %s got %d lapse notice. Every mail kms sent was signed.",
		s.renewedAt, s.mb.received(s.bob.email, kindReminder), s.lapsedAt,
		AdminAddress, s.mb.received(AdminAddress, kindLapseAdmin)))
	n.para("Next: README.md shows how to run kms for real (kms serve, kms user enroll, " +
		"kms cert list); kms.example.yaml lists every setting; testdata/config/demo.yaml " +
		"is a compressed-time policy to try it with.")
	return nil
}

func firstName(u *user) string { return strings.Fields(u.name)[0] }

package mail

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kmsmail/kms/kms"
)

// newHostileFixture builds the users of hostileFixture through the real
// mail path: enrollment requests and a renewal over SMTP, answered by mail.
func newHostileFixture(t *testing.T) *hostileFixture {
	d := newE2EDaemon(t)
	ctx := context.Background()
	f := &hostileFixture{d: d}
	f.alice = d.invite("alice@example.com")
	f.aliceCode = f.alice.code
	d.enroll(f.alice)
	f.aliceOld = f.alice.cert
	m := d.mark()
	f.aliceRenewal = d.renew(f.alice)
	f.kmsReply = d.deliveredAfter(m)[0].raw

	f.bob, f.dave, f.erin = d.invite("bob@example.com"), d.invite("dave@example.com"), d.invite("erin@example.com")
	f.frank = d.invite("frank@" + e2eShortDomain)
	for _, u := range []*e2eUser{f.bob, f.dave, f.erin, f.frank} {
		d.enroll(u)
	}
	if _, err := d.svc.Disable(ctx, f.dave.email, -1, "admin:test"); err != nil {
		t.Fatal(err)
	}
	if _, err := d.svc.Revoke(ctx, kms.SerialHex(f.erin.cert), 1, "admin:test"); err != nil {
		t.Fatal(err)
	}
	f.ivan = d.invite("ivan@" + e2eShortDomain)
	f.gina, f.harry = d.invite("gina@example.com"), d.invite("harry@example.com")
	// Past frank's certificate (2 hours) and ivan's code (1 hour), within
	// everyone else's.
	d.clock.Advance(3 * time.Hour)
	if n, err := d.svc.ExpireDue(ctx); err != nil || n != 1 {
		t.Fatalf("ExpireDue = %d, %v; want frank lapsed", n, err)
	}
	d.settleOrFail()
	for email, want := range map[string]kms.UserState{
		"alice@example.com": kms.UserActive, "bob@example.com": kms.UserActive, "dave@example.com": kms.UserDisabled,
		"erin@example.com": kms.UserLapsed, f.frank.email: kms.UserLapsed, "gina@example.com": kms.UserInvited,
		"harry@example.com": kms.UserInvited, f.ivan.email: kms.UserInvited,
	} {
		if u, err := d.svc.GetUser(ctx, email); err != nil || u.State != want {
			t.Fatalf("fixture: %s is %v (%v), want %s", email, u, err, want)
		}
	}
	return f
}

// TestHostileRequests sends each request of hostileRows over real SMTP to
// the daemon's parts, lets them process it, and checks that nothing was
// issued, that no one but a user on record was answered, and that the
// message was closed. Then it checks that the daemon still serves: a
// renewal and two enrollments succeed.
func TestHostileRequests(t *testing.T) {
	if len(hostileRows) < 30 {
		t.Fatalf("the table has %d rows; the issue asks for at least 30", len(hostileRows))
	}
	f := newHostileFixture(t)
	d := f.d
	goroutines := runtime.NumGoroutine()
	for _, row := range hostileRows {
		t.Run(row.name, func(t *testing.T) {
			d.t = t
			// An hour apart, so that the cap of five rejections an hour
			// to one address never hides an expected reply.
			d.clock.Advance(61 * time.Minute)
			checkHostile(t, d, f, row)
		})
	}

	d.t = t
	// The daemon still serves: the users the table aimed at get their
	// certificates.
	before := d.certCount()
	d.clock.Advance(time.Hour)
	d.renew(f.alice)
	d.enroll(f.gina)  // her code survived being sent by others
	d.enroll(f.harry) // his survived wrong codes, weak keys, garbage
	if got := d.certCount(); got != before+3 {
		t.Fatalf("after the table: %d certificates, want %d", got, before+3)
	}
	var pending int
	if err := d.db.QueryRow(`SELECT COUNT(*) FROM inbound WHERE state NOT IN ('done', 'refused')`).Scan(&pending); err != nil || pending != 0 {
		t.Fatalf("%d received messages neither done nor refused (%v)", pending, err)
	}
	// No goroutine was left behind by a message (a stuck parse, a leaked
	// connection). A count, not a timing: connection goroutines end
	// shortly after QUIT, so wait for it.
	eventually(t, fmt.Sprintf("goroutines back to about %d", goroutines), func() bool {
		return runtime.NumGoroutine() <= goroutines+4
	})
	// Every mail kms ever wrote went to an address on record.
	onRecord := map[string]bool{adminAddr: true}
	for _, u := range []*e2eUser{f.alice, f.bob, f.dave, f.erin, f.frank, f.gina, f.harry, f.ivan} {
		onRecord[u.email] = true
	}
	for _, m := range d.deliveredAfter(e2eMark{}) {
		if !onRecord[e2eAddr(m.to)] {
			t.Errorf("kms mailed %s (%q), not an address on record", m.to, m.subject)
		}
	}
}

// checkHostile sends one row's message and checks what came of it.
func checkHostile(t *testing.T, d *e2eDaemon, f *hostileFixture, row hostileRow) {
	msg := row.msg(f)
	before := d.mark()
	got := d.send(row.from, row.rcpt, msg)
	final := got.data
	if final == 0 && len(got.rcpt) > 0 {
		final = got.rcpt[len(got.rcpt)-1]
	}
	if final != row.smtp {
		t.Fatalf("SMTP %+v, want %d", got, row.smtp)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := d.settle(ctx); err != nil {
		t.Fatalf("the processor did not finish (a hang?): %v", err)
	}

	if n := d.certCount(); n != before.certs {
		t.Errorf("%d certificates issued", n-before.certs)
	}
	rows := d.inboundAfter(before.inbound)
	wantStored := row.smtp == 250 && !row.dup
	switch {
	case !wantStored && len(rows) != 0:
		t.Errorf("stored %d messages, want none: %+v", len(rows), rows)
	case wantStored && len(rows) != 1:
		t.Errorf("stored %d messages, want 1: %+v", len(rows), rows)
	case wantStored:
		t.Logf("outcome: %s", rows[0].outcome)
		if r := rows[0]; r.state != string(kms.InboundRefused) || !strings.Contains(r.outcome, row.why) {
			t.Errorf("inbound row %s %q, want refused with %q in the outcome", r.state, r.outcome, row.why)
		}
	}

	queued := d.queuedAfter(before)
	want := slices.Clone(row.reply)
	sort.Strings(want)
	if !slices.Equal(queued, want) {
		t.Errorf("queued mail %q, want %q", queued, want)
	}
	var to []string
	for _, m := range d.deliveredAfter(before) {
		to = append(to, e2eAddr(m.to))
	}
	sort.Strings(to)
	var wantTo []string
	for _, r := range want {
		wantTo = append(wantTo, r[strings.IndexByte(r, ' ')+1:])
	}
	if !slices.Equal(to, wantTo) {
		t.Errorf("delivered to %q, want %q", to, wantTo)
	}
}

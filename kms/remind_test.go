package kms

import (
	"sync"
	"testing"
	"time"

	"github.com/kmsmail/kms/policy"
)

// reminderTimes returns when the reminders queued for email were queued.
func (e *env) reminderTimes(email string) []time.Time {
	e.t.Helper()
	rows, err := e.store.db.QueryContext(e.ctx, `SELECT created_at FROM outbox WHERE kind = 'reminder' AND recipient = $1 ORDER BY id`, email)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	var out []time.Time
	for rows.Next() {
		var at int64
		if err := rows.Scan(&at); err != nil {
			e.t.Fatal(err)
		}
		out = append(out, fromMS(at))
	}
	return out
}

func day(s string) time.Time {
	t, err := time.Parse("2006-01-02 15:04", s+" 09:00")
	if err != nil {
		panic(err)
	}
	return t
}

// TestReminderWalk walks one certificate, issued 2026-01-31, through its
// whole life a day at a time: no reminder before 12 months, then every 14
// days, daily in the last 7 days, nothing at expiry; then the lapse, one
// notice each to the user and the administrators, and re-enrollment.
func TestReminderWalk(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		c := e.activeUser("walker@example.com")
		for e.clock.Now().Before(c.NotAfter.Add(48 * time.Hour)) {
			if _, err := e.svc.SendReminders(e.ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := e.svc.ExpireDue(e.ctx); err != nil {
				t.Fatal(err)
			}
			e.clock.Advance(24 * time.Hour)
		}
		var want []time.Time
		for d := day("2027-01-31"); !d.After(day("2027-07-18")); d = d.AddDate(0, 0, 14) {
			want = append(want, d)
		}
		for d := day("2027-07-24"); d.Before(day("2027-07-31")); d = d.AddDate(0, 0, 1) {
			want = append(want, d)
		}
		got := e.reminderTimes("walker@example.com")
		if len(got) != len(want) {
			t.Fatalf("%d reminders, want %d:\n got  %v\n want %v", len(got), len(want), got, want)
		}
		for i := range want {
			if !got[i].Equal(want[i]) {
				t.Fatalf("reminder %d at %v, want %v", i, got[i], want[i])
			}
		}
		mail := e.outbox()
		if len(mail[MailReminder]) != len(want) || len(mail[MailLapse]) != 1 || len(mail[MailLapseAdmin]) != 1 {
			t.Fatalf("outbox: %d reminders, %d lapse, %d lapse_admin", len(mail[MailReminder]), len(mail[MailLapse]), len(mail[MailLapseAdmin]))
		}
		u, _ := e.svc.GetUser(e.ctx, "walker@example.com")
		if u.State != UserLapsed {
			t.Fatalf("user is %s after expiry, want lapsed", u.State)
		}
		en, err := e.svc.Enroll(e.ctx, "walker@example.com", "", "admin")
		if err != nil {
			t.Fatal(err)
		}
		c2, err := e.svc.EnrollByCode(e.ctx, "walker@example.com", en.Code, newKey(t).Public(), Request{})
		if err != nil {
			t.Fatal(err)
		}
		if want := policy.Months(12).AddTo(e.clock.Now()); c2.NextReminderAt == nil || !c2.NextReminderAt.Equal(want) {
			t.Fatalf("re-enrolled certificate's first reminder %v, want %v", c2.NextReminderAt, want)
		}
	})
}

// TestRenewalStopsReminders renews at each kind of point in the schedule
// and checks that the old certificate gets no reminder after the renewal.
func TestRenewalStopsReminders(t *testing.T) {
	for _, renewAt := range []string{"2026-06-01", "2027-01-31", "2027-05-10", "2027-07-26", "2027-07-30"} {
		t.Run(renewAt, func(t *testing.T) {
			e := newEnv(t, openSQLiteStore)
			c := e.activeUser("renewer@example.com")
			at := day(renewAt)
			for e.clock.Now().Before(at) {
				if _, err := e.svc.SendReminders(e.ctx); err != nil {
					t.Fatal(err)
				}
				e.clock.Advance(24 * time.Hour)
			}
			before := len(e.reminderTimes("renewer@example.com"))
			c2, err := e.svc.Renew(e.ctx, c.Serial, Request{})
			if err != nil {
				t.Fatal(err)
			}
			for e.clock.Now().Before(c.NotAfter.Add(24 * time.Hour)) {
				if _, err := e.svc.SendReminders(e.ctx); err != nil {
					t.Fatal(err)
				}
				e.clock.Advance(24 * time.Hour)
			}
			n := e.count(`SELECT COUNT(*) FROM outbox WHERE kind = 'reminder' AND payload LIKE '%' || $1 || '%'`, c.Serial)
			if n != before {
				t.Fatalf("old certificate got %d reminders after renewal (had %d before)", n-before, before)
			}
			// The new certificate's own schedule starts 12 months after it.
			first := e.count(`SELECT COUNT(*) FROM outbox WHERE kind = 'reminder' AND payload LIKE '%' || $1 || '%' AND created_at < $2`, c2.Serial,
				ms(policy.Months(12).AddTo(c2.NotBefore)))
			if first != 0 {
				t.Fatalf("new certificate reminded %d times before its 12 months", first)
			}
		})
	}
}

// TestReminderCatchUp: a daemon that was down for months sends one
// reminder when it comes back, not one per missed date.
func TestReminderCatchUp(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		e.activeUser("sleeper@example.com")
		e.clock.Set(day("2027-04-01"))
		for i := 0; i < 3; i++ {
			if _, err := e.svc.SendReminders(e.ctx); err != nil {
				t.Fatal(err)
			}
		}
		got := e.reminderTimes("sleeper@example.com")
		if len(got) != 1 {
			t.Fatalf("%d reminders after downtime, want 1 catch-up", len(got))
		}
		c, _ := e.svc.ListCerts(e.ctx, CertFilter{Email: "sleeper@example.com"})
		if want := day("2027-04-15"); c[0].NextReminderAt == nil || !c[0].NextReminderAt.Equal(want) {
			t.Fatalf("next reminder %v, want %v (14 days after the catch-up)", c[0].NextReminderAt, want)
		}
	})
}

// TestRemindersTwoDaemons runs two services on one database, passing at
// the same moments: every due reminder is queued exactly once.
func TestRemindersTwoDaemons(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		for i := 0; i < 20; i++ {
			e.activeUser("u" + string(rune('a'+i)) + "@example.com")
		}
		other := New(Config{Store: e.store, Issuer: e.ca, Policies: testPolicies(), Domains: []string{"example.com"},
			KMSAddress: "kms@example.com", Clock: e.clock})
		for step := 0; step < 60; step++ {
			e.clock.Set(day("2027-01-30").Add(time.Duration(step) * 24 * time.Hour))
			var wg sync.WaitGroup
			for _, s := range []*Service{e.svc, other} {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if _, err := s.SendReminders(e.ctx); err != nil {
						t.Error(err)
					}
				}()
			}
			wg.Wait()
		}
		// From 2027-01-30 to 03-30 each user is due on 01-31, 02-14,
		// 02-28, 03-14 and 03-28: 5 reminders each, none twice.
		if n := e.count(`SELECT COUNT(*) FROM outbox WHERE kind = 'reminder'`); n != 20*5 {
			t.Fatalf("%d reminders queued by two daemons, want %d", n, 20*5)
		}
		if dup := e.count(`SELECT COUNT(*) FROM (SELECT payload, created_at FROM outbox WHERE kind = 'reminder'
			GROUP BY payload, created_at HAVING COUNT(*) > 1) d`); dup != 0 {
			t.Fatalf("%d reminders recorded twice", dup)
		}
	})
}

// TestRemindersOnlyForActiveUsers: a disabled user's certificate is revoked
// and reminded no more; one mail per user even with two due certificates.
func TestRemindersOnlyForActiveUsers(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		e.activeUser("gone@example.com")
		two := e.activeUser("two@example.com")
		if _, err := e.svc.Disable(e.ctx, "gone@example.com", -1, "admin"); err != nil {
			t.Fatal(err)
		}
		// A second current certificate for "two" (as a separate signing
		// and encryption pair would be), due at the same time.
		second, err := e.ca.Issue(caRequest("two@example.com", newKey(t).Public(), t0, policy.Months(18).AddTo(t0)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.store.db.ExecContext(e.ctx, `INSERT INTO certificates (serial, user_id, state, not_before, not_after,
			issued_at, key_hash, key_since, der, next_reminder_at)
			SELECT $1, user_id, 'current', not_before, not_after, issued_at, key_hash, key_since, $2, next_reminder_at
			FROM certificates WHERE serial = $3`, SerialHex(second), second.Raw, two.Serial); err != nil {
			t.Fatal(err)
		}
		e.clock.Set(day("2027-02-01"))
		n, err := e.svc.SendReminders(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		mail := e.outbox()[MailReminder]
		if n != 1 || len(mail) != 1 || mail[0] != "two@example.com" {
			t.Fatalf("queued %d reminders %v, want one to two@example.com", n, mail)
		}
		if got := e.count(`SELECT COUNT(*) FROM certificates WHERE reminders_sent = 1`); got != 2 {
			t.Fatalf("%d certificates counted a reminder, want 2 (both certificates, one mail)", got)
		}
	})
}

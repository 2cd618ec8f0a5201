package main

import (
	"bytes"
	"encoding/json"
	"net/mail"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"
)

// compressedPolicy is an 18-month lifecycle in a minute: lifetime 60s,
// first reminder at 20s, then every 10s, every 5s in the last 5s.
const compressedPolicy = `policy:
  lifetime: 60s
  reminders: {first: 20s, every: 10s, final: 5s, final_every: 5s}
  enrollment: {code_ttl: 10m}
`

// TestReminderLifecycle runs the reminder schedule on the real binary.
func TestReminderLifecycle(t *testing.T) {
	t.Parallel()
	runReminderLifecycle(t, false)
}

// TestReminderLifecycleSurvivesKill is the same with the daemon killed
// (SIGKILL) and restarted in the middle: no reminder twice, none missed.
func TestReminderLifecycleSurvivesKill(t *testing.T) {
	t.Parallel()
	runReminderLifecycle(t, true)
}

func runReminderLifecycle(t *testing.T, kill bool) {
	needOpenSSL(t)
	if testing.Short() {
		t.Skip("a minute of compressed lifecycle; skipped with -short")
	}
	dir := t.TempDir()
	d := newDaemonConfig(t, dir, compressedPolicy)
	d.start()
	chain := filepath.Join(dir, "chain.pem")
	os.WriteFile(chain, fetch(t, "http://"+d.httpAddr+"/ca.pem"), 0o644)

	alice := newOpenSSLUser(t, dir, "alice@example.com", "ec")
	bob := newOpenSSLUser(t, dir, "bob@example.com", "ec")
	issued := map[string]time.Time{}
	for _, u := range []*opensslUser{alice, bob} {
		var en struct{ Code string }
		json.Unmarshal([]byte(d.cli("user", "enroll", u.email, "--json").want(t, 0).stdout), &en)
		d.sendMail(t, u.email, u.enrollmentMail(en.Code))
		u.takeCertificate(d.waitMail(t, u.email, "Your S/MIME certificate", 1, 30*time.Second)[0], chain)
		issued[u.email] = certNotBefore(t, d, u.email)
	}
	aliceFirst := serialOf(t, d, alice.email)

	// Alice renews by replying, signed, to her first reminder.
	reminder := d.waitMail(t, alice.email, "expires", 1, 40*time.Second)[0]
	if at := mailDate(t, reminder); at.Before(issued[alice.email].Add(19 * time.Second)) {
		t.Fatalf("first reminder at %v, issued %v: earlier than reminders.first (20s)", at, issued[alice.email])
	}
	reply := alice.signedReply("Re: "+reminder.subject, "Please renew.\n", messageID(t, reminder))
	d.sendMail(t, alice.email, reply)
	alice.takeCertificate(d.waitMail(t, alice.email, "renewed", 1, 30*time.Second)[0], chain)
	renewedAt := time.Now()
	d.waitLog("answers=reminder", 10*time.Second)

	if kill {
		// Kill it between bob's reminders, then start it again at once.
		d.waitMail(t, bob.email, "expires", 2, 40*time.Second)
		d.cmd.Process.Signal(syscall.SIGKILL)
		<-d.done
		d.start()
	}

	// Bob does nothing: reminders until expiry, then the lapse.
	d.waitMail(t, bob.email, "has expired", 1, 60*time.Second)
	d.waitMail(t, "postmaster@example.com", "lapsed: bob@example.com", 1, 10*time.Second)
	time.Sleep(3 * time.Second) // anything that would follow the lapse

	box := d.mailbox(t)
	ids := map[string]string{}
	var bobReminders []time.Time
	for _, m := range box {
		id := messageID(t, m)
		if other, dup := ids[id]; dup {
			t.Fatalf("Message-ID %s delivered twice: %s and %s", id, other, m.path)
		}
		ids[id] = m.path
		if strings.Contains(m.to, bob.email) && strings.Contains(m.subject, "expires") {
			bobReminders = append(bobReminders, mailDate(t, m))
		}
		// No reminder about alice's first certificate after her renewal.
		if strings.Contains(m.subject, "expires") && bytes.Contains(m.raw, []byte(aliceFirst)) &&
			mailDate(t, m).After(renewedAt.Add(time.Second)) {
			t.Errorf("reminder for the renewed certificate %s sent at %v, after the renewal", aliceFirst, mailDate(t, m))
		}
	}
	// Issued at T, bob is due at T+20, +30, +40, +50 and, in the final 5s,
	// +55; T+60 is the expiry. Each reminder is scheduled from the moment
	// the previous one was sent, and the daemon looks once a second (a
	// restart adds its start-up), so on a busy machine the last one may be
	// pushed past the expiry: 4 or 5, and the gaps tell a duplicate (under
	// 4s) or a missed reminder (over 13s) apart from drift.
	sort.Slice(bobReminders, func(i, j int) bool { return bobReminders[i].Before(bobReminders[j]) })
	if n := len(bobReminders); n < 4 || n > 5 {
		t.Fatalf("bob got %d reminders at %v, want 5 (4 if drift pushed the last past expiry)", n, bobReminders)
	}
	for i, at := range bobReminders {
		if at.Before(issued[bob.email].Add(19*time.Second)) || at.After(issued[bob.email].Add(61*time.Second)) {
			t.Errorf("bob's reminder at %v is outside [issued+20s, expiry] (issued %v)", at, issued[bob.email])
		}
		if i > 0 {
			if gap := at.Sub(bobReminders[i-1]); gap < 4*time.Second || gap > 13*time.Second {
				t.Errorf("bob's reminders %d and %d are %v apart: a duplicate or a missed one", i, i+1, gap)
			}
		}
	}
	for _, c := range []struct{ to, subject string }{{bob.email, "has expired"}, {"postmaster@example.com", "lapsed: bob@example.com"}} {
		if n := len(d.waitMail(t, c.to, c.subject, 1, time.Second)); n != 1 {
			t.Errorf("%d lapse notices to %s, want exactly 1", n, c.to)
		}
	}
	var users []map[string]string
	json.Unmarshal([]byte(d.cli("user", "list", "--json").want(t, 0).stdout), &users)
	for _, u := range users {
		if want := map[string]string{alice.email: "active", bob.email: "lapsed"}[u["email"]]; u["state"] != want {
			t.Errorf("%s is %s, want %s", u["email"], u["state"], want)
		}
	}
	// Re-enrollment by an administrator brings bob back.
	var en struct{ Code string }
	json.Unmarshal([]byte(d.cli("user", "enroll", bob.email, "--json").want(t, 0).stdout), &en)
	d.sendMail(t, bob.email, bob.enrollmentMail(en.Code))
	d.waitMail(t, bob.email, "Your S/MIME certificate", 2, 30*time.Second)
}

// signedReply is signedMail with In-Reply-To, as a mail client's reply.
func (u *opensslUser) signedReply(subject, body, inReplyTo string) []byte {
	return append([]byte("In-Reply-To: "+inReplyTo+"\r\n"), u.signedMail(subject, body)...)
}

var messageIDRe = regexp.MustCompile(`(?m)^Message-I[dD]:\s*(<[^>]+>)`)

func messageID(t *testing.T, m maildirMessage) string {
	t.Helper()
	mm := messageIDRe.FindSubmatch(m.raw)
	if mm == nil {
		t.Fatalf("%s has no Message-ID", m.path)
	}
	return string(mm[1])
}

func mailDate(t *testing.T, m maildirMessage) time.Time {
	t.Helper()
	msg, err := mail.ReadMessage(bytes.NewReader(m.raw))
	if err != nil {
		t.Fatal(err)
	}
	at, err := msg.Header.Date()
	if err != nil {
		t.Fatalf("%s: Date: %v", m.path, err)
	}
	return at
}

// certNotBefore returns the notBefore of the user's newest certificate.
func certNotBefore(t *testing.T, d *daemonProc, email string) time.Time {
	t.Helper()
	var certs []struct {
		NotBefore time.Time `json:"not_before"`
	}
	json.Unmarshal([]byte(d.cli("cert", "list", "--email", email, "--json").want(t, 0).stdout), &certs)
	if len(certs) == 0 {
		t.Fatalf("%s has no certificate", email)
	}
	return certs[len(certs)-1].NotBefore
}

func serialOf(t *testing.T, d *daemonProc, email string) string {
	t.Helper()
	var certs []struct{ Serial string }
	json.Unmarshal([]byte(d.cli("cert", "list", "--email", email, "--json").want(t, 0).stdout), &certs)
	if len(certs) == 0 {
		t.Fatalf("%s has no certificate", email)
	}
	return certs[len(certs)-1].Serial
}

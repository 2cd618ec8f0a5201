package main

import (
	"bytes"
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestDemo runs `kms demo` whole, at a month per second (about 20 s): the
// real daemon, SMTP and signed mail. Any step that does not happen makes
// the demo exit 1, and the narration must tell each step of the story.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("the demo runs for about 20 seconds")
	}
	var out, errb bytes.Buffer
	code := run(context.Background(), []string{"demo", "--speed", "1s"}, &out, &errb)
	if code != exitOK || errb.Len() > 0 {
		t.Fatalf("kms demo: exit %d, want 0\nstderr:\n%s\nstdout:\n%s", code, errb.String(), out.String())
	}
	text := out.String()
	// Each user's story in its order; the two stories interleave.
	inOrder(t, text, "alice",
		"$ kms user enroll alice@example.com",
		"kms mails alice@example.com an invitation",
		"Alice makes an ECDSA P-256 key and a certificate request",
		"kms mails alice@example.com a certificate",
		"Alice's mail client checks the certificate",
		"kms mails alice@example.com a reminder",
		"Alice replies to \"Your S/MIME certificate expires",
		"kms mails alice@example.com a renewed certificate",
		"Alice's mail client checks the certificate",
		"Summary after")
	inOrder(t, text, "bob",
		"$ kms user enroll bob@example.com",
		"kms mails bob@example.com an invitation",
		"kms mails bob@example.com a certificate",
		"Bob's mail client checks the certificate",
		"kms mails bob@example.com a reminder",
		"Bob is away and does not read his mail",
		"kms mails bob@example.com a lapse notice",
		"Bob is back. He replies to his last reminder",
		"kms mails bob@example.com a lapse notice (#2)",
		"No certificate for Bob",
		"$ kms user enroll bob@example.com",
		"kms mails bob@example.com an invitation (#2)",
		"kms mails bob@example.com a certificate (#2)",
		"Bob's mail client checks the certificate",
		"Summary after")
	for _, want := range []string{
		"kms mails postmaster@example.com a lapse notice",
		"Subject: S/MIME certificate lapsed: bob@example.com",
		"Subject: Your S/MIME certificate expires",
		"(verified)",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("the narration lacks %q", want)
		}
	}
	// The summary table, read by its columns.
	i := strings.Index(text, "user  ")
	if i < 0 {
		t.Fatalf("no summary table:\n%s", text)
	}
	table := text[i:]
	table = table[:strings.Index(table, "\n\n")]
	got := map[string]map[string]string{}
	for _, r := range rows(t, table+"\n") {
		got[r["user"]] = r
	}
	alice, bob := got["alice@example.com"], got["bob@example.com"]
	if alice == nil || bob == nil {
		t.Fatalf("summary table lacks a user:\n%s", table)
	}
	if !regexp.MustCompile(`^2 \(current, (superseded|expired)\)$`).MatchString(alice["certificates"]) || alice["reminders"] != "1" || alice["state"] != "active" {
		t.Errorf("alice's summary %v: want 2 certificates, 1 reminder, active", alice)
	}
	if n, _ := strconv.Atoi(bob["reminders"]); bob["certificates"] != "2 (current, expired)" || n < 2 || bob["state"] != "active" {
		t.Errorf("bob's summary %v: want 2 certificates (current, expired), at least 2 reminders, active", bob)
	}
	for _, l := range strings.Split(text, "\n") {
		if utf8.RuneCountInString(l) > 80 {
			t.Errorf("line wider than 80 columns: %q", l)
		}
	}
}

// inOrder checks that text holds the steps of one story in order.
func inOrder(t *testing.T, text, story string, steps ...string) {
	t.Helper()
	rest := text
	for _, s := range steps {
		i := strings.Index(rest, s)
		if i < 0 {
			t.Fatalf("%s's story: %q missing, or not after the step before it\n%s", story, s, text)
		}
		rest = rest[i+len(s):]
	}
}

func TestDemoUsage(t *testing.T) {
	for _, args := range [][]string{
		{"demo", "--speed", "0.1s"}, // too fast for the daemon's one-second tick
		{"demo", "--speed", "fast"},
		{"demo", "--speed", "NaN"},
		{"demo", "extra"},
		{"demo", "--no-such-flag"},
	} {
		r := runKMS(t, args...)
		if r.code != exitUsage || r.stderr == "" {
			t.Errorf("kms %s: exit %d, stderr %q; want 2 and a message", strings.Join(args, " "), r.code, r.stderr)
		}
	}
	r := runKMS(t, "demo", "-h").want(t, 0)
	if !strings.Contains(r.stderr, "-speed") || !strings.Contains(r.stderr, "-keep") {
		t.Errorf("kms demo -h does not describe --speed and --keep:\n%s", r.stderr)
	}
}

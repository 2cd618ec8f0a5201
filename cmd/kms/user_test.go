package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/kmsmail/kms/kms"
)

func TestUserEnroll(t *testing.T) {
	c := newCLI(t)
	r := c.kms(t, "user", "enroll", "Dana@example.com", "--name", "Dana Scully").want(t, 0)
	// The code stands alone on its line, indented, after a blank line.
	var code string
	for _, line := range strings.Split(r.stdout, "\n") {
		if strings.HasPrefix(line, "    ") {
			code = strings.TrimSpace(line)
		}
	}
	if code == "" {
		t.Fatalf("no code in %q", r.stdout)
	}
	expires := c.Clock.Now().Add(14 * 24 * time.Hour).UTC().Format("2006-01-02 15:04")
	for _, want := range []string{"dana@example.com", "Valid until " + expires + " UTC", "challenge", "to kms@example.com"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("enroll output lacks %q:\n%s", want, r.stdout)
		}
	}
	// The printed code is the one the daemon accepts.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if _, err := c.Service.EnrollByCode(context.Background(), "dana@example.com", code, key.Public(), kms.Request{Actor: "test"}); err != nil {
		t.Fatalf("the printed code does not enroll: %v", err)
	}
	u, _ := c.Service.GetUser(context.Background(), "dana@example.com")
	if u.Name != "Dana Scully" {
		t.Errorf("name = %q", u.Name)
	}

	// --json: email, code and expires.
	r = c.kms(t, "user", "enroll", "--json", "eve@example.com").want(t, 0)
	var out struct {
		Email   string `json:"email"`
		Code    string `json:"code"`
		Expires string `json:"expires"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatal(err)
	}
	if _, err := time.Parse(time.RFC3339, out.Expires); err != nil || out.Email != "eve@example.com" || out.Code == "" {
		t.Errorf("enroll --json = %s", r.stdout)
	}

	// Refusals: status 1 and the daemon's message, and nothing changes.
	before, _ := c.Service.ListUsers(context.Background(), "")
	for args, says := range map[string]string{
		"dana@example.com":      "renews by mail",
		"not-an-address":        "not a mail address",
		"mallory@example.org":   "example.org is not in the configured domains",
		"Eve <eve@example.com>": "not a mail address",
	} {
		r := c.kms(t, "user", "enroll", args).want(t, exitFail)
		if !strings.Contains(r.stderr, says) || r.stdout != "" {
			t.Errorf("enroll %s: stderr %q, stdout %q; want %q", args, r.stderr, r.stdout, says)
		}
	}
	after, _ := c.Service.ListUsers(context.Background(), "")
	if len(after) != len(before) {
		t.Errorf("refused enrollments changed the users: %v -> %v", before, after)
	}
}

func TestUserList(t *testing.T) {
	c := newCLI(t)
	if r := c.kms(t, "user", "list").want(t, 0); strings.TrimSpace(r.stdout) != "no users" {
		t.Errorf("empty list = %q", r.stdout)
	}
	c.Activate(t, "alice@example.com")
	c.kms(t, "user", "enroll", "bob@example.com", "--name", "Bob Marley").want(t, 0)

	r := c.kms(t, "user", "list").want(t, 0)
	tab := rows(t, r.stdout)
	today := c.Clock.Now().Format("2006-01-02")
	if len(tab) != 2 || tab[0]["EMAIL"] != "alice@example.com" || tab[0]["STATE"] != "active" || tab[0]["NAME"] != "-" ||
		tab[1]["EMAIL"] != "bob@example.com" || tab[1]["STATE"] != "invited" || tab[1]["NAME"] != "Bob Marley" || tab[1]["CREATED"] != today {
		t.Errorf("user list:\n%s\nparsed %v", r.stdout, tab)
	}

	r = c.kms(t, "user", "list", "--state", "invited", "--json").want(t, 0)
	var users []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &users); err != nil {
		t.Fatal(err)
	}
	if len(users) != 1 || users[0]["email"] != "bob@example.com" || users[0]["state"] != "invited" {
		t.Errorf("user list --state invited --json = %s", r.stdout)
	}
	if r := c.kms(t, "user", "list", "--state", "asleep").want(t, exitFail); !strings.Contains(r.stderr, "invited, active, lapsed or disabled") {
		t.Errorf("bad state: %q", r.stderr)
	}
}

func TestUserShow(t *testing.T) {
	c := newCLI(t)
	cert, _ := c.Activate(t, "alice@example.com")
	r := c.kms(t, "user", "show", "alice@example.com").want(t, 0)
	for _, want := range []string{"State:", "active", cert.Serial, cert.NotAfter.Format("2006-01-02")} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("user show lacks %q:\n%s", want, r.stdout)
		}
	}
	r = c.kms(t, "user", "show", "--json", "alice@example.com").want(t, 0)
	var d kms.UserDetail
	if err := json.Unmarshal([]byte(r.stdout), &d); err != nil {
		t.Fatal(err)
	}
	if d.Email != "alice@example.com" || len(d.Certificates) != 1 || d.Certificates[0].Serial != cert.Serial {
		t.Errorf("user show --json = %s", r.stdout)
	}
	c.kms(t, "user", "enroll", "bob@example.com").want(t, 0)
	if r := c.kms(t, "user", "show", "bob@example.com").want(t, 0); !strings.Contains(r.stdout, "Code expires:") || !strings.Contains(r.stdout, "no certificates") {
		t.Errorf("invited user show:\n%s", r.stdout)
	}
	if r := c.kms(t, "user", "show", "nobody@example.com").want(t, exitFail); !strings.Contains(r.stderr, "not found") {
		t.Errorf("unknown user: %q", r.stderr)
	}
}

func TestUserDisable(t *testing.T) {
	c := newCLI(t)
	ctx := context.Background()
	cert, _ := c.Activate(t, "alice@example.com")
	c.Activate(t, "bob@example.com")

	if r := c.kms(t, "user", "disable", "alice@example.com", "--reason", "nonsense").want(t, exitFail); !strings.Contains(r.stderr, "keyCompromise") {
		t.Errorf("bad reason: %q", r.stderr)
	}
	if u, _ := c.Service.GetUser(ctx, "alice@example.com"); u.State != kms.UserActive {
		t.Fatalf("a refused disable changed the user: %s", u.State)
	}
	r := c.kms(t, "user", "disable", "alice@example.com").want(t, 0)
	if !strings.Contains(r.stdout, "alice@example.com disabled") || !strings.Contains(r.stdout, "kms user enroll alice@example.com") {
		t.Errorf("disable output: %q", r.stdout)
	}
	got, _ := c.Service.GetCert(ctx, cert.Serial)
	if got.State != kms.CertRevoked || got.RevocationReason != "affiliationChanged" {
		t.Errorf("certificate after disable: %s %s", got.State, got.RevocationReason)
	}
	if r := c.kms(t, "user", "disable", "alice@example.com").want(t, exitFail); !strings.Contains(r.stderr, "already disabled") {
		t.Errorf("disable twice: %q", r.stderr)
	}
	r = c.kms(t, "user", "disable", "--reason", "keyCompromise", "--json", "bob@example.com").want(t, 0)
	var u kms.User
	if err := json.Unmarshal([]byte(r.stdout), &u); err != nil || u.State != kms.UserDisabled {
		t.Errorf("disable --json = %s (%v)", r.stdout, err)
	}
	c.kms(t, "user", "disable", "nobody@example.com").want(t, exitFail)
}

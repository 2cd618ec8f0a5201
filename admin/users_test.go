package admin_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kmsmail/kms/admin"
	"github.com/kmsmail/kms/admin/admintest"
	"github.com/kmsmail/kms/kms"
)

func TestEnroll(t *testing.T) {
	e := admintest.New(t)
	a := api(t, e, "POST", "/api/v1/users", jsonBody(t, admin.EnrollRequest{Email: "Bob@Example.com", Name: "Bob"}))
	if a.status != http.StatusCreated {
		t.Fatalf("enroll = %d %s", a.status, a.body)
	}
	var en kms.Enrollment
	decode(t, a, &en)
	if en.Email != "bob@example.com" || len(en.Code) < 16 {
		t.Errorf("enrollment = %+v, want bob@example.com and a code", en)
	}
	if want := e.Clock.Now().Add(14 * 24 * time.Hour); !en.Expires.Equal(want) {
		t.Errorf("code expires %s, want %s (the 14-day default)", en.Expires, want)
	}
	u, err := e.Client.GetUser(context.Background(), "bob@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if u.State != kms.UserInvited || u.Name != "Bob" || u.CodeExpires == nil || !u.CodeExpires.Equal(en.Expires) {
		t.Errorf("user after enroll = %+v", u)
	}
	// The audit log names the administrator's address.
	recs, err := e.Client.Audit(context.Background(), "bob@example.com", 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].Action != "enroll" || !strings.HasPrefix(recs[0].Actor, "admin:127.0.0.1:") {
		t.Errorf("audit after enroll = %+v", recs)
	}
}

func TestEnrollRefused(t *testing.T) {
	e := admintest.New(t)
	e.Activate(t, "alice@example.com")
	for _, tc := range []struct {
		name   string
		body   string
		status int
		code   string
		says   string
	}{
		{"invalid address", `{"email":"not an address"}`, 400, "invalid_address", "not a mail address"},
		{"display name", `{"email":"Bob <bob@example.com>"}`, 400, "invalid_address", "not a mail address"},
		{"domain not served", `{"email":"bob@example.org"}`, 400, "domain", "example.org"},
		{"no email", `{"name":"Bob"}`, 400, "invalid_address", "email"},
		{"active user", `{"email":"alice@example.com"}`, 409, "already_active", "revoke"},
		{"unknown field", `{"email":"bob@example.com","mail":"x"}`, 400, "bad_request", "mail"},
		{"not JSON", `email=bob@example.com`, 400, "bad_request", "JSON"},
		{"empty body", ``, 400, "bad_request", "empty"},
		{"two objects", `{"email":"bob@example.com"}{}`, 400, "bad_request", "after"},
		{"oversized", `{"email":"bob@example.com","name":"` + strings.Repeat("x", 1<<20) + `"}`, 413, "too_large", "1 MiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			unchanged(t, e, func() {
				eb := wantRefusal(t, api(t, e, "POST", "/api/v1/users", []byte(tc.body)), tc.status, tc.code)
				if !strings.Contains(eb.Error, tc.says) {
					t.Errorf("message %q does not mention %q", eb.Error, tc.says)
				}
			})
		})
	}
}

func TestReEnroll(t *testing.T) {
	e := admintest.New(t)
	ctx := context.Background()
	cert, _ := e.Activate(t, "alice@example.com")
	if _, err := e.Client.Revoke(ctx, cert.Serial, "keyCompromise"); err != nil {
		t.Fatal(err)
	}
	// Revoking the current certificate lapses the user; enroll brings them back.
	en, err := e.Client.Enroll(ctx, "alice@example.com", "")
	if err != nil {
		t.Fatalf("re-enroll a lapsed user: %v", err)
	}
	if en.Code == "" {
		t.Fatal("no code")
	}
	if u, _ := e.Client.GetUser(ctx, "alice@example.com"); u.State != kms.UserInvited {
		t.Errorf("state after re-enroll = %s", u.State)
	}
}

func TestListUsers(t *testing.T) {
	e := admintest.New(t)
	ctx := context.Background()
	e.Activate(t, "alice@example.com")
	if _, err := e.Client.Enroll(ctx, "bob@example.com", "Bob"); err != nil {
		t.Fatal(err)
	}
	all, err := e.Client.ListUsers(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 2 || all[0].Email != "alice@example.com" || all[1].Email != "bob@example.com" {
		t.Fatalf("users = %+v", all)
	}
	active, err := e.Client.ListUsers(ctx, kms.UserActive)
	if err != nil {
		t.Fatal(err)
	}
	if len(active) != 1 || active[0].Email != "alice@example.com" {
		t.Errorf("active users = %+v", active)
	}
	// An empty listing is an empty array, not null, for scripts.
	a := api(t, e, "GET", "/api/v1/users?state=disabled", nil)
	if a.status != 200 || strings.TrimSpace(string(a.body)) != "[]" {
		t.Errorf("no disabled users = %d %q, want []", a.status, a.body)
	}
	eb := wantRefusal(t, api(t, e, "GET", "/api/v1/users?state=gone", nil), 400, "bad_request")
	if !strings.Contains(eb.Error, "invited, active, lapsed or disabled") {
		t.Errorf("message %q does not list the states", eb.Error)
	}
}

func TestGetUser(t *testing.T) {
	e := admintest.New(t)
	cert, _ := e.Activate(t, "alice@example.com")
	u, err := e.Client.GetUser(context.Background(), "ALICE@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if u.Email != "alice@example.com" || u.State != kms.UserActive || len(u.Certificates) != 1 || u.Certificates[0].Serial != cert.Serial {
		t.Errorf("user = %+v", u)
	}
	wantRefusal(t, api(t, e, "GET", "/api/v1/users/nobody@example.com", nil), 404, "not_found")
	wantRefusal(t, api(t, e, "GET", "/api/v1/users/nonsense", nil), 400, "invalid_address")
}

func TestDisable(t *testing.T) {
	e := admintest.New(t)
	ctx := context.Background()
	cert, _ := e.Activate(t, "alice@example.com")
	e.Activate(t, "carol@example.com")

	unchanged(t, e, func() {
		eb := wantRefusal(t, api(t, e, "POST", "/api/v1/users/alice@example.com/disable", []byte(`{"reason":"bored"}`)), 400, "bad_reason")
		if !strings.Contains(eb.Error, "keyCompromise") {
			t.Errorf("message %q does not list the reasons", eb.Error)
		}
		wantRefusal(t, api(t, e, "POST", "/api/v1/users/alice@example.com/disable", []byte(`{"reason":"certificateHold"}`)), 400, "bad_reason")
		wantRefusal(t, api(t, e, "POST", "/api/v1/users/nobody@example.com/disable", nil), 404, "not_found")
		wantRefusal(t, api(t, e, "POST", "/api/v1/users/alice@example.com/disable", []byte(`[1]`)), 400, "bad_request")
	})

	// No body: the default reason, affiliationChanged.
	a := api(t, e, "POST", "/api/v1/users/alice@example.com/disable", nil)
	if a.status != 200 {
		t.Fatalf("disable = %d %s", a.status, a.body)
	}
	var u kms.User
	decode(t, a, &u)
	if u.State != kms.UserDisabled {
		t.Errorf("state = %s", u.State)
	}
	c, err := e.Client.GetCert(ctx, cert.Serial)
	if err != nil {
		t.Fatal(err)
	}
	if c.State != kms.CertRevoked || c.RevocationReason != "affiliationChanged" {
		t.Errorf("certificate after disable: %s %q", c.State, c.RevocationReason)
	}
	unchanged(t, e, func() {
		wantRefusal(t, api(t, e, "POST", "/api/v1/users/alice@example.com/disable", nil), 409, "user_state")
	})

	// An explicit reason through the client.
	if _, err := e.Client.Disable(ctx, "carol@example.com", "privilege-withdrawn"); err != nil {
		t.Fatal(err)
	}
	certs, err := e.Client.ListCerts(ctx, admin.CertQuery{Email: "carol@example.com"})
	if err != nil {
		t.Fatal(err)
	}
	if len(certs) != 1 || certs[0].RevocationReason != "privilegeWithdrawn" {
		t.Errorf("carol's certificates = %+v", certs)
	}
	_, err = e.Client.Disable(ctx, "carol@example.com", "")
	var ae *admin.Error
	if !errors.As(err, &ae) || !ae.Refused() || !errors.Is(err, kms.ErrUserState) {
		t.Errorf("disabling twice: %v, want a refusal matching kms.ErrUserState", err)
	}
}

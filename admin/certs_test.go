package admin_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/kmsmail/kms/admin"
	"github.com/kmsmail/kms/admin/admintest"
	"github.com/kmsmail/kms/kms"
)

func TestListCerts(t *testing.T) {
	e := admintest.New(t)
	ctx := context.Background()
	alice, _ := e.Activate(t, "alice@example.com")
	bob, _ := e.Activate(t, "bob@example.com")
	if _, err := e.Client.Revoke(ctx, bob.Serial, ""); err != nil {
		t.Fatal(err)
	}
	serials := func(q string) []string {
		t.Helper()
		a := api(t, e, "GET", "/api/v1/certs"+q, nil)
		if a.status != 200 {
			t.Fatalf("certs%s = %d %s", q, a.status, a.body)
		}
		var cs []kms.Certificate
		decode(t, a, &cs)
		out := []string{}
		for _, c := range cs {
			out = append(out, c.Serial)
		}
		return out
	}
	for _, tc := range []struct {
		query string
		want  []string
	}{
		{"?email=alice@example.com", []string{alice.Serial}},
		{"?state=revoked", []string{bob.Serial}},
		{"?state=current&email=bob@example.com", []string{}},
		// Certificates live 18 months: none expires within 30 days, Alice's
		// within two years; Bob's is revoked and no longer "expiring".
		{"?expiring=30d", []string{}},
		{"?expiring=2y", []string{alice.Serial}},
		{"?expiring=19mo", []string{alice.Serial}},
		{"?expiring=17mo", []string{}},
	} {
		if got := serials(tc.query); strings.Join(got, ",") != strings.Join(tc.want, ",") {
			t.Errorf("certs%s = %v, want %v", tc.query, got, tc.want)
		}
	}
	if all := serials(""); len(all) != 2 {
		t.Errorf("all certificates = %v", all)
	}
	// The clock moves: 17 months on, Alice's certificate expires within 30 days.
	e.Clock.Set(alice.NotAfter.Add(-20 * 24 * time.Hour))
	if got := serials("?expiring=30d"); len(got) != 1 || got[0] != alice.Serial {
		t.Errorf("20 days before expiry, certs?expiring=30d = %v", got)
	}

	for q, code := range map[string]string{
		"?expiring=30":     "bad_duration",
		"?expiring=0d":     "bad_duration",
		"?expiring=-5d":    "bad_duration",
		"?state=valid":     "bad_request",
		"?email=not-email": "invalid_address",
	} {
		wantRefusal(t, api(t, e, "GET", "/api/v1/certs"+q, nil), 400, code)
	}
}

func TestGetCert(t *testing.T) {
	e := admintest.New(t)
	cert, _ := e.Activate(t, "alice@example.com")
	// Administrators paste serials in every spelling.
	pasted := strings.ToUpper(cert.Serial)
	var colons []string
	for i := 0; i < len(pasted); i += 2 {
		colons = append(colons, pasted[i:min(i+2, len(pasted))])
	}
	for _, s := range []string{cert.Serial, pasted, strings.Join(colons, ":"), "0x" + cert.Serial} {
		c, err := e.Client.GetCert(context.Background(), s)
		if err != nil {
			t.Fatalf("show %q: %v", s, err)
		}
		if c.Serial != cert.Serial || c.Email != "alice@example.com" || c.State != kms.CertCurrent {
			t.Errorf("show %q = %+v", s, c.Certificate)
		}
		b, _ := pem.Decode([]byte(c.PEM))
		if b == nil || b.Type != "CERTIFICATE" || !bytes.Equal(b.Bytes, cert.DER) || !bytes.Equal(c.DER, cert.DER) {
			t.Fatalf("show %q: PEM does not hold the certificate", s)
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			t.Fatal(err)
		}
	}
	wantRefusal(t, api(t, e, "GET", "/api/v1/certs/abcdef", nil), 404, "not_found")
	eb := wantRefusal(t, api(t, e, "GET", "/api/v1/certs/xyz", nil), 404, "not_found")
	if !strings.Contains(eb.Error, "hexadecimal") {
		t.Errorf("message %q does not say what a serial looks like", eb.Error)
	}
}

func TestRevoke(t *testing.T) {
	e := admintest.New(t)
	ctx := context.Background()
	cert, _ := e.Activate(t, "alice@example.com")
	path := "/api/v1/certs/" + cert.Serial + "/revoke"

	unchanged(t, e, func() {
		eb := wantRefusal(t, api(t, e, "POST", path, []byte(`{"reason":"lost it"}`)), 400, "bad_reason")
		if !strings.Contains(eb.Error, "keyCompromise") {
			t.Errorf("message %q does not list the reasons", eb.Error)
		}
		wantRefusal(t, api(t, e, "POST", path, []byte(`{"reason":1}`)), 400, "bad_request")
		wantRefusal(t, api(t, e, "POST", "/api/v1/certs/123456789abcdef/revoke", nil), 404, "not_found")
		wantRefusal(t, api(t, e, "POST", path, []byte(`{"reason":"x`+strings.Repeat(" ", 1<<20)+`"}`)), 413, "too_large")
	})

	a := api(t, e, "POST", path, []byte(`{"reason":"key_compromise"}`))
	if a.status != 200 {
		t.Fatalf("revoke = %d %s", a.status, a.body)
	}
	var c kms.Certificate
	decode(t, a, &c)
	if c.State != kms.CertRevoked || c.RevocationReason != "keyCompromise" || c.RevokedAt == nil {
		t.Errorf("revoked certificate = %+v", c)
	}
	if u, _ := e.Client.GetUser(ctx, "alice@example.com"); u.State != kms.UserLapsed {
		t.Errorf("user after revoking the current certificate: %s, want lapsed", u.State)
	}
	unchanged(t, e, func() {
		eb := wantRefusal(t, api(t, e, "POST", path, nil), 409, "cert_state")
		if !strings.Contains(eb.Error, "already revoked") {
			t.Errorf("message %q", eb.Error)
		}
	})
	_, err := e.Client.Revoke(ctx, "00ff00ff00", "")
	var ae *admin.Error
	if !errors.As(err, &ae) || !ae.Refused() || ae.Status != 404 || !errors.Is(err, kms.ErrNotFound) {
		t.Errorf("revoke unknown serial through the client: %v", err)
	}
}

func TestAudit(t *testing.T) {
	e := admintest.New(t)
	ctx := context.Background()
	cert, _ := e.Activate(t, "alice@example.com")
	if _, err := e.Client.Revoke(ctx, cert.Serial, "superseded"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Client.Enroll(ctx, "bob@example.com", ""); err != nil {
		t.Fatal(err)
	}
	recs, err := e.Client.Audit(ctx, "alice@example.com", 0)
	if err != nil {
		t.Fatal(err)
	}
	var actions []string
	for _, r := range recs {
		actions = append(actions, r.Action)
		if r.Email != "alice@example.com" {
			t.Errorf("audit for alice holds %+v", r)
		}
	}
	// Newest first: the revocation by the administrator, then the
	// enrollment by mail and the enrollment by the test.
	if len(recs) < 3 || recs[0].Action != "revoke" || !strings.HasPrefix(recs[0].Actor, "admin:127.0.0.1:") || recs[0].Detail != "superseded" {
		t.Errorf("audit for alice = %v (%+v)", actions, recs)
	}
	one, err := e.Client.Audit(ctx, "", 1)
	if err != nil {
		t.Fatal(err)
	}
	if len(one) != 1 || one[0].Email != "bob@example.com" {
		t.Errorf("audit limit 1 = %+v", one)
	}
	a := api(t, e, "GET", "/api/v1/audit?email=nobody@example.com", nil)
	if a.status != 200 || strings.TrimSpace(string(a.body)) != "[]" {
		t.Errorf("audit for nobody = %d %s", a.status, a.body)
	}
	for _, q := range []string{"?limit=0", "?limit=x", "?limit=10001"} {
		wantRefusal(t, api(t, e, "GET", "/api/v1/audit"+q, nil), 400, "bad_request")
	}
	wantRefusal(t, api(t, e, "GET", "/api/v1/audit?email=@@", nil), 400, "invalid_address")
}

package admin_test

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/kmsmail/kms/admin"
	"github.com/kmsmail/kms/admin/admintest"
	"github.com/kmsmail/kms/kms"
)

func pemOf(ders ...[]byte) []byte {
	var b bytes.Buffer
	for _, d := range ders {
		pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: d})
	}
	return b.Bytes()
}

func TestImportBundle(t *testing.T) {
	e := admintest.New(t)
	now := e.Clock.Now()
	dave, oldCA := admintest.ForeignCert(t, "dave@example.com", now.AddDate(0, -6, 0), now.AddDate(0, 6, 0))
	erin, _ := admintest.ForeignCert(t, "erin@example.com", now.AddDate(0, -6, 0), now.AddDate(0, 6, 0))

	// A bundle as another CA exports it: the users' certificates and the chain.
	a := api(t, e, "POST", "/api/v1/certs/import", pemOf(dave, oldCA, erin))
	if a.status != http.StatusCreated {
		t.Fatalf("import = %d %s", a.status, a.body)
	}
	var resp admin.ImportResponse
	decode(t, a, &resp)
	want := []string{"dave@example.com imported", " skipped", "erin@example.com imported"}
	if len(resp.Results) != 3 || resp.Error != "" {
		t.Fatalf("results = %+v", resp)
	}
	for i, r := range resp.Results {
		if got := r.Email + " " + r.Result; got != want[i] || r.Index != i {
			t.Errorf("result %d = %q (index %d), want %q", i, got, r.Index, want[i])
		}
	}
	if c := resp.Results[0].Certificate; c == nil || !c.Imported || c.State != kms.CertCurrent {
		t.Errorf("imported certificate = %+v", c)
	}
	u, err := e.Client.GetUser(context.Background(), "dave@example.com")
	if err != nil || u.State != kms.UserActive {
		t.Fatalf("dave after import: %+v %v", u, err)
	}

	// One DER certificate as the body; its user now holds a certificate.
	again, _ := admintest.ForeignCert(t, "dave@example.com", now.AddDate(0, -1, 0), now.AddDate(1, 0, 0))
	unchanged(t, e, func() {
		a := api(t, e, "POST", "/api/v1/certs/import", again)
		eb := wantRefusal(t, a, http.StatusConflict, "already_active")
		if !strings.Contains(eb.Error, "0 of 1") {
			t.Errorf("message %q does not count", eb.Error)
		}
	})
	frank, _ := admintest.ForeignCert(t, "frank@example.com", now.AddDate(0, -1, 0), now.AddDate(1, 0, 0))
	if _, err := e.Client.Import(context.Background(), frank); err != nil {
		t.Fatalf("DER import: %v", err)
	}
}

func TestImportPartlyRefused(t *testing.T) {
	e := admintest.New(t)
	now := e.Clock.Now()
	e.Activate(t, "alice@example.com")
	good, _ := admintest.ForeignCert(t, "gina@example.com", now.AddDate(0, -1, 0), now.AddDate(1, 0, 0))
	active, _ := admintest.ForeignCert(t, "alice@example.com", now.AddDate(0, -1, 0), now.AddDate(1, 0, 0))
	expired, _ := admintest.ForeignCert(t, "hank@example.com", now.AddDate(-2, 0, 0), now.AddDate(0, -1, 0))
	foreign, _ := admintest.ForeignCert(t, "ivan@example.org", now.AddDate(0, -1, 0), now.AddDate(1, 0, 0))

	results, err := e.Client.Import(context.Background(), pemOf(active, good, expired, foreign))
	var ae *admin.Error
	if !errors.As(err, &ae) || !ae.Refused() || ae.Status != http.StatusConflict || !errors.Is(err, kms.ErrAlreadyActive) {
		t.Fatalf("partly refused import: %v, want a 409 naming the first refusal", err)
	}
	if !strings.HasPrefix(ae.Message, "1 of 4 certificates imported") {
		t.Errorf("message = %q", ae.Message)
	}
	var got []string
	for _, r := range results {
		got = append(got, fmt.Sprintf("%s:%s:%s", r.Email, r.Result, r.Code))
	}
	want := "alice@example.com:refused:already_active gina@example.com:imported: hank@example.com:refused:cert_state ivan@example.org:refused:domain"
	if strings.Join(got, " ") != want {
		t.Errorf("results\n got %s\nwant %s", strings.Join(got, " "), want)
	}
	users, _ := e.Client.ListUsers(context.Background(), "")
	if len(users) != 2 {
		t.Errorf("users after import = %+v, want alice and gina", users)
	}
}

func TestImportMalformed(t *testing.T) {
	e := admintest.New(t)
	now := e.Clock.Now()
	good, oldCA := admintest.ForeignCert(t, "gina@example.com", now.AddDate(0, -1, 0), now.AddDate(1, 0, 0))
	noName, _ := admintest.ForeignCert(t, "", now.AddDate(0, -1, 0), now.AddDate(1, 0, 0))
	damaged := append(pemOf(good), bytes.Replace(pemOf(good), []byte("M"), []byte("*"), 3)...)
	key := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{0x30, 0}})

	for _, tc := range []struct {
		name   string
		body   []byte
		status int
		code   string
		says   string
	}{
		{"empty", nil, 400, "bad_certificate", "empty"},
		{"garbage DER", []byte{0x30, 0x82, 0x01}, 400, "bad_certificate", "neither PEM nor"},
		{"text", []byte("hello, this is not a certificate"), 400, "bad_certificate", "neither PEM nor"},
		{"damaged PEM block", damaged, 400, "bad_certificate", "1 of 2 PEM blocks"},
		{"private key", append(pemOf(good), key...), 400, "bad_certificate", "PRIVATE KEY"},
		{"bad DER in PEM", pemOf([]byte("not DER")), 400, "bad_certificate", "block 1"},
		{"only CA certificates", pemOf(oldCA), 400, "bad_certificate", "only CA"},
		{"no mail address", pemOf(noName), 400, "bad_certificate", "0 mail addresses"},
		{"oversized", bytes.Repeat(pemOf(good), (1<<20)/len(pemOf(good))+1), 413, "too_large", "1 MiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			unchanged(t, e, func() {
				eb := wantRefusal(t, api(t, e, "POST", "/api/v1/certs/import", tc.body), tc.status, tc.code)
				if !strings.Contains(eb.Error, tc.says) {
					t.Errorf("message %q does not mention %q", eb.Error, tc.says)
				}
			})
		})
	}
	// The client reports a refusal before any certificate as an error
	// without results.
	res, err := e.Client.Import(context.Background(), []byte("junk"))
	var ae *admin.Error
	if res != nil || !errors.As(err, &ae) || ae.Code != "bad_certificate" {
		t.Errorf("client import of junk: %v %v", res, err)
	}
}

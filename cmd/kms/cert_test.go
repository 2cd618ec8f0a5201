package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kmsmail/kms/admin"
	"github.com/kmsmail/kms/admin/admintest"
	"github.com/kmsmail/kms/kms"
)

func TestCertList(t *testing.T) {
	c := newCLI(t)
	alice, _ := c.Activate(t, "alice@example.com")
	bob, _ := c.Activate(t, "bob@example.com")
	if r := c.kms(t, "cert", "list", "--expiring", "30d").want(t, 0); strings.TrimSpace(r.stdout) != "no certificates" {
		t.Errorf("nothing expiring within 30 days: %q", r.stdout)
	}
	c.kms(t, "cert", "revoke", bob.Serial, "--reason", "superseded").want(t, 0)

	r := c.kms(t, "cert", "list").want(t, 0)
	tab := rows(t, r.stdout)
	if len(tab) != 2 {
		t.Fatalf("cert list:\n%s", r.stdout)
	}
	states := map[string]string{}
	for _, row := range tab {
		states[row["SERIAL"]] = row["EMAIL"] + " " + row["STATE"] + " " + row["NOT BEFORE"] + " " + row["NOT AFTER"]
		if _, ok := row["DAYS LEFT"]; ok {
			t.Error("DAYS LEFT without --expiring")
		}
	}
	if want := "alice@example.com current " + alice.NotBefore.Format("2006-01-02") + " " + alice.NotAfter.Format("2006-01-02"); states[alice.Serial] != want {
		t.Errorf("alice's row = %q, want %q", states[alice.Serial], want)
	}
	if !strings.HasPrefix(states[bob.Serial], "bob@example.com revoked (superseded)") {
		t.Errorf("bob's row = %q", states[bob.Serial])
	}

	// --expiring shows the days left.
	r = c.kms(t, "cert", "list", "--expiring", "2y").want(t, 0)
	tab = rows(t, r.stdout)
	if len(tab) != 1 || tab[0]["SERIAL"] != alice.Serial {
		t.Fatalf("cert list --expiring 2y:\n%s", r.stdout)
	}
	left, err := strconv.Atoi(tab[0]["DAYS LEFT"])
	want := int(time.Until(alice.NotAfter).Hours() / 24)
	if err != nil || left < want-1 || left > want+1 {
		t.Errorf("DAYS LEFT = %q, want about %d", tab[0]["DAYS LEFT"], want)
	}

	// --json: serial, email, state, not_before, not_after in RFC 3339.
	r = c.kms(t, "cert", "list", "--json", "--email", "alice@example.com").want(t, 0)
	var certs []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &certs); err != nil {
		t.Fatal(err)
	}
	if len(certs) != 1 || certs[0]["serial"] != alice.Serial || certs[0]["email"] != "alice@example.com" || certs[0]["state"] != "current" {
		t.Fatalf("cert list --json = %s", r.stdout)
	}
	for _, k := range []string{"not_before", "not_after"} {
		s, _ := certs[0][k].(string)
		if _, err := time.Parse(time.RFC3339, s); err != nil {
			t.Errorf("%s = %v, not RFC 3339", k, certs[0][k])
		}
	}
	r = c.kms(t, "cert", "list", "--state", "revoked", "--json").want(t, 0)
	if err := json.Unmarshal([]byte(r.stdout), &certs); err != nil || len(certs) != 1 || certs[0]["serial"] != bob.Serial {
		t.Errorf("cert list --state revoked --json = %s", r.stdout)
	}

	if r := c.kms(t, "cert", "list", "--expiring", "30").want(t, exitFail); !strings.Contains(r.stderr, "unit") {
		t.Errorf("bad duration: %q", r.stderr)
	}
	c.kms(t, "cert", "list", "--state", "fine").want(t, exitFail)
}

func TestCertShow(t *testing.T) {
	c := newCLI(t)
	cert, _ := c.Activate(t, "alice@example.com")
	r := c.kms(t, "cert", "show", strings.ToUpper(cert.Serial)).want(t, 0)
	for _, want := range []string{"Serial:", cert.Serial, "alice@example.com", "current", cert.NotAfter.Format(time.RFC3339)} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("cert show lacks %q:\n%s", want, r.stdout)
		}
	}
	r = c.kms(t, "cert", "show", cert.Serial, "--pem").want(t, 0)
	b, rest := pem.Decode([]byte(r.stdout))
	if b == nil || !bytes.Equal(b.Bytes, cert.DER) || len(bytes.TrimSpace(rest)) != 0 {
		t.Errorf("cert show --pem does not print just the certificate:\n%s", r.stdout)
	}
	r = c.kms(t, "cert", "show", "--json", cert.Serial).want(t, 0)
	var d admin.CertDetail
	if err := json.Unmarshal([]byte(r.stdout), &d); err != nil || d.Serial != cert.Serial || !strings.Contains(d.PEM, "BEGIN CERTIFICATE") {
		t.Errorf("cert show --json = %s (%v)", r.stdout, err)
	}
	if r := c.kms(t, "cert", "show", "abc123").want(t, exitFail); !strings.Contains(r.stderr, "not found") {
		t.Errorf("unknown serial: %q", r.stderr)
	}
}

func TestCertRevoke(t *testing.T) {
	c := newCLI(t)
	ctx := context.Background()
	cert, _ := c.Activate(t, "alice@example.com")
	if r := c.kms(t, "cert", "revoke", cert.Serial, "--reason", "stolen").want(t, exitFail); !strings.Contains(r.stderr, "keyCompromise") {
		t.Errorf("bad reason: %q", r.stderr)
	}
	if got, _ := c.Service.GetCert(ctx, cert.Serial); got.State != kms.CertCurrent {
		t.Fatalf("a refused revocation changed the certificate: %s", got.State)
	}
	r := c.kms(t, "cert", "revoke", cert.Serial, "--reason", "keyCompromise").want(t, 0)
	if !strings.Contains(r.stdout, cert.Serial) || !strings.Contains(r.stdout, "keyCompromise") {
		t.Errorf("revoke output: %q", r.stdout)
	}
	if got, _ := c.Service.GetCert(ctx, cert.Serial); got.State != kms.CertRevoked {
		t.Errorf("state after revoke: %s", got.State)
	}
	if r := c.kms(t, "cert", "revoke", cert.Serial).want(t, exitFail); !strings.Contains(r.stderr, "already revoked") {
		t.Errorf("revoke twice: %q", r.stderr)
	}
	c.kms(t, "cert", "revoke", "0123456789abcdef").want(t, exitFail)

	other, _ := c.Activate(t, "bob@example.com")
	r = c.kms(t, "cert", "revoke", "--json", other.Serial).want(t, 0)
	var got kms.Certificate
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || got.State != kms.CertRevoked || got.RevocationReason != "unspecified" {
		t.Errorf("revoke --json = %s (%v)", r.stdout, err)
	}
}

func TestCertImport(t *testing.T) {
	c := newCLI(t)
	dir := t.TempDir()
	now := c.Clock.Now()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pemOf := func(ders ...[]byte) []byte {
		var b bytes.Buffer
		for _, d := range ders {
			pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: d})
		}
		return b.Bytes()
	}
	dave, oldCA := admintest.ForeignCert(t, "dave@example.com", now.AddDate(0, -3, 0), now.AddDate(0, 9, 0))
	erin, _ := admintest.ForeignCert(t, "erin@example.com", now.AddDate(0, -3, 0), now.AddDate(0, 9, 0))
	bundle := write("bundle.pem", pemOf(dave, oldCA))
	der := write("erin.cer", erin)

	r := c.kms(t, "cert", "import", bundle, der).want(t, 0)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 3 || !strings.Contains(lines[0], "imported") || !strings.Contains(lines[0], "dave@example.com") ||
		!strings.Contains(lines[1], "skipped") || !strings.Contains(lines[2], "erin@example.com") {
		t.Errorf("import output:\n%s", r.stdout)
	}
	if u, err := c.Service.GetUser(context.Background(), "erin@example.com"); err != nil || u.State != kms.UserActive {
		t.Errorf("erin after import: %v %v", u, err)
	}

	// Refusals: a user who holds a certificate, a damaged file, a missing one.
	again, _ := admintest.ForeignCert(t, "dave@example.com", now.AddDate(0, -1, 0), now.AddDate(1, 0, 0))
	frank, _ := admintest.ForeignCert(t, "frank@example.com", now.AddDate(0, -1, 0), now.AddDate(1, 0, 0))
	mixed := write("mixed.pem", pemOf(again, frank))
	r = c.kms(t, "cert", "import", mixed, "--json").want(t, exitFail)
	var out []struct {
		File    string               `json:"file"`
		Results []admin.ImportResult `json:"results"`
		Error   string               `json:"error"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
		t.Fatalf("import --json: %v\n%s", err, r.stdout)
	}
	if len(out) != 1 || len(out[0].Results) != 2 || out[0].Results[0].Result != "refused" || out[0].Results[1].Result != "imported" ||
		!strings.Contains(out[0].Error, "1 of 2") {
		t.Errorf("import --json of a partly refused bundle = %s", r.stdout)
	}

	damaged := write("damaged.pem", []byte("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"))
	r = c.kms(t, "cert", "import", damaged).want(t, exitFail)
	if !strings.Contains(r.stderr, "damaged.pem") || !strings.Contains(r.stderr, "PEM block") {
		t.Errorf("damaged file: %q", r.stderr)
	}
	r = c.kms(t, "cert", "import", filepath.Join(dir, "missing.pem")).want(t, exitFail)
	if !strings.Contains(r.stderr, "missing.pem") {
		t.Errorf("missing file: %q", r.stderr)
	}
	big := write("big.pem", bytes.Repeat([]byte("x"), 1<<20+1))
	if r := c.kms(t, "cert", "import", big).want(t, exitFail); !strings.Contains(r.stderr, "larger than 1 MiB") {
		t.Errorf("big file: %q", r.stderr)
	}
	users, _ := c.Service.ListUsers(context.Background(), "")
	if len(users) != 3 {
		t.Errorf("users after imports = %v, want dave, erin and frank", users)
	}
}

func TestAudit(t *testing.T) {
	c := newCLI(t)
	cert, _ := c.Activate(t, "alice@example.com")
	c.kms(t, "cert", "revoke", cert.Serial, "--reason", "keyCompromise").want(t, 0)
	c.kms(t, "user", "enroll", "bob@example.com").want(t, 0)

	r := c.kms(t, "audit", "--email", "alice@example.com").want(t, 0)
	tab := rows(t, r.stdout)
	if len(tab) < 2 || tab[0]["ACTION"] != "revoke" || !strings.HasPrefix(tab[0]["ACTOR"], "admin:127.0.0.1:") ||
		tab[0]["SERIAL"] != cert.Serial || tab[0]["DETAIL"] != "keyCompromise" {
		t.Errorf("audit:\n%s\nparsed %v", r.stdout, tab)
	}
	for _, row := range tab {
		if row["EMAIL"] != "alice@example.com" {
			t.Errorf("audit --email alice shows %v", row)
		}
	}
	r = c.kms(t, "audit", "--json", "--limit", "1").want(t, 0)
	var recs []kms.AuditRecord
	if err := json.Unmarshal([]byte(r.stdout), &recs); err != nil || len(recs) != 1 || recs[0].Email != "bob@example.com" || recs[0].Action != "enroll" {
		t.Errorf("audit --json --limit 1 = %s (%v)", r.stdout, err)
	}
	if r := c.kms(t, "audit", "--email", "nobody@example.com").want(t, 0); strings.TrimSpace(r.stdout) != "no audit records" {
		t.Errorf("audit of nobody: %q", r.stdout)
	}
	c.kms(t, "audit", "--email", "@").want(t, exitFail)
}

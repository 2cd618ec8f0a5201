package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestServeEndToEnd is the administrator's path through the real binary:
// first start creates the data directory, CA and token; the command line
// enrolls, imports, lists and revokes; bad input is refused with exit 1 and
// changes nothing; after a graceful restart everything is still there.
func TestServeEndToEnd(t *testing.T) {
	dir := t.TempDir()
	d := newDaemonConfig(t, dir, "")
	d.start()

	for _, f := range []string{"kms.db", "admin.token", "ca/root.pem", "ca/issuer.pem", "ca/issuer.key", "ca/kms.pem"} {
		if _, err := os.Stat(filepath.Join(d.dataDir, f)); err != nil {
			t.Errorf("first start did not create %s: %v", f, err)
		}
	}
	if fi, err := os.Stat(filepath.Join(d.dataDir, "admin.token")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin.token mode: %v %v", fi.Mode(), err)
	}

	var en struct{ Email, Code, Expires string }
	r := d.cli("user", "enroll", "Alice@Example.com", "--name", "Alice", "--json").want(t, 0)
	if err := json.Unmarshal([]byte(r.stdout), &en); err != nil || en.Email != "alice@example.com" || len(en.Code) < 26 {
		t.Fatalf("enroll --json = %q (%v)", r.stdout, err)
	}
	if _, err := time.Parse(time.RFC3339, en.Expires); err != nil {
		t.Fatalf("expires %q is not RFC 3339", en.Expires)
	}

	// A certificate from another CA, imported to be tracked.
	certFile := writeForeignCert(t, dir, "carol@example.com")
	d.cli("cert", "import", certFile).want(t, 0)
	var certs []map[string]any
	r = d.cli("cert", "list", "--json").want(t, 0)
	if err := json.Unmarshal([]byte(r.stdout), &certs); err != nil || len(certs) != 1 {
		t.Fatalf("cert list --json = %q (%v)", r.stdout, err)
	}
	for _, k := range []string{"serial", "email", "state", "not_before", "not_after"} {
		if _, ok := certs[0][k]; !ok {
			t.Errorf("cert list --json lacks %q: %v", k, certs[0])
		}
	}
	serial := certs[0]["serial"].(string)

	// Bad input: refused with exit 1, a message naming the problem, no change.
	before := d.cli("user", "list", "--json").want(t, 0).stdout
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"user", "enroll", "not-an-address"}, "not-an-address"},
		{[]string{"user", "enroll", "dave@other.org"}, "other.org"},
		{[]string{"user", "enroll", "carol@example.com"}, "carol@example.com"},
		{[]string{"cert", "revoke", "abcdef12345"}, "abcdef12345"},
		{[]string{"cert", "revoke", serial, "--reason", "certificateHold"}, "certificateHold"},
	} {
		r := d.cli(c.args...)
		if r.code != 1 || !strings.Contains(r.stderr, c.want) {
			t.Errorf("kms %v: exit %d, stderr %q; want exit 1 naming %q", c.args, r.code, r.stderr, c.want)
		}
	}
	if after := d.cli("user", "list", "--json").want(t, 0).stdout; after != before {
		t.Fatalf("refused commands changed the users:\n%s\n%s", before, after)
	}
	d.cli("user", "enroll").want(t, 2)
	d.cli("cert", "frobnicate").want(t, 2)

	// A bad token is refused by the API.
	req, _ := http.NewRequest("GET", "http://"+d.httpAddr+"/api/v1/users", nil)
	req.Header.Set("Authorization", "Bearer "+strings.Repeat("0", 64))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("bad token: HTTP %d, want 401", resp.StatusCode)
	}

	d.cli("cert", "revoke", serial, "--reason", "keyCompromise").want(t, 0)
	checkCRLWithOpenSSL(t, d, dir)

	if err := d.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("graceful stop: %v", err)
	}
	d.start()
	r = d.cli("user", "list", "--json").want(t, 0)
	if !strings.Contains(r.stdout, `"alice@example.com"`) || !strings.Contains(r.stdout, `"carol@example.com"`) {
		t.Fatalf("after restart, users = %s", r.stdout)
	}
	r = d.cli("cert", "show", serial, "--json").want(t, 0)
	if !strings.Contains(r.stdout, `"revoked"`) || !strings.Contains(r.stdout, "keyCompromise") {
		t.Fatalf("after restart, certificate = %s", r.stdout)
	}
}

// TestServeRefusesBadConfig checks that a malformed configuration stops
// start-up with the key and the reason.
func TestServeRefusesBadConfig(t *testing.T) {
	dir := t.TempDir()
	d := newDaemonConfig(t, dir, "policy:\n  lifetime: 18 months\n")
	out, err := exec.Command(d.bin, "serve", "--config", d.config).CombinedOutput()
	if err == nil {
		t.Fatal("kms serve accepted a bad configuration")
	}
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), "policy.lifetime") {
		t.Fatalf("exit %v, output %q: want exit 1 naming policy.lifetime", err, out)
	}
	if _, err := os.Stat(d.dataDir); err == nil {
		t.Fatal("a refused configuration still created the data directory")
	}
}

// checkCRLWithOpenSSL fetches /crl and /ca.pem and has openssl verify the CRL.
func checkCRLWithOpenSSL(t *testing.T, d *daemonProc, dir string) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
	crl := filepath.Join(dir, "kms.crl")
	chain := filepath.Join(dir, "chain.pem")
	for path, file := range map[string]string{"/crl": crl, "/ca.pem": chain} {
		resp, err := http.Get("http://" + d.httpAddr + path)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d", path, resp.StatusCode)
		}
		os.WriteFile(file, b, 0o644)
	}
	out, err := exec.Command("openssl", "crl", "-inform", "DER", "-in", crl, "-CAfile", chain, "-noout", "-verify").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "verify OK") {
		t.Fatalf("openssl crl -verify: %v\n%s", err, out)
	}
}

// writeForeignCert writes a PEM certificate for email from a throwaway CA.
func writeForeignCert(t *testing.T, dir, email string) string {
	t.Helper()
	cert, _, _ := writeForeignPKI(t, dir, email)
	return cert
}

// writeForeignPKI writes, for email, a certificate from a throwaway "old
// CA", its key (PKCS#8 PEM) and the CA's certificate, returning the paths.
func writeForeignPKI(t *testing.T, dir, email string) (certFile, keyFile, caFile string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Old CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().AddDate(2, 0, 0)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: email},
		EmailAddresses: []string{email}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection},
		KeyUsage: x509.KeyUsageDigitalSignature, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().AddDate(1, 0, 0)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, caFile = filepath.Join(dir, email+".pem"), filepath.Join(dir, email+".key"), filepath.Join(dir, "old-ca.pem")
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	for f, block := range map[string]*pem.Block{certFile: {Type: "CERTIFICATE", Bytes: der},
		keyFile: {Type: "PRIVATE KEY", Bytes: keyDER}, caFile: {Type: "CERTIFICATE", Bytes: caDER}} {
		if err := os.WriteFile(f, pem.EncodeToMemory(block), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return certFile, keyFile, caFile
}

// TestServeRefusesSecondDaemon: a second `kms serve` on a SQLite store that
// a running daemon holds stops at start-up with a clear error (the lock
// file), and touches nothing; once the first has stopped, it starts.
func TestServeRefusesSecondDaemon(t *testing.T) {
	dir := t.TempDir()
	first := newDaemonConfig(t, dir, "")
	first.start()
	// The same configuration on other ports: only the store is shared.
	second := newDaemonConfig(t, dir, "")
	// Without the lock it would serve: the timeout ends it, and the test fails.
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, second.bin, "serve", "--config", second.config).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), "another kms serve is using this store") {
		t.Fatalf("second daemon: exit %v, output %q: want exit 1 and the lock error", err, out)
	}
	if !first.running() {
		t.Fatal("the first daemon stopped")
	}
	if err := first.stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	second.start()
}

// TestServeTakesBackClaimsAtStartUp: a message that a killed daemon had
// claimed is taken up at once by the next one, not after its lease; and a
// daemon that cannot give such claims back stops at start-up with an error
// that says so, instead of serving while the message waits.
func TestServeTakesBackClaimsAtStartUp(t *testing.T) {
	dir := t.TempDir()
	d := newDaemonConfig(t, dir, "")
	d.start()
	if err := d.stop(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(d.dataDir, "kms.db")+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	run := func(query string, args ...any) {
		t.Helper()
		if _, err := db.Exec(query, args...); err != nil {
			t.Fatalf("%s: %v", query, err)
		}
	}
	// A stranger's message, claimed for a day as if a worker had died
	// with it. Processing it ends it (a stranger gets no reply).
	now := time.Now().UnixMilli()
	run(`INSERT INTO inbound (id, digest, mail_from, state, received_at, next_attempt_at, claimed_until)
		VALUES (1, X'01', 'stranger@example.org', 'pending', $1, $1, $2)`, now, now+24*3600*1000)
	run(`INSERT INTO inbound_raw (inbound_id, raw) VALUES (1, $1)`,
		[]byte("From: stranger@example.org\r\nTo: kms@example.com\r\nSubject: hello\r\n\r\nhello\r\n"))
	run(`CREATE TRIGGER refuse_release BEFORE UPDATE ON inbound BEGIN SELECT RAISE(ABORT, 'refused by the test'); END`)

	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, d.bin, "serve", "--config", d.config).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 ||
		!strings.Contains(string(out), "releasing the previous run's claims") || !strings.Contains(string(out), "refused by the test") {
		t.Fatalf("daemon that cannot release claims: exit %v, output %q; want exit 1 naming the claims and the cause", err, out)
	}

	run(`DROP TRIGGER refuse_release`)
	d.start()
	d.waitLog("took back messages the previous run had claimed", 10*time.Second)
	if !strings.Contains(d.log.String(), "messages=1") {
		t.Fatalf("start-up log does not count the one message:\n%s", d.log.String())
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		var state string
		if err := db.QueryRow(`SELECT state FROM inbound WHERE id = 1`).Scan(&state); err != nil {
			t.Fatal(err)
		}
		if state != "pending" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the message taken back was not processed: it still waits for its lease")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

package admin_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/kmsmail/kms/admin/admintest"
)

func TestHealthz(t *testing.T) {
	e := admintest.New(t)
	a := call(t, e, "GET", "/healthz", "", nil)
	if a.status != http.StatusOK || strings.TrimSpace(string(a.body)) != "ok" {
		t.Fatalf("healthz = %d %q, want 200 ok", a.status, a.body)
	}
	// With the store gone the daemon cannot serve, and says so.
	e.Store.Close()
	a = call(t, e, "GET", "/healthz", "", nil)
	if a.status != http.StatusServiceUnavailable {
		t.Fatalf("healthz with a closed store = %d %q, want 503", a.status, a.body)
	}
	if strings.Contains(string(a.body), "sql") {
		t.Errorf("healthz leaks internals: %q", a.body)
	}
}

func TestMetrics(t *testing.T) {
	e := admintest.New(t)
	e.Activate(t, "alice@example.com")
	a := call(t, e, "GET", "/metrics", "", nil)
	if a.status != http.StatusOK {
		t.Fatalf("metrics = %d", a.status)
	}
	for _, want := range []string{`kms_users{state="active"} 1`, `kms_certificates{state="current"} 1`, `kms_certificates_issued_total{operation="enrollment"} 1`} {
		if !strings.Contains(string(a.body), want) {
			t.Errorf("metrics lack %q:\n%s", want, a.body)
		}
	}
	// The SQLite group commit's counters: enrolling and activating a user
	// wrote, and a commit carries at least one transaction.
	counter := func(name string) float64 {
		m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindSubmatch(a.body)
		if m == nil {
			t.Fatalf("metrics lack %s:\n%s", name, a.body)
		}
		v, err := strconv.ParseFloat(string(m[1]), 64)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	commits, txs := counter("kms_sqlite_commits_total"), counter("kms_sqlite_transactions_total")
	if commits < 1 || txs < commits {
		t.Errorf("kms_sqlite_commits_total %v, kms_sqlite_transactions_total %v: want at least one commit, and no fewer transactions", commits, txs)
	}
}

func TestCAChainAndIssuer(t *testing.T) {
	e := admintest.New(t)
	a := call(t, e, "GET", "/ca.pem", "", nil)
	if a.status != http.StatusOK || a.header.Get("Content-Type") != "application/x-pem-file" {
		t.Fatalf("ca.pem = %d %q", a.status, a.header.Get("Content-Type"))
	}
	var chain []*x509.Certificate
	for rest := a.body; ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		chain = append(chain, c)
	}
	if len(chain) != 2 || !chain[0].Equal(e.CA.Issuer()) || !chain[1].Equal(e.CA.Root()) {
		t.Fatalf("ca.pem holds %d certificates, want the issuing CA then the root", len(chain))
	}

	// A relying party follows the AIA URL of a certificate kms issued.
	cert, _ := e.Activate(t, "alice@example.com")
	leaf, err := x509.ParseCertificate(cert.DER)
	if err != nil {
		t.Fatal(err)
	}
	if len(leaf.IssuingCertificateURL) != 1 {
		t.Fatalf("certificate has AIA %v", leaf.IssuingCertificateURL)
	}
	resp, err := http.Get(leaf.IssuingCertificateURL[0])
	if err != nil {
		t.Fatal(err)
	}
	der, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/pkix-cert" {
		t.Fatalf("AIA %s = %d %q", leaf.IssuingCertificateURL[0], resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	issuer, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("issuer.cer is not DER: %v", err)
	}
	if err := leaf.CheckSignatureFrom(issuer); err != nil {
		t.Errorf("issuer.cer did not sign the certificate: %v", err)
	}
}

func TestCRL(t *testing.T) {
	e := admintest.New(t)
	cert, _ := e.Activate(t, "alice@example.com")
	leaf, err := x509.ParseCertificate(cert.DER)
	if err != nil {
		t.Fatal(err)
	}
	fetch := func() *x509.RevocationList {
		t.Helper()
		// The CRL distribution point in the certificate leads here.
		resp, err := http.Get(leaf.CRLDistributionPoints[0])
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		der, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/pkix-crl" {
			t.Fatalf("CRL = %d %q %s", resp.StatusCode, resp.Header.Get("Content-Type"), der)
		}
		crl, err := x509.ParseRevocationList(der)
		if err != nil {
			t.Fatal(err)
		}
		if err := crl.CheckSignatureFrom(e.CA.Issuer()); err != nil {
			t.Fatalf("CRL not signed by the issuing CA: %v", err)
		}
		return crl
	}
	if crl := fetch(); len(crl.RevokedCertificateEntries) != 0 {
		t.Fatalf("fresh CRL lists %d certificates", len(crl.RevokedCertificateEntries))
	}
	if _, err := e.Client.Revoke(context.Background(), cert.Serial, "keyCompromise"); err != nil {
		t.Fatal(err)
	}
	crl := fetch()
	if len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].SerialNumber.Cmp(leaf.SerialNumber) != 0 {
		t.Fatalf("CRL after revocation lists %v, want serial %s", crl.RevokedCertificateEntries, cert.Serial)
	}
	if got := crl.RevokedCertificateEntries[0].ReasonCode; got != 1 {
		t.Errorf("CRL reason = %d, want 1 (keyCompromise)", got)
	}
}

func TestUnauthorized(t *testing.T) {
	e := admintest.New(t)
	enroll := jsonBody(t, map[string]string{"email": "bob@example.com"})
	for name, header := range map[string]string{
		"none":         "",
		"wrong token":  "Bearer " + strings.Repeat("0", 64),
		"basic scheme": "Basic " + e.Token,
		"token prefix": "Bearer " + e.Token[:32],
	} {
		t.Run(name, func(t *testing.T) {
			unchanged(t, e, func() {
				req, _ := http.NewRequest("POST", e.URL+"/api/v1/users", strings.NewReader(string(enroll)))
				if header != "" {
					req.Header.Set("Authorization", header)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				wantRefusal(t, answer{resp.StatusCode, resp.Header, b}, http.StatusUnauthorized, "unauthorized")
				if !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
					t.Errorf("WWW-Authenticate = %q", resp.Header.Get("WWW-Authenticate"))
				}
			})
		})
	}
	// Reading needs the token too.
	wantRefusal(t, call(t, e, "GET", "/api/v1/users", "", nil), http.StatusUnauthorized, "unauthorized")
	wantRefusal(t, call(t, e, "GET", "/api/v1/audit", "bad", nil), http.StatusUnauthorized, "unauthorized")
}

func TestUnknownEndpoint(t *testing.T) {
	e := admintest.New(t)
	wantRefusal(t, api(t, e, "GET", "/api/v1/nothing", nil), http.StatusNotFound, "not_found")
	wantRefusal(t, api(t, e, "DELETE", "/api/v1/users/a@example.com", nil), http.StatusNotFound, "not_found")
}

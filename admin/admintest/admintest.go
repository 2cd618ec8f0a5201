// Package admintest runs a real admin API for tests: a kms.Service on a
// SQLite file in the test's temporary directory, a real CA, and the admin
// handler on a loopback HTTP server. Tests of the admin package and of the
// command line share it, so both exercise exactly what the daemon runs.
package admintest

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"log/slog"
	"math/big"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmsmail/kms/admin"
	"github.com/kmsmail/kms/clock"
	"github.com/kmsmail/kms/kms"
	"github.com/kmsmail/kms/kms/ca"
	"github.com/kmsmail/kms/policy"
)

// Domain is the mail domain the test service certifies.
const Domain = "example.com"

// Env is a running admin API and what stands behind it.
type Env struct {
	URL       string // http://127.0.0.1:PORT
	Addr      string // 127.0.0.1:PORT, for http.listen
	DataDir   string // holds admin.token
	TokenPath string
	Token     string
	Service   *kms.Service
	Store     *kms.Store
	CA        *ca.Authority
	Clock     *clock.Fake
	Client    *admin.Client
	Server    *httptest.Server
}

// New starts an Env and stops it when the test ends.
func New(t testing.TB) *Env {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	e := &Env{DataDir: dir, TokenPath: filepath.Join(dir, admin.TokenFile)}
	// The listener exists before the CA so that the certificates it issues
	// point their CRL and AIA URLs at this very server.
	e.Server = httptest.NewUnstartedServer(nil)
	e.Addr = e.Server.Listener.Addr().String()
	e.URL = "http://" + e.Addr
	e.Clock = clock.NewFake(time.Now().UTC().Truncate(time.Second))
	log := slog.New(slog.DiscardHandler)

	var err error
	e.CA, err = ca.Open(ca.Config{Dir: filepath.Join(dir, "ca"), KeyType: policy.P256, RootKeyType: policy.P256,
		BaseURL: e.URL, AIA: true, KMSAddress: "kms@" + Domain}, e.Clock.Now(), log)
	if err != nil {
		t.Fatalf("open CA: %v", err)
	}
	e.Store, err = kms.OpenStore(ctx, "sqlite", filepath.Join(dir, "kms.db"))
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { e.Store.Close() })
	reg := prometheus.NewRegistry()
	e.Service = kms.New(kms.Config{Store: e.Store, Issuer: e.CA, CRLSigner: e.CA,
		Policies: policy.Set{Default: policy.Default()}, Domains: []string{Domain},
		KMSAddress: "kms@" + Domain, AdminAddress: "postmaster@" + Domain,
		Clock: e.Clock, Log: log, Metrics: kms.NewMetrics(reg)})
	reg.MustRegister(kms.NewStateCollector(e.Service))
	e.Token, err = admin.EnsureToken(e.TokenPath)
	if err != nil {
		t.Fatalf("admin token: %v", err)
	}
	srv, err := admin.NewServer(admin.Options{
		Users: e.Service, Certs: e.Service, CRL: e.Service, Audit: e.Store,
		Token: e.Token, Metrics: reg, CAChainPEM: e.CA.ChainPEM(), IssuerDER: e.CA.Issuer().Raw,
		Ready: func(ctx context.Context) error { _, err := e.Store.SchemaVersion(ctx); return err },
		Clock: e.Clock, Log: log,
	})
	if err != nil {
		t.Fatalf("admin server: %v", err)
	}
	// The daemon's own *http.Server settings, timeouts included.
	e.Server.Config = srv.HTTPServer(e.Addr)
	e.Server.Start()
	t.Cleanup(e.Server.Close)
	e.Client = admin.NewClient(e.URL, e.Token)
	return e
}

// Activate enrolls email and redeems the code with a fresh P-256 key, as a
// user's enrollment mail would, so that the user is active and holds a
// current certificate.
func (e *Env) Activate(t testing.TB, email string) (*kms.Certificate, crypto.Signer) {
	t.Helper()
	ctx := context.Background()
	en, err := e.Service.Enroll(ctx, email, "", "test")
	if err != nil {
		t.Fatalf("enroll %s: %v", email, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	c, err := e.Service.EnrollByCode(ctx, email, en.Code, key.Public(), kms.Request{Actor: "mail:" + email})
	if err != nil {
		t.Fatalf("enroll %s by code: %v", email, err)
	}
	return c, key
}

// ForeignCert returns a DER certificate for email from a CA that is not
// kms's, as a migration from another CA brings them, valid until notAfter.
// It also returns that CA's certificate, for bundles that carry the chain.
// An empty email makes a certificate that names no mail address.
func ForeignCert(t testing.TB, email string, notBefore, notAfter time.Time) (leaf, issuer []byte) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Old CA"},
		NotBefore: notBefore, NotAfter: notAfter.AddDate(1, 0, 0), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: serial.Add(serial, big.NewInt(1)), Subject: pkix.Name{CommonName: email},
		NotBefore: notBefore, NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}}
	if email != "" {
		tmpl.EmailAddresses = []string{email}
	}
	leaf, err = x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
	if err != nil {
		t.Fatal(err)
	}
	return leaf, caDER
}

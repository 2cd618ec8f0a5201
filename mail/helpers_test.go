package mail

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"fmt"
	"math/big"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/kmsmail/kms/internal/syncbuf"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/kmsmail/kms/clock"
	"github.com/kmsmail/kms/kms"
)

// t0 is where the fake clocks start.
var t0 = time.Date(2026, 3, 2, 9, 0, 0, 0, time.UTC)

const (
	kmsAddr   = "kms@example.com"
	adminAddr = "postmaster@example.com"
)

// openStore opens a fresh SQLite store in t.TempDir() and returns it with
// its file's path, for tests that read rows directly.
func openStore(t testing.TB) (*kms.Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kms.db")
	st, err := kms.OpenStore(context.Background(), "sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st, path
}

// openDB opens the store's file a second time, read side, to check rows
// the store API does not expose.
func openDB(t testing.TB, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// selfSigned makes a certificate for localhost/127.0.0.1 and a pool that
// trusts it.
func selfSigned(t testing.TB) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "localhost"},
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}, pool
}

// textRenderer is a small real renderer: the headers a KMS mail carries and
// a text body naming the kind. It does not sign; signing is the real
// renderer's business and not what these tests are about.
type textRenderer struct{ from string }

var subjects = map[kms.OutboxKind]string{
	kms.MailCertificate: "Your certificate",
	kms.MailInvitation:  "You are invited to enroll",
	kms.MailReminder:    "Your certificate expires soon",
	kms.MailRejection:   "Your request was refused",
	kms.MailLapse:       "Your certificate has expired",
	kms.MailLapseAdmin:  "A certificate has expired",
	kms.MailRevocation:  "Your certificate was revoked",
}

func (r textRenderer) Render(_ context.Context, m kms.OutboxMessage) ([]byte, error) {
	subject, ok := subjects[m.Kind]
	if !ok {
		return nil, fmt.Errorf("no template for mail kind %q", m.Kind)
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: KMS <%s>\r\nTo: %s\r\nSubject: %s\r\nMessage-ID: %s\r\n", r.from, m.To, subject, m.MessageID)
	if m.InReplyTo != "" {
		fmt.Fprintf(&b, "In-Reply-To: %s\r\n", m.InReplyTo)
	}
	fmt.Fprintf(&b, "Date: %s\r\nAuto-Submitted: auto-generated\r\nMIME-Version: 1.0\r\n", m.CreatedAt.Format(time.RFC1123Z))
	fmt.Fprintf(&b, "Content-Type: text/plain; charset=utf-8\r\n\r\n%s.\r\n.leading dot line\r\nAbout: %s\r\n",
		subject, m.Payload.Email)
	return b.Bytes(), nil
}

// eventually waits (up to 30s) for cond, and fails the test naming what it
// waited for. It is a synchronisation point, not a timing assertion: the
// bound only keeps a broken test from hanging, and is generous because
// 10s was seen to run out on a 2-core machine also running a load test.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// syncBuffer is a bytes.Buffer safe for a logger used from many goroutines.
type syncBuffer = syncbuf.Buffer

// fakeClock is the fake clock the tests share the type of.
func fakeClock() *clock.Fake { return clock.NewFake(t0) }

// value reads a counter or a histogram's sample count. (prometheus's
// testutil would do, but it pulls in a module this repository does not
// otherwise need.)
func value(t testing.TB, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	switch {
	case d.Counter != nil:
		return d.Counter.GetValue()
	case d.Histogram != nil:
		return float64(d.Histogram.GetSampleCount())
	}
	t.Fatalf("metric %v is neither a counter nor a histogram", m.Desc())
	return 0
}

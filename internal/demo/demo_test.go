package demo

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/kmsmail/kms/config"
	"github.com/kmsmail/kms/mail/smime"
	"github.com/kmsmail/kms/policy"
)

func TestCertificationRequestCarriesTheCode(t *testing.T) {
	u := &user{name: "Alice Example", email: "alice@example.com"}
	if err := u.newKey(); err != nil {
		t.Fatal(err)
	}
	const code = "KJZD3-9C05A-1HMQW-R8MTT-5YPS6-C4GB4"
	der, err := certificationRequest(u.key, u.name, code)
	if err != nil {
		t.Fatal(err)
	}
	csr, err := smime.ParseCSR(der)
	if err != nil {
		t.Fatalf("kms's parser refuses the request: %v", err)
	}
	if csr.ChallengePassword != code || csr.Request.Subject.CommonName != u.name || !u.key.PublicKey.Equal(csr.Request.PublicKey) {
		t.Fatalf("parsed code %q, subject %q; want %q, %q and the user's key", csr.ChallengePassword, csr.Request.Subject.CommonName, code, u.name)
	}

	// An independent reader: openssl checks the self-signature and shows
	// the attribute.
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed (CI installs it)")
	}
	path := filepath.Join(t.TempDir(), "req.pem")
	os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0o600)
	out, err := exec.Command("openssl", "req", "-in", path, "-noout", "-verify", "-text").CombinedOutput()
	if err != nil {
		t.Fatalf("openssl req -verify: %v\n%s", err, out)
	}
	if !bytes.Contains(out, []byte("challengePassword")) || !bytes.Contains(out, []byte(code)) {
		t.Fatalf("openssl does not see the challengePassword:\n%s", out)
	}
}

func TestEnrollmentMailBothForms(t *testing.T) {
	u := &user{name: "Bob Example", email: "bob@example.com"}
	if err := u.newKey(); err != nil {
		t.Fatal(err)
	}
	for _, attach := range []bool{false, true} {
		raw, err := u.enrollmentMail("CODE-1", attach, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		req, err := smime.ParseRequest(raw, smime.Limits{})
		if err != nil {
			t.Fatalf("attach=%v: %v\n%s", attach, err, raw)
		}
		c, err := req.UnverifiedContent()
		if err != nil {
			t.Fatalf("attach=%v: %v", attach, err)
		}
		if req.From != u.email || req.IsAutoSubmitted() || len(c.CSRs) != 1 || c.CSRs[0].ChallengePassword != "CODE-1" {
			t.Fatalf("attach=%v: from %q, auto %v, %d CSRs; want one request from %s with the code", attach, req.From, req.IsAutoSubmitted(), len(c.CSRs), u.email)
		}
	}
}

// testCA is a root that issues S/MIME certificates, standing in for kms.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &testCA{c, key}
}

func (ca *testCA) issue(t *testing.T, email string, pub any) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), EmailAddresses: []string{email},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, pub, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

func TestRenewalMailIsASignedReply(t *testing.T) {
	ca := newTestCA(t)
	u := &user{name: "Alice Example", email: "alice@example.com"}
	if err := u.newKey(); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	tr := trust{roots: roots, intermediates: x509.NewCertPool()}
	// take refuses a certificate for another key, then installs the right one.
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	reply := &received{subject: "Your S/MIME certificate", to: u.email, certs: []*x509.Certificate{ca.issue(t, u.email, other.Public())}}
	if _, err := u.take(reply, tr, time.Now()); err == nil {
		t.Fatal("took a certificate for someone else's key")
	}
	reply.certs = append(reply.certs, ca.issue(t, u.email, u.key.Public()), ca.cert)
	if _, err := u.take(reply, tr, time.Now()); err != nil {
		t.Fatal(err)
	}

	reminder := &received{subject: "Your S/MIME certificate expires soon", messageID: "r1@kms.example.com"}
	raw, err := u.renewalMail(reminder, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	req, err := smime.ParseRequest(raw, smime.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	v, err := req.Verify(smime.VerifyOptions{Roots: roots, At: time.Now()})
	if err != nil {
		t.Fatalf("kms would not verify the renewal: %v", err)
	}
	if req.Kind != smime.KindSigned || req.IsAutoSubmitted() || len(req.InReplyTo) != 1 || req.InReplyTo[0] != reminder.messageID ||
		!v.Signature.SignerHasAddress(u.email) || len(v.Content.CSRs) != 0 {
		t.Fatalf("kind %v, auto-submitted %v, In-Reply-To %q, signer %v, %d CSRs: not a same-key renewal reply",
			req.Kind, req.IsAutoSubmitted(), req.InReplyTo, v.Signature.Signer.EmailAddresses, len(v.Content.CSRs))
	}
}

func TestScheduleMakesAValidConfiguration(t *testing.T) {
	for _, month := range []time.Duration{MinMonth, time.Second, DefaultMonth, 3300 * time.Millisecond, MaxMonth} {
		s, err := NewSchedule(month)
		if err != nil {
			t.Fatalf("month %s: %v", month, err)
		}
		yaml := ConfigYAML(t.TempDir(), "127.0.0.1:2525", "127.0.0.1:8025", s)
		cfg, err := config.LoadBytes(yaml, func(string) string { return "" })
		if err != nil {
			t.Fatalf("month %s: %v\n%s", month, err, yaml)
		}
		p := cfg.Policies().For(Domain)
		if p.Lifetime != policy.Fixed(s.Lifetime) || p.Reminders.First != policy.Fixed(s.First) || cfg.LogLevel().String() != "WARN" {
			t.Fatalf("month %s: loaded lifetime %s, first %s, log %s; want %s, %s, WARN", month, p.Lifetime, p.Reminders.First, cfg.LogLevel(), s.Lifetime, s.First)
		}
		if s.Lifetime%time.Second != 0 || s.FinalEvery < time.Second || s.First >= s.Lifetime {
			t.Fatalf("month %s: schedule %+v is not whole seconds in order", month, s)
		}
	}
	for _, month := range []time.Duration{0, MinMonth - 1, MaxMonth + 1, -time.Second} {
		if _, err := NewSchedule(month); !errors.Is(err, ErrSpeed) {
			t.Errorf("month %s: err %v, want ErrSpeed", month, err)
		}
	}
}

func TestExcerptKeepsThePage(t *testing.T) {
	letter := "Hello,\n\nyour S/MIME certificate for alice@example.com expires on\nSaturday, 21 November 2026 at 21:31 UTC.\n\n" +
		"  Serial number: 0123456789abcdef0123456789abcdef\n\nTo renew, reply.\nMore text.\n\n-- \nkms\n"
	got := excerpt(letter, 40, 3)
	want := []string{"your S/MIME certificate for", "alice@example.com expires on Saturday,", "21 November 2026 at 21:31 UTC.", "..."}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("excerpt:\n%q\nwant\n%q", got, want)
	}
	got = excerpt(letter, 80, 10)
	if got[len(got)-1] != "To renew, reply. More text." || got[2] != "  Serial number: 0123456789abcdef0123456789abcdef" {
		t.Fatalf("excerpt lost the indented line or read past the signature: %q", got)
	}
	for _, l := range wrap(strings.Repeat("word ", 50)+"\n  indented "+strings.Repeat("x", 70), 30) {
		if utf8.RuneCountInString(l) > 30 && !strings.Contains(l, "xxx") {
			t.Fatalf("line %q is longer than 30", l)
		}
	}
}

func TestWaitNamesTheStepThatDidNotHappen(t *testing.T) {
	dir := t.TempDir()
	for _, sub := range []string{"new", "cur", "tmp"} {
		os.MkdirAll(filepath.Join(dir, sub), 0o700)
	}
	mb := newMailbox(dir, trust{}, func(*received) { t.Fatal("a mail appeared in an empty Maildir") })
	_, err := mb.wait(context.Background(), "Alice's first reminder", "alice@example.com", kindReminder, 200*time.Millisecond)
	if !errors.Is(err, ErrStepTimeout) || !strings.Contains(err.Error(), "Alice's first reminder") {
		t.Fatalf("err = %v, want ErrStepTimeout naming the step", err)
	}

	// A file that is not a kms-signed mail stops the story with the reason.
	os.WriteFile(filepath.Join(dir, "new", "1.host"), []byte("From: mallory@example.net\nTo: alice@example.com\nSubject: hi\n\nhello\n"), 0o600)
	_, err = mb.wait(context.Background(), "Alice's first reminder", "alice@example.com", kindReminder, time.Second)
	if err == nil || !strings.Contains(err.Error(), "1.host") {
		t.Fatalf("err = %v, want the unsigned mail refused", err)
	}
}

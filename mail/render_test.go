package mail

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/pem"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsmail/kms/kms"
	"github.com/kmsmail/kms/kms/ca"
	"github.com/kmsmail/kms/policy"
)

// certSource is a one-certificate CertSource.
type certSource map[string]*kms.Certificate

func (c certSource) GetCert(_ context.Context, serial string) (*kms.Certificate, error) {
	if cert, ok := c[serial]; ok {
		return cert, nil
	}
	return nil, kms.ErrNotFound
}

// TestEveryLetterVerifiesWithOpenSSL renders every kind of mail kms sends
// with the real SignedRenderer and has openssl verify each against the
// root; the certificate reply's smime.p7c must carry the new certificate.
func TestEveryLetterVerifiesWithOpenSSL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed (CI installs it)")
	}
	now := time.Now().UTC()
	dir := t.TempDir()
	authority, err := ca.Open(ca.Config{Dir: filepath.Join(dir, "ca"), KeyType: policy.RSA2048, RootKeyType: policy.P256,
		BaseURL: "http://127.0.0.1:8025", KMSAddress: kmsAddr}, now, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	issued, err := authority.Issue(ca.Request{Email: "alice@example.com", PublicKey: key.Public(), NotBefore: now, NotAfter: now.AddDate(1, 6, 0)})
	if err != nil {
		t.Fatal(err)
	}
	serial := kms.SerialHex(issued)
	r := &SignedRenderer{Identity: authority, Chain: authority.Chain(), KMSAddress: kmsAddr, Clock: fakeClock(),
		Certs: certSource{serial: {Serial: serial, DER: issued.Raw}}}
	root := filepath.Join(dir, "root.pem")
	os.WriteFile(root, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: authority.Root().Raw}), 0o644)
	payload := kms.OutboxPayload{Email: "alice@example.com", Serial: serial, NotAfter: issued.NotAfter,
		Reason: "keyCompromise", Operation: "renewal", Subject: "renew"}
	kinds := []kms.OutboxKind{kms.MailCertificate, kms.MailInvitation, kms.MailReminder, kms.MailRejection,
		kms.MailLapse, kms.MailLapseAdmin, kms.MailRevocation, kms.MailUndeliverable}
	for i, kind := range kinds {
		msg, err := r.Render(context.Background(), kms.OutboxMessage{ID: int64(i + 1), Kind: kind, To: "alice@example.com",
			MessageID: "<m" + string(kind) + "@example.com>", InReplyTo: "<req@example.com>", Payload: payload})
		if err != nil {
			t.Fatalf("%s: %v", kind, err)
		}
		eml := filepath.Join(dir, string(kind)+".eml")
		os.WriteFile(eml, msg, 0o600)
		out, err := exec.Command("openssl", "smime", "-verify", "-in", eml, "-CAfile", root, "-purpose", "smimesign").CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Verification successful") {
			t.Fatalf("%s: openssl smime -verify: %v\n%s", kind, err, out)
		}
		if kind != kms.MailCertificate {
			continue
		}
		certs := filepath.Join(dir, "certs.pem")
		if out, err := exec.Command("openssl", "smime", "-pk7out", "-in", eml, "-out", filepath.Join(dir, "sig.p7")).CombinedOutput(); err != nil {
			t.Fatalf("pk7out: %v\n%s", err, out)
		}
		if out, err := exec.Command("openssl", "pkcs7", "-print_certs", "-in", filepath.Join(dir, "sig.p7"), "-out", certs).CombinedOutput(); err != nil {
			t.Fatalf("print_certs: %v\n%s", err, out)
		}
		got, _ := os.ReadFile(certs)
		if !strings.Contains(string(got), "alice@example.com") {
			t.Fatalf("the certificate reply's signature does not carry the new certificate:\n%s", got)
		}
	}
}

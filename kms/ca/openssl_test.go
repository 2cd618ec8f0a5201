package ca

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsmail/kms/policy"
)

// The OpenSSL tests check kms's output with an independent implementation.
// CI installs openssl; elsewhere they skip when it is missing.

func needOpenSSL(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not in PATH")
	}
}

// openssl runs the openssl command and returns its combined output.
func openssl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command("openssl", args...).CombinedOutput()
	return string(out), err
}

// mustOpenSSL runs openssl and fails the test if it exits non-zero.
func mustOpenSSL(t *testing.T, args ...string) string {
	t.Helper()
	out, err := openssl(t, args...)
	if err != nil {
		t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func writePEM(t *testing.T, dir, name string, typ string, ders ...[]byte) string {
	t.Helper()
	var b []byte
	for _, der := range ders {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})...)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestOpenSSLVerify has openssl parse every certificate and verify each
// subscriber certificate for S/MIME signing up to the root.
func TestOpenSSLVerify(t *testing.T) {
	needOpenSSL(t)
	for _, a := range []*Authority{
		sharedCA(t, policy.RSA4096, policy.RSA2048, localBase),
		sharedCA(t, policy.P256, policy.P256, publicBase),
	} {
		dir := t.TempDir()
		root := writePEM(t, dir, "root.pem", "CERTIFICATE", a.Root().Raw)
		issuer := writePEM(t, dir, "issuer.pem", "CERTIFICATE", a.Issuer().Raw)
		kms, _ := a.KMS()
		leaves := map[string][]byte{"kms": kms.Raw}
		for kt, key := range subscriberKeys(t) {
			leaves[string(kt)] = issue(t, a, "alice@example.com", key.Public())
		}
		for _, f := range []string{root, issuer} {
			mustOpenSSL(t, "x509", "-noout", "-text", "-in", f)
		}
		for name, der := range leaves {
			leaf := writePEM(t, dir, name+".pem", "CERTIFICATE", der)
			text := mustOpenSSL(t, "x509", "-noout", "-text", "-in", leaf)
			wants := []string{"E-mail Protection", "2.23.140.1.5.1.3", a.CRLURL()}
			if a.IssuerURL() != "" {
				wants = append(wants, "CA Issuers - URI:"+a.IssuerURL())
			} else if strings.Contains(text, "CA Issuers") {
				t.Errorf("%s: AIA present without a public URL", name)
			}
			for _, want := range wants {
				if !strings.Contains(text, want) {
					t.Errorf("%s: openssl x509 -text lacks %q:\n%s", name, want, text)
				}
			}
			out := mustOpenSSL(t, "verify", "-CAfile", root, "-untrusted", issuer, "-purpose", "smimesign", leaf)
			if !strings.Contains(out, leaf+": OK") {
				t.Errorf("%s: openssl verify: %s", name, out)
			}
			if strings.HasPrefix(name, "rsa") {
				mustOpenSSL(t, "verify", "-CAfile", root, "-untrusted", issuer, "-purpose", "smimeencrypt", leaf)
			}
		}
	}
}

// TestOpenSSLCRL has openssl parse and verify a CRL, and reject a revoked
// certificate with it while accepting one that is not on it.
func TestOpenSSLCRL(t *testing.T) {
	needOpenSSL(t)
	a := fastCA(t)
	dir := t.TempDir()
	pub := subscriberKeys(t)[policy.RSA2048].Public()
	revokedDER := issue(t, a, "mallory@example.com", pub)
	goodDER := issue(t, a, "alice@example.com", pub)
	revoked, err := x509.ParseCertificate(revokedDER)
	if err != nil {
		t.Fatal(err)
	}
	der, err := a.CRL([]Revoked{
		{Serial: revoked.SerialNumber, At: testNow.Add(-60e9), Reason: ReasonKeyCompromise},
		{Serial: big.NewInt(0x2a), At: testNow.Add(-120e9), Reason: ReasonSuperseded},
	}, big.NewInt(3), testNow, testNow.AddDate(0, 0, 7))
	if err != nil {
		t.Fatal(err)
	}
	crlDER := filepath.Join(dir, "crl.der")
	if err := os.WriteFile(crlDER, der, 0o600); err != nil {
		t.Fatal(err)
	}
	text := mustOpenSSL(t, "crl", "-inform", "DER", "-in", crlDER, "-noout", "-text")
	for _, want := range []string{
		fmt.Sprintf("Serial Number: %X", revoked.SerialNumber.Bytes()), "Key Compromise",
		"Serial Number: 2A", "Superseded", "X509v3 CRL Number: \n                3",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("openssl crl -text lacks %q:\n%s", want, text)
		}
	}
	chain := writePEM(t, dir, "chain.pem", "CERTIFICATE", a.Issuer().Raw, a.Root().Raw)
	out := mustOpenSSL(t, "crl", "-inform", "DER", "-in", crlDER, "-CAfile", chain, "-noout", "-verify")
	if !strings.Contains(out, "verify OK") {
		t.Errorf("openssl crl -verify: %s", out)
	}

	root := writePEM(t, dir, "root.pem", "CERTIFICATE", a.Root().Raw)
	issuer := writePEM(t, dir, "issuer.pem", "CERTIFICATE", a.Issuer().Raw)
	crlPEM := writePEM(t, dir, "crl.pem", "X509 CRL", der)
	verify := []string{"verify", "-crl_check", "-CRLfile", crlPEM, "-CAfile", root, "-untrusted", issuer, "-purpose", "smimesign"}
	good := writePEM(t, dir, "good.pem", "CERTIFICATE", goodDER)
	mustOpenSSL(t, append(verify, good)...)
	bad := writePEM(t, dir, "revoked.pem", "CERTIFICATE", revokedDER)
	out, err = openssl(t, append(verify, bad)...)
	if err == nil || !strings.Contains(out, "certificate revoked") {
		t.Errorf("openssl verify -crl_check accepted a revoked certificate (err %v):\n%s", err, out)
	}
}

// TestOpenSSLReadsEncryptedKeys proves the key files are standard PKCS#8
// PBES2: openssl decrypts each with the passphrase to the certificate's
// public key, and refuses a wrong passphrase.
func TestOpenSSLReadsEncryptedKeys(t *testing.T) {
	needOpenSSL(t)
	dir := t.TempDir()
	pass := []byte("correct horse battery staple")
	if _, err := openCA(t, Config{Dir: dir, Passphrase: pass, KeyType: policy.RSA2048}, testNow, nil); err != nil {
		t.Fatal(err)
	}
	passFile := filepath.Join(t.TempDir(), "pass")
	wrongFile := filepath.Join(t.TempDir(), "wrong")
	if err := os.WriteFile(passFile, pass, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(wrongFile, []byte("incorrect"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"root", "issuer", "kms"} {
		key := filepath.Join(dir, name+".key")
		asn := mustOpenSSL(t, "asn1parse", "-in", key)
		for _, want := range []string{"PBES2", "PBKDF2", "hmacWithSHA256", "aes-256-cbc"} {
			if !strings.Contains(asn, want) {
				t.Errorf("%s: asn1parse lacks %s:\n%s", key, want, asn)
			}
		}
		got := mustOpenSSL(t, "pkey", "-in", key, "-passin", "file:"+passFile, "-pubout")
		want := mustOpenSSL(t, "x509", "-in", filepath.Join(dir, name+".pem"), "-noout", "-pubkey")
		if got != want {
			t.Errorf("%s: openssl pkey public key\n%s\ndiffers from the certificate's\n%s", key, got, want)
		}
		if out, err := openssl(t, "pkey", "-in", key, "-passin", "file:"+wrongFile, "-noout"); err == nil {
			t.Errorf("%s: openssl accepted a wrong passphrase:\n%s", key, out)
		}
	}
}

package ca

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kmsmail/kms/policy"
)

func TestOpenCreatesAndReopens(t *testing.T) {
	dir := t.TempDir()
	a, err := openCA(t, Config{Dir: dir}, testNow, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := openCA(t, Config{Dir: dir}, testNow.Add(time.Hour), nil)
	if err != nil {
		t.Fatal(err)
	}
	aKMS, aKey := a.KMS()
	bKMS, bKey := b.KMS()
	for _, c := range []struct {
		name string
		a, b *x509.Certificate
	}{{"root", a.Root(), b.Root()}, {"issuer", a.Issuer(), b.Issuer()}, {"kms", aKMS, bKMS}} {
		if !bytes.Equal(c.a.Raw, c.b.Raw) {
			t.Errorf("%s certificate changed on reopen", c.name)
		}
	}
	if !samePublic(aKey.Public(), bKey.Public()) {
		t.Error("KMS key changed on reopen")
	}
	if !samePublic(a.IssuerSigner().Public(), b.IssuerSigner().Public()) {
		t.Error("issuing key changed on reopen")
	}

	// The chain verifies, and the KMS certificate is an S/MIME certificate
	// for the configured address.
	roots := x509.NewCertPool()
	roots.AddCert(b.Root())
	inter := x509.NewCertPool()
	inter.AddCert(b.Issuer())
	if _, err := bKMS.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: testNow,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}}); err != nil {
		t.Errorf("KMS certificate does not verify: %v", err)
	}
	if got := bKMS.EmailAddresses; len(got) != 1 || got[0] != kmsAddress {
		t.Errorf("KMS certificate addresses = %v, want [%s]", got, kmsAddress)
	}
	if chain := b.Chain(); len(chain) != 2 || chain[0] != b.Issuer() || chain[1] != b.Root() {
		t.Errorf("Chain() = %v, want issuer then root", chain)
	}
	rest := b.ChainPEM()
	for i, want := range b.Chain() {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			t.Fatalf("ChainPEM holds %d certificates, want 2", i)
		}
		if !bytes.Equal(blk.Bytes, want.Raw) {
			t.Errorf("ChainPEM certificate %d is not %s", i, want.Subject)
		}
	}
}

func TestOpenLifetimes(t *testing.T) {
	a := sharedCA(t, policy.RSA4096, policy.RSA2048, localBase)
	for _, c := range []struct {
		name    string
		cert    *x509.Certificate
		years   int
		kt      policy.KeyType
		pathLen int
	}{
		{"root", a.Root(), 20, policy.RSA4096, 1},
		{"issuer", a.Issuer(), 5, policy.RSA2048, 0},
	} {
		if want := testNow.AddDate(c.years, 0, 0); !c.cert.NotAfter.Equal(want) {
			t.Errorf("%s notAfter = %s, want %s", c.name, c.cert.NotAfter, want)
		}
		if kt, _ := KeyTypeOf(c.cert.PublicKey); kt != c.kt {
			t.Errorf("%s key type = %s, want %s", c.name, kt, c.kt)
		}
		if !c.cert.IsCA || c.cert.MaxPathLen != c.pathLen {
			t.Errorf("%s: IsCA %v pathLen %d, want CA with pathLen %d", c.name, c.cert.IsCA, c.cert.MaxPathLen, c.pathLen)
		}
	}
	kms, _ := a.KMS()
	if want := testNow.AddDate(0, 18, 0); !kms.NotAfter.Equal(want) {
		t.Errorf("KMS notAfter = %s, want %s", kms.NotAfter, want)
	}
	if kt, _ := KeyTypeOf(kms.PublicKey); kt != policy.RSA2048 {
		t.Errorf("KMS key type = %s, want rsa2048", kt)
	}
}

func TestFileModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	keyFile := filepath.Join(t.TempDir(), "elsewhere", "issuing.key")
	if _, err := openCA(t, Config{Dir: dir, KeyFile: keyFile}, testNow, nil); err != nil {
		t.Fatal(err)
	}
	want := map[string]os.FileMode{
		dir:                              0o700 | os.ModeDir,
		filepath.Join(dir, "root.key"):   0o600,
		filepath.Join(dir, "kms.key"):    0o600,
		keyFile:                          0o600,
		filepath.Join(dir, "root.pem"):   0o644,
		filepath.Join(dir, "issuer.pem"): 0o644,
		filepath.Join(dir, "kms.pem"):    0o644,
	}
	for path, mode := range want {
		fi, err := os.Stat(path)
		if err != nil {
			t.Error(err)
			continue
		}
		if fi.Mode() != mode {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode(), mode)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "issuer.key")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("issuer.key written to the CA directory although ca.key_file is set: %v", err)
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".tmp") {
			t.Errorf("temporary file %s left behind", e.Name())
		}
	}
}

func TestPassphrase(t *testing.T) {
	dir := t.TempDir()
	log, buf := bufLog()
	if _, err := openCA(t, Config{Dir: dir, Passphrase: []byte("right")}, testNow, log); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(buf.String(), "unencrypted") {
		t.Errorf("warned about unencrypted keys although they are encrypted:\n%s", buf)
	}
	if _, err := openCA(t, Config{Dir: dir, Passphrase: []byte("right")}, testNow, nil); err != nil {
		t.Fatalf("reopen with the right passphrase: %v", err)
	}
	_, err := openCA(t, Config{Dir: dir, Passphrase: []byte("wrong")}, testNow, nil)
	if !errors.Is(err, ErrWrongPassphrase) || !strings.Contains(err.Error(), filepath.Join(dir, "issuer.key")) {
		t.Errorf("wrong passphrase: got %v, want ErrWrongPassphrase naming issuer.key", err)
	}
	_, err = openCA(t, Config{Dir: dir}, testNow, nil)
	if !errors.Is(err, ErrPassphraseRequired) || !strings.Contains(err.Error(), "passphrase_file") {
		t.Errorf("no passphrase: got %v, want ErrPassphraseRequired telling to set ca.passphrase_file", err)
	}
}

func TestUnencryptedKeysWarn(t *testing.T) {
	log, buf := bufLog()
	if _, err := openCA(t, Config{Dir: t.TempDir()}, testNow, log); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"root.key", "issuer.key", "kms.key"} {
		if !strings.Contains(buf.String(), "unencrypted") || !strings.Contains(buf.String(), name) {
			t.Errorf("no warning about unencrypted %s in the log:\n%s", name, buf)
		}
	}
}

func TestKeyPermissionsRefused(t *testing.T) {
	dir := t.TempDir()
	if _, err := openCA(t, Config{Dir: dir}, testNow, nil); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(dir, "issuer.key")
	if err := os.Chmod(key, 0o640); err != nil {
		t.Fatal(err)
	}
	_, err := openCA(t, Config{Dir: dir}, testNow, nil)
	if !errors.Is(err, ErrKeyPermissions) || !strings.Contains(err.Error(), "chmod 600 "+key) {
		t.Errorf("group-readable key: got %v, want ErrKeyPermissions with the chmod fix", err)
	}
}

// TestRootKeyOffline: once the issuing CA exists, kms runs without the root
// key, so an administrator can keep it offline.
func TestRootKeyOffline(t *testing.T) {
	dir := t.TempDir()
	if _, err := openCA(t, Config{Dir: dir}, testNow, nil); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, "root.key"), filepath.Join(t.TempDir(), "root.key")); err != nil {
		t.Fatal(err)
	}
	if _, err := openCA(t, Config{Dir: dir}, testNow, nil); err != nil {
		t.Fatalf("reopen without root.key: %v", err)
	}
	// Without the issuing CA it must be recreated, which needs the root key.
	for _, f := range []string{"issuer.pem", "issuer.key"} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := openCA(t, Config{Dir: dir}, testNow, nil); !errors.Is(err, ErrNoKey) {
		t.Errorf("recreate issuing CA without root key: got %v, want ErrNoKey", err)
	}
}

func TestOpenDamaged(t *testing.T) {
	cases := []struct {
		name  string
		spoil func(t *testing.T, dir string)
	}{
		{"root.pem missing", func(t *testing.T, dir string) {
			must(t, os.Remove(filepath.Join(dir, "root.pem")))
		}},
		{"kms.key replaced", func(t *testing.T, dir string) {
			must(t, os.Remove(filepath.Join(dir, "kms.key")))
			if _, err := (&FileKeys{Dir: dir, Log: quietLog()}).Generate("kms", policy.P256); err != nil {
				t.Fatal(err)
			}
		}},
		{"issuer.pem from another CA", func(t *testing.T, dir string) {
			other := sharedCA(t, policy.P256, policy.P256, localBase)
			must(t, os.WriteFile(filepath.Join(dir, "issuer.pem"), certsPEM(other.Issuer()), 0o644))
		}},
		{"issuer.pem garbage", func(t *testing.T, dir string) {
			must(t, os.WriteFile(filepath.Join(dir, "issuer.pem"), []byte("not a certificate"), 0o644))
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			if _, err := openCA(t, Config{Dir: dir}, testNow, nil); err != nil {
				t.Fatal(err)
			}
			c.spoil(t, dir)
			_, err := openCA(t, Config{Dir: dir}, testNow, nil)
			if !errors.Is(err, ErrCADamaged) {
				t.Errorf("got %v, want ErrCADamaged", err)
			}
		})
	}
}

// TestKMSRenewal walks the KMS certificate through its life: kept until 30
// days before expiry, then renewed with the same key; renewed at once when
// the address or the URLs change.
func TestKMSRenewal(t *testing.T) {
	dir := t.TempDir()
	a, err := openCA(t, Config{Dir: dir}, testNow, nil)
	if err != nil {
		t.Fatal(err)
	}
	first, key := a.KMS()
	steps := []struct {
		name    string
		cfg     Config
		at      time.Time
		renewed bool
	}{
		{"a day later", Config{Dir: dir}, testNow.AddDate(0, 0, 1), false},
		{"31 days before expiry", Config{Dir: dir}, first.NotAfter.AddDate(0, 0, -31), false},
		{"29 days before expiry", Config{Dir: dir}, first.NotAfter.AddDate(0, 0, -29), true},
		{"same day again", Config{Dir: dir}, first.NotAfter.AddDate(0, 0, -29), false},
		{"address changed", Config{Dir: dir, KMSAddress: "keys@example.org"}, first.NotAfter.AddDate(0, 0, -28), true},
		{"public URL set", Config{Dir: dir, KMSAddress: "keys@example.org", BaseURL: "http://pki.example.org"}, first.NotAfter.AddDate(0, 0, -28), true},
	}
	prev := first
	for _, s := range steps {
		log, buf := bufLog()
		b, err := openCA(t, s.cfg, s.at, log)
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		cur, curKey := b.KMS()
		if renewed := !bytes.Equal(cur.Raw, prev.Raw); renewed != s.renewed {
			t.Fatalf("%s: renewed = %v, want %v\n%s", s.name, renewed, s.renewed, buf)
		}
		if !samePublic(curKey.Public(), key.Public()) {
			t.Errorf("%s: KMS key changed", s.name)
		}
		if s.renewed {
			if !strings.Contains(buf.String(), "renewing the KMS certificate") {
				t.Errorf("%s: renewal not logged:\n%s", s.name, buf)
			}
			if !cur.NotBefore.Before(s.at) || cur.NotAfter.Before(s.at.AddDate(0, 17, 0)) {
				t.Errorf("%s: renewed certificate valid %s to %s", s.name, cur.NotBefore, cur.NotAfter)
			}
			all := b.KMSCertificates()
			if len(all) < 2 || !bytes.Equal(all[0].Raw, cur.Raw) || !bytes.Equal(all[1].Raw, prev.Raw) {
				t.Errorf("%s: KMSCertificates does not list the new then the previous certificate", s.name)
			}
		}
		prev = cur
	}
	if got := prev.EmailAddresses[0]; got != "keys@example.org" {
		t.Errorf("KMS address = %s after the change", got)
	}
	if got := prev.CRLDistributionPoints[0]; got != "http://pki.example.org/crl" {
		t.Errorf("KMS CRL DP = %s after the URL change", got)
	}
}

// TestIssuerExpiry: an expired issuing CA stops Open with advice; moving
// issuer.pem aside makes Open certify the issuing key again with the root,
// and the KMS certificate follows the new issuing CA.
func TestIssuerExpiry(t *testing.T) {
	dir := t.TempDir()
	a, err := openCA(t, Config{Dir: dir}, testNow, nil)
	if err != nil {
		t.Fatal(err)
	}
	late := a.Issuer().NotAfter.AddDate(0, 0, 1)
	log, buf := bufLog()
	if _, err := openCA(t, Config{Dir: dir}, a.Issuer().NotAfter.AddDate(0, -6, 0), log); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(buf.String(), "issuing CA expires soon") {
		t.Errorf("no warning six months before the issuing CA expires:\n%s", buf)
	}
	_, err = openCA(t, Config{Dir: dir}, late, nil)
	if !errors.Is(err, ErrIssuerExpired) || !strings.Contains(err.Error(), "move "+filepath.Join(dir, "issuer.pem")+" aside") {
		t.Fatalf("expired issuing CA: got %v, want ErrIssuerExpired with advice", err)
	}
	must(t, os.Rename(filepath.Join(dir, "issuer.pem"), filepath.Join(dir, "issuer.pem.old")))
	b, err := openCA(t, Config{Dir: dir}, late, nil)
	if err != nil {
		t.Fatalf("reopen after moving issuer.pem aside: %v", err)
	}
	if !b.Issuer().NotAfter.After(late) || !samePublic(b.Issuer().PublicKey, a.Issuer().PublicKey) {
		t.Errorf("new issuing CA valid until %s (key kept: %v)", b.Issuer().NotAfter, samePublic(b.Issuer().PublicKey, a.Issuer().PublicKey))
	}
	kms, _ := b.KMS()
	if err := kms.CheckSignatureFrom(b.Issuer()); err != nil || !kms.NotAfter.After(late) {
		t.Errorf("KMS certificate not renewed under the new issuing CA: %v, valid until %s", err, kms.NotAfter)
	}
	if n := len(b.KMSCertificates()); n != 1 {
		t.Errorf("KMSCertificates lists %d certificates; expired ones should be dropped", n)
	}
}

func TestOpenConfigErrors(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{BaseURL: localBase, KMSAddress: kmsAddress}, "data_dir"},
		{Config{Dir: dir, BaseURL: localBase, KMSAddress: "not an address"}, "address"},
		{Config{Dir: dir, BaseURL: localBase}, "address"},
		{Config{Dir: dir, BaseURL: localBase, KMSAddress: kmsAddress, KeyType: "rsa1024"}, "rsa1024"},
		{Config{Dir: dir, BaseURL: "ftp://example.com", KMSAddress: kmsAddress}, "public_url"},
		{Config{Dir: dir, BaseURL: "", KMSAddress: kmsAddress}, "public_url"},
		{Config{Dir: dir, BaseURL: localBase, KMSAddress: kmsAddress, Organization: strings.Repeat("x", 41)}, "organization"},
	} {
		_, err := Open(c.cfg, testNow, quietLog())
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Open(%+v) = %v, want an error naming %q", c.cfg, err, c.want)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("a refused configuration left files behind: %v", entries)
	}
}

func TestCertURLs(t *testing.T) {
	for _, c := range []struct {
		base, crl, aia string
		err            bool
	}{
		{base: "http://127.0.0.1:8025", crl: "http://127.0.0.1:8025/crl", aia: "http://127.0.0.1:8025/issuer.cer"},
		{base: "https://pki.example.com", crl: "http://pki.example.com/crl", aia: "http://pki.example.com/issuer.cer"},
		{base: "https://pki.example.com:443/kms/", crl: "http://pki.example.com/kms/crl", aia: "http://pki.example.com/kms/issuer.cer"},
		{base: "HTTP://pki.example.com/", crl: "http://pki.example.com/crl", aia: "http://pki.example.com/issuer.cer"},
		{base: "https://[2001:db8::1]/", crl: "http://[2001:db8::1]/crl", aia: "http://[2001:db8::1]/issuer.cer"},
		{base: "https://pki.example.com:8443", err: true},
		{base: "https://user:pw@pki.example.com", err: true},
		{base: "http://pki.example.com/?x=1", err: true},
		{base: "ldap://pki.example.com", err: true},
		{base: "pki.example.com", err: true},
	} {
		crl, aia, err := certURLs(c.base)
		if (err != nil) != c.err || crl != c.crl || aia != c.aia {
			t.Errorf("certURLs(%q) = %q, %q, %v; want %q, %q, error %v", c.base, crl, aia, err, c.crl, c.aia, c.err)
		}
	}
}

func samePublic(a, b crypto.PublicKey) bool {
	k, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && k.Equal(b)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

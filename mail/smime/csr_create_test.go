package smime

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCreateCSR: what CreateCSR writes, ParseCSR and openssl read back,
// with the code, for RSA and ECDSA keys.
func TestCreateCSR(t *testing.T) {
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for name, key := range map[string]crypto.Signer{"rsa": rsaKey, "ecdsa": ecKey} {
		for _, code := range []string{"7NTMW-HFCVH-XWQY1-2CE8G-D2FBW-0S58H", ""} {
			der, err := CreateCSR(key, "alice@example.com", code)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			csr, err := ParseCSR(der)
			if err != nil {
				t.Fatalf("%s: ParseCSR: %v", name, err)
			}
			if csr.ChallengePassword != code || csr.Request.Subject.CommonName != "alice@example.com" {
				t.Fatalf("%s: read back code %q, subject %v", name, csr.ChallengePassword, csr.Request.Subject)
			}
			if _, err := exec.LookPath("openssl"); err != nil || code == "" {
				continue
			}
			f := filepath.Join(t.TempDir(), "req.pem")
			os.WriteFile(f, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 0o600)
			out, err := exec.Command("openssl", "req", "-in", f, "-noout", "-verify", "-text").CombinedOutput()
			if err != nil || !strings.Contains(string(out), code) {
				t.Fatalf("%s: openssl req -verify: %v\n%s", name, err, out)
			}
		}
	}
}

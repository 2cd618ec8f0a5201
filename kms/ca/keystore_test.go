package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsmail/kms/policy"
)

// fastIterations keeps PBKDF2 cheap in tests that do not test its cost.
const fastIterations = 1000

func TestFileKeysRoundTrip(t *testing.T) {
	for _, pass := range []string{"", "s3cret"} {
		for _, kt := range []policy.KeyType{policy.RSA2048, policy.P256, policy.P384} {
			k := &FileKeys{Dir: t.TempDir(), Passphrase: []byte(pass), Iterations: fastIterations, Log: quietLog()}
			made, err := k.Generate("test", kt)
			if err != nil {
				t.Fatal(err)
			}
			read, err := k.Signer("test")
			if err != nil {
				t.Fatalf("%s pass=%q: %v", kt, pass, err)
			}
			if !samePublic(made.Public(), read.Public()) {
				t.Errorf("%s pass=%q: key read back differs", kt, pass)
			}
			data, _ := os.ReadFile(k.Path("test"))
			encrypted := strings.Contains(string(data), "ENCRYPTED PRIVATE KEY")
			if encrypted != (pass != "") {
				t.Errorf("%s pass=%q: file encrypted = %v", kt, pass, encrypted)
			}
			if _, err := k.Generate("test", kt); !errors.Is(err, ErrKeyExists) {
				t.Errorf("Generate over an existing key: got %v, want ErrKeyExists", err)
			}
		}
	}
}

func TestFileKeysErrors(t *testing.T) {
	dir := t.TempDir()
	k := &FileKeys{Dir: dir, Passphrase: []byte("pw"), Iterations: fastIterations, Log: quietLog()}
	if _, err := k.Signer("absent"); !errors.Is(err, ErrNoKey) {
		t.Errorf("missing key: got %v, want ErrNoKey", err)
	}
	if _, err := k.Signer("../etc/passwd"); err == nil || errors.Is(err, ErrNoKey) {
		t.Errorf("path-like key name accepted: %v", err)
	}
	if _, err := k.Generate("good", policy.P256); err != nil {
		t.Fatal(err)
	}
	good, _ := os.ReadFile(k.Path("good"))
	block, _ := pem.Decode(good)

	write := func(name string, data []byte) {
		t.Helper()
		must(t, os.WriteFile(filepath.Join(dir, name+".key"), data, 0o600))
	}
	// Damaged ciphertext lengths make crypto/cipher panic inside the pkcs8
	// package; the key store must turn that into an error.
	var epki struct {
		Algorithm pkix.AlgorithmIdentifier
		Data      []byte
	}
	if _, err := asn1.Unmarshal(block.Bytes, &epki); err != nil {
		t.Fatal(err)
	}
	epki.Data = epki.Data[:len(epki.Data)-5]
	truncated, err := asn1.Marshal(epki)
	must(t, err)
	write("truncated", pem.EncodeToMemory(&pem.Block{Type: block.Type, Bytes: truncated}))
	write("wrongsize", pem.EncodeToMemory(&pem.Block{Type: block.Type, Bytes: block.Bytes[:len(block.Bytes)-5]}))
	write("notpem", []byte("hello"))
	write("cert", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{1, 2, 3}}))
	write("legacy", []byte("-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00112233445566778899AABBCCDDEEFF\n\nAAAA\n-----END RSA PRIVATE KEY-----\n"))
	for _, name := range []string{"truncated", "wrongsize", "notpem", "cert", "legacy"} {
		_, err := k.Signer(name)
		if err == nil || !strings.Contains(err.Error(), k.Path(name)) {
			t.Errorf("%s: got %v, want an error naming the file", name, err)
		}
	}

	// Keys an administrator brings in the traditional forms are accepted.
	rsaKey := subscriberKeys(t)[policy.RSA2048].(*rsa.PrivateKey)
	ecKey := subscriberKeys(t)[policy.P256].(*ecdsa.PrivateKey)
	ecDER, err := x509.MarshalECPrivateKey(ecKey)
	must(t, err)
	write("pkcs1", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)}))
	write("sec1", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER}))
	for name, want := range map[string]crypto.PublicKey{"pkcs1": rsaKey.Public(), "sec1": ecKey.Public()} {
		got, err := k.Signer(name)
		if err != nil || !samePublic(got.Public(), want) {
			t.Errorf("%s: got %v, want the key", name, err)
		}
	}
}

package smime

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"path/filepath"
	"testing"
)

// TestOpenSSLEncryptVariants decrypts what `openssl cms -encrypt` writes
// with each content cipher and key transport a mail client may use.
func TestOpenSSLEncryptVariants(t *testing.T) {
	needTool(t, "openssl")
	g := loadGoldenPKI(t)
	dir := t.TempDir()
	in := writeFile(t, filepath.Join(dir, "in.txt"), testBody)
	kmsPEM := filepath.Join(pkiDir, "kms.pem")
	for _, v := range []struct {
		name string
		args []string
	}{
		{"AES-256-CBC, PKCS#1 v1.5", []string{"-aes-256-cbc"}},
		{"AES-128-CBC, OAEP SHA-256", []string{"-aes-128-cbc", "-recip", kmsPEM, "-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256"}},
		{"3DES", []string{"-des3"}},
		{"AES-256-GCM, streamed BER", []string{"-aes-256-gcm", "-stream", "-indef"}},
		{"AES-128-GCM, OAEP SHA-1", []string{"-aes-128-gcm", "-recip", kmsPEM, "-keyopt", "rsa_padding_mode:oaep"}},
	} {
		t.Run(v.name, func(t *testing.T) {
			args := append([]string{"cms", "-encrypt", "-binary", "-outform", "DER", "-in", in}, v.args...)
			if !bytes.Contains([]byte(v.name), []byte("OAEP")) {
				args = append(args, kmsPEM)
			}
			env := runTool(t, nil, nil, "openssl", args...)
			got, err := Decrypt(env, g.kms.cert, g.kms.key.(crypto.Decrypter))
			if err != nil {
				t.Fatalf("Decrypt: %v", err)
			}
			if !bytes.Equal(got, testBody) {
				t.Errorf("plaintext %q", got)
			}
		})
	}
}

// TestEncryptReadByOpenSSL: what Encrypt writes, OpenSSL decrypts.
func TestEncryptReadByOpenSSL(t *testing.T) {
	needTool(t, "openssl")
	g := loadGoldenPKI(t)
	env, err := Encrypt(testBody, []*x509.Certificate{g.kms.cert})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	f := writeFile(t, filepath.Join(dir, "env.der"), env)
	out := runTool(t, nil, nil, "openssl", "cms", "-decrypt", "-binary", "-inform", "DER", "-in", f,
		"-recip", filepath.Join(pkiDir, "kms.pem"), "-inkey", filepath.Join(pkiDir, "kms.key"))
	if !bytes.Equal(out, testBody) {
		t.Errorf("openssl decrypted %q", out)
	}
	info := runTool(t, nil, nil, "openssl", "cms", "-cmsout", "-print", "-inform", "DER", "-in", f)
	if !bytes.Contains(info, []byte("aes-256-cbc")) {
		t.Errorf("content cipher is not AES-256-CBC:\n%s", info)
	}
}

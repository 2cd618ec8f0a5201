package certder

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// TestCertificateFieldsWithoutParsing: SerialHex and PublicKey read
// one field of a DER certificate without parsing it, and must agree with
// crypto/x509 on every certificate of testdata's test PKI (RSA and EC, CAs
// and users), on certificates OpenSSL makes (when it is installed, as in
// CI), on a v1 certificate, which has no version field, and on a serial
// with a leading zero byte; what they cannot read gives "" or an error,
// never a wrong value.
func TestCertificateFieldsWithoutParsing(t *testing.T) {
	files, err := filepath.Glob("../../testdata/smime/pki/*.pem")
	if err != nil || len(files) == 0 {
		t.Fatalf("no certificates in testdata: %v", err)
	}
	var ders [][]byte
	for _, f := range files {
		rest, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for {
			var b *pem.Block
			if b, rest = pem.Decode(rest); b == nil {
				break
			}
			if b.Type == "CERTIFICATE" {
				ders = append(ders, b.Bytes)
			}
		}
	}
	if _, err := exec.LookPath("openssl"); err == nil {
		dir := t.TempDir()
		for i, args := range [][]string{
			{"-newkey", "rsa:2048", "-set_serial", "0x7fffffffffffffffffffffffffffffffffffffff"},
			{"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384", "-set_serial", "1"},
		} {
			out := filepath.Join(dir, fmt.Sprint(i))
			args = append([]string{"req", "-x509", "-nodes", "-subj", "/CN=openssl@example.com", "-days", "1",
				"-keyout", out + ".key", "-outform", "DER", "-out", out}, args...)
			if msg, err := exec.Command("openssl", args...).CombinedOutput(); err != nil {
				t.Fatalf("openssl %v: %v\n%s", args, err, msg)
			}
			der, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			ders = append(ders, der)
		}
	}
	// A v1 certificate: no [0] version field before the serial; and a
	// serial with a leading zero byte, which the hex form drops.
	ders = append(ders, buildCert(t, ders[0], false, []byte{0x01, 0x02, 0x03}),
		buildCert(t, ders[0], true, []byte{0x00, 0x80, 0x00, 0x01}))
	for _, der := range ders {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		if got := SerialHex(der); got != fmt.Sprintf("%x", c.SerialNumber) {
			t.Errorf("%s: SerialHex = %q, crypto/x509 %q", c.Subject, got, fmt.Sprintf("%x", c.SerialNumber))
		}
		pub, err := PublicKey(der)
		if err != nil {
			t.Errorf("%s: PublicKey: %v", c.Subject, err)
		} else if k, ok := pub.(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(c.PublicKey) {
			t.Errorf("%s: PublicKey gave another key than crypto/x509", c.Subject)
		}
	}
	for name, der := range map[string][]byte{
		"empty":       nil,
		"garbage":     []byte("not a certificate"),
		"truncated":   ders[0][:40],
		"negative":    buildCert(t, ders[0], true, []byte{0xff, 0x01}),
		"not an int":  bytes.Replace(ders[0], []byte{0x02}, []byte{0x04}, 1),
		"only header": {0x30, 0x03, 0x30, 0x01, 0x00},
	} {
		if got := SerialHex(der); got != "" {
			t.Errorf("%s: SerialHex = %q; want \"\"", name, got)
		}
	}
	if _, err := PublicKey(ders[0][:40]); err == nil {
		t.Error("PublicKey of a truncated certificate: no error")
	}
}

// buildCert assembles a certificate from the parts of template (its issuer,
// subject and key), with the version field only if v3 and the given serial
// INTEGER content bytes. Its signature is not valid: parsing does not check
// it, and nothing here verifies it.
func buildCert(t *testing.T, template []byte, v3 bool, serial []byte) []byte {
	t.Helper()
	c, err := x509.ParseCertificate(template)
	if err != nil {
		t.Fatal(err)
	}
	ecdsaWithSHA256 := asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(cert *cryptobyte.Builder) {
		cert.AddASN1(cbasn1.SEQUENCE, func(tbs *cryptobyte.Builder) {
			if v3 {
				tbs.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(v *cryptobyte.Builder) { v.AddASN1Int64(2) })
			}
			tbs.AddASN1(cbasn1.INTEGER, func(s *cryptobyte.Builder) { s.AddBytes(serial) })
			tbs.AddASN1(cbasn1.SEQUENCE, func(alg *cryptobyte.Builder) { alg.AddASN1ObjectIdentifier(ecdsaWithSHA256) })
			tbs.AddBytes(c.RawIssuer)
			tbs.AddASN1(cbasn1.SEQUENCE, func(v *cryptobyte.Builder) {
				v.AddASN1UTCTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
				v.AddASN1UTCTime(time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC))
			})
			tbs.AddBytes(c.RawSubject)
			tbs.AddBytes(c.RawSubjectPublicKeyInfo)
		})
		cert.AddASN1(cbasn1.SEQUENCE, func(alg *cryptobyte.Builder) { alg.AddASN1ObjectIdentifier(ecdsaWithSHA256) })
		cert.AddASN1BitString([]byte{0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01})
	})
	return b.BytesOrPanic()
}

// FuzzCertificateFields: whatever the bytes, SerialHex and PublicKey
// do not panic, and on anything crypto/x509 accepts as a certificate they
// give what it gives. (On what it refuses they may still read a serial:
// the lookup then compares the whole DER with the stored one.)
func FuzzCertificateFields(f *testing.F) {
	files, _ := filepath.Glob("../../testdata/smime/pki/*.pem")
	for _, name := range files {
		rest, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		for b, rest := pem.Decode(rest); b != nil; b, rest = pem.Decode(rest) {
			f.Add(b.Bytes)
		}
	}
	f.Fuzz(func(t *testing.T, der []byte) {
		serial := SerialHex(der)
		pub, pubErr := PublicKey(der)
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return
		}
		if serial != fmt.Sprintf("%x", c.SerialNumber) {
			t.Errorf("SerialHex = %q, crypto/x509 %q", serial, fmt.Sprintf("%x", c.SerialNumber))
		}
		if pubErr != nil {
			t.Fatalf("PublicKey: %v, but crypto/x509 parses the certificate", pubErr)
		}
		if k, ok := pub.(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(c.PublicKey) {
			t.Errorf("PublicKey gave another key than crypto/x509")
		}
	})
}

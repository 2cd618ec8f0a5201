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
	ders := pkiCertificates(t)
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
		if _, err := x509.ParseCertificate(der); err != nil {
			t.Fatalf("a test certificate crypto/x509 refuses: %v", err)
		}
		if err := agreesWithX509(der); err != nil {
			t.Error(err)
		}
	}
	for name, der := range map[string][]byte{
		"empty":     nil,
		"garbage":   []byte("not a certificate"),
		"truncated": ders[0][:40],
		"negative":  buildCert(t, ders[0], true, []byte{0xff, 0x01}),
		// The serial (INTEGER 1, the first 02 01 01) as an OCTET STRING.
		"not an int":  bytes.Replace(buildCert(t, ders[0], true, []byte{0x01}), []byte{0x02, 0x01, 0x01}, []byte{0x04, 0x01, 0x01}, 1),
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
	for _, der := range pkiCertificates(f) {
		f.Add(der)
	}
	f.Fuzz(func(t *testing.T, der []byte) {
		if err := agreesWithX509(der); err != nil {
			t.Error(err)
		}
	})
}

// agreesWithX509 says how SerialHex or PublicKey differ from crypto/x509 on
// der, if crypto/x509 parses it as a certificate; nil if they agree or it
// does not. Either reader is still run on input crypto/x509 refuses, to
// catch a panic.
func agreesWithX509(der []byte) error {
	serial := SerialHex(der)
	pub, pubErr := PublicKey(der)
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return nil
	}
	if want := fmt.Sprintf("%x", c.SerialNumber); serial != want {
		return fmt.Errorf("%s: SerialHex = %q, crypto/x509 %q", c.Subject, serial, want)
	}
	if c.PublicKey == nil {
		// crypto/x509 parses a certificate whose key algorithm it does not
		// know, leaving its key nil; PublicKey, like x509.ParsePKIXPublicKey,
		// refuses such a key (kms certifies none).
		if pubErr == nil {
			return fmt.Errorf("%s: PublicKey = %T for a key algorithm crypto/x509 does not know", c.Subject, pub)
		}
		return nil
	}
	if pubErr != nil {
		return fmt.Errorf("%s: PublicKey: %v, but crypto/x509 parses the certificate and its key", c.Subject, pubErr)
	}
	if k, ok := pub.(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(c.PublicKey) {
		return fmt.Errorf("%s: PublicKey gave another key than crypto/x509", c.Subject)
	}
	return nil
}

// pkiCertificates returns the DER of every certificate in testdata's test
// PKI.
func pkiCertificates(tb testing.TB) [][]byte {
	tb.Helper()
	files, err := filepath.Glob("../../testdata/smime/pki/*.pem")
	if err != nil || len(files) == 0 {
		tb.Fatalf("no certificates in testdata: %v", err)
	}
	var ders [][]byte
	for _, name := range files {
		rest, err := os.ReadFile(name)
		if err != nil {
			tb.Fatal(err)
		}
		for b, rest := pem.Decode(rest); b != nil; b, rest = pem.Decode(rest) {
			if b.Type == "CERTIFICATE" {
				ders = append(ders, b.Bytes)
			}
		}
	}
	return ders
}

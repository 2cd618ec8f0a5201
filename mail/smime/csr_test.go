package smime

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"strings"
	"testing"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// makeCSR builds and signs (ECDSA P-256) a PKCS#10 request whose
// attributes are given raw, to test encodings crypto/x509 cannot write.
func makeCSR(t testing.TB, key crypto.Signer, attrs func(*cryptobyte.Builder)) []byte {
	t.Helper()
	name, _ := asn1.Marshal(pkix.Name{CommonName: "csr test"}.ToRDNSequence())
	spki, err := x509.MarshalPKIXPublicKey(key.Public())
	if err != nil {
		t.Fatal(err)
	}
	var tb cryptobyte.Builder
	tb.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1Int64(0)
		b.AddBytes(name)
		b.AddBytes(spki)
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), attrs)
	})
	tbs := tb.BytesOrPanic()
	sig, err := key.Sign(rand.Reader, hashOf(crypto.SHA256, tbs), crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddBytes(tbs)
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { b.AddASN1ObjectIdentifier(oidECDSAWithSHA256) })
		b.AddASN1BitString(sig)
	})
	return b.BytesOrPanic()
}

func challengeAttr(tag cbasn1.Tag, values ...string) func(*cryptobyte.Builder) {
	return func(b *cryptobyte.Builder) {
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddASN1ObjectIdentifier(oidChallengePassword)
			b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
				for _, v := range values {
					b.AddASN1(tag, func(b *cryptobyte.Builder) { b.AddBytes([]byte(v)) })
				}
			})
		})
	}
}

func TestParseCSR(t *testing.T) {
	key := newKey(t, "ec")
	both := func(fs ...func(*cryptobyte.Builder)) func(*cryptobyte.Builder) {
		return func(b *cryptobyte.Builder) {
			for _, f := range fs {
				f(b)
			}
		}
	}
	tests := []struct {
		name  string
		attrs func(*cryptobyte.Builder)
		want  string
		err   error
	}{
		{"PrintableString", challengeAttr(cbasn1.PrintableString, "ABC-123"), "ABC-123", nil},
		{"UTF8String", challengeAttr(cbasn1.UTF8String, "código-7"), "código-7", nil},
		{"IA5String", challengeAttr(cbasn1.IA5String, "abc@123"), "abc@123", nil},
		{"no attributes", func(*cryptobyte.Builder) {}, "", nil},
		{"BMPString refused", challengeAttr(cbasn1.Tag(30), "\x00A"), "", ErrBadCSR},
		{"two values", challengeAttr(cbasn1.UTF8String, "a", "b"), "", ErrBadCSR},
		{"two attributes", both(challengeAttr(cbasn1.UTF8String, "a"), challengeAttr(cbasn1.UTF8String, "b")), "", ErrBadCSR},
		{"invalid UTF-8", challengeAttr(cbasn1.UTF8String, "\xff\xfe"), "", ErrBadCSR},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseCSR(makeCSR(t, key, tt.attrs))
			if !errors.Is(err, tt.err) || (err == nil) != (tt.err == nil) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			if err == nil && c.ChallengePassword != tt.want {
				t.Errorf("ChallengePassword = %q, want %q", c.ChallengePassword, tt.want)
			}
		})
	}
}

func TestParseCSRBadSignature(t *testing.T) {
	der := makeCSR(t, newKey(t, "ec"), challengeAttr(cbasn1.PrintableString, "X"))
	der[len(der)-3] ^= 0x55 // inside the signature
	if _, err := ParseCSR(der); !errors.Is(err, ErrBadCSR) {
		t.Fatalf("tampered CSR: %v, want ErrBadCSR", err)
	}
	if _, err := ParseCSR([]byte("junk")); !errors.Is(err, ErrBadCSR) {
		t.Fatalf("junk: %v", err)
	}
}

func TestParseCSRGoldenOpenSSL(t *testing.T) {
	der, ok := pemFirst(readGolden(t, "openssl-req-challenge.csr"))
	if !ok {
		t.Fatal("no PEM block")
	}
	c, err := ParseCSR(der)
	if err != nil {
		t.Fatal(err)
	}
	if c.ChallengePassword != daveCode || c.Request.Subject.CommonName != "Dave Example" {
		t.Errorf("code %q subject %s", c.ChallengePassword, c.Request.Subject)
	}
}

func TestCSRsFromPEMSkipsQuotedAndOtherBlocks(t *testing.T) {
	der, _ := pemFirst(readGolden(t, "openssl-req-challenge.csr"))
	block := "-----BEGIN CERTIFICATE REQUEST-----\n" + wrap64(b64(der)) + "-----END CERTIFICATE REQUEST-----\n"
	quoted := ""
	for _, l := range splitLines(block) {
		quoted += "> " + l + "\n"
	}
	text := "Hello\n" + quoted + "\n-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n" +
		"-----BEGIN NEW CERTIFICATE REQUEST-----\n" + wrap64(b64(der)) + "-----END NEW CERTIFICATE REQUEST-----\n"
	csrs, err := csrsFromPEM([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if len(csrs) != 1 {
		t.Fatalf("found %d CSRs, want only the unquoted NEW CERTIFICATE REQUEST", len(csrs))
	}
}

func splitLines(s string) []string {
	var out []string
	for len(s) > 0 {
		i := 0
		for i < len(s) && s[i] != '\n' {
			i++
		}
		out = append(out, s[:i])
		if i < len(s) {
			i++
		}
		s = s[i:]
	}
	return out
}

// TestCSRsFromPEMHostileText: texts that made pem.Decode rescan the input
// for every BEGIN line (quadratic, minutes on a few MiB) must be read in
// one pass. The test has no timing assertion; a regression shows as a
// test timeout.
func TestCSRsFromPEMHostileText(t *testing.T) {
	for name, unit := range map[string]string{
		"BEGIN lines without END": "-----BEGIN CERTIFICATE REQUEST-----\n",
		"other BEGIN lines":       "-----BEGIN X-----\n",
		"bare BEGIN markers":      "-----BEGIN ",
	} {
		text := []byte(strings.Repeat(unit, (3<<20)/len(unit)))
		csrs, err := csrsFromPEM(text)
		if err != nil || len(csrs) != 0 {
			t.Errorf("%s: %d CSRs, %v", name, len(csrs), err)
		}
	}
	der := makeCSR(t, newKey(t, "ec"), func(*cryptobyte.Builder) {})
	block := "-----BEGIN CERTIFICATE REQUEST-----\n" + wrap64(b64(der)) + "-----END CERTIFICATE REQUEST-----\n"
	if _, err := csrsFromPEM([]byte(strings.Repeat(block, maxPEMCSRs+1))); !errors.Is(err, ErrLimit) {
		t.Errorf("%d CSR blocks: %v, want ErrLimit", maxPEMCSRs+1, err)
	}
}

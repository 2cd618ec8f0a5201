package smime

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/smallstep/pkcs7"
)

var (
	testNow  = time.Date(2027, 3, 1, 12, 0, 0, 0, time.UTC)
	testBody = []byte("Content-Type: text/plain\r\n\r\nPlease renew my certificate.\r\n")
)

func verifyOpts(p *testPKI, at time.Time) VerifyOptions {
	return VerifyOptions{Roots: p.roots(), At: at}
}

func TestSignVerifyRoundTrip(t *testing.T) {
	p := newTestPKI(t)
	for _, kind := range []string{"rsa", "ec"} {
		t.Run(kind, func(t *testing.T) {
			user := p.issue(t, "alice@example.com", kind, userOpts{})
			extra := p.issue(t, "new@example.com", "ec", userOpts{})
			signedAt := time.Date(2027, 2, 28, 9, 30, 0, 0, time.UTC)
			sig, err := SignDetached(testBody, user.signer(), []*x509.Certificate{extra.cert}, signedAt)
			if err != nil {
				t.Fatal(err)
			}
			got, err := VerifyDetached(sig, testBody, verifyOpts(p, testNow))
			if err != nil {
				t.Fatal(err)
			}
			if !got.Signer.Equal(user.cert) || !got.SigningTime.Equal(signedAt) || !bytes.Equal(got.Content, testBody) {
				t.Errorf("signer %s, signing time %v, content %q", got.Signer.Subject, got.SigningTime, got.Content)
			}
			found := false
			for _, c := range got.Certificates {
				found = found || c.Equal(extra.cert)
			}
			if !found || len(got.Certificates) != 3 {
				t.Errorf("certificate set has %d certificates, want signer, CA and the extra one", len(got.Certificates))
			}
			// Same signature, same ReplayID; a second signature of the
			// same content at another time, another ReplayID.
			again, _ := VerifyDetached(sig, testBody, verifyOpts(p, testNow))
			sig2, _ := SignDetached(testBody, user.signer(), nil, signedAt.Add(time.Second))
			other, err := VerifyDetached(sig2, testBody, verifyOpts(p, testNow))
			if err != nil {
				t.Fatal(err)
			}
			if again.ReplayID != got.ReplayID || other.ReplayID == got.ReplayID {
				t.Error("ReplayID is not stable per signature")
			}
		})
	}
}

// TestBackdatedSignatureFromExpiredCertificate is the reason this package
// checks signatures itself: the library's VerifyWithChain validates the
// chain at the signer's own signingTime, so a message signed today with a
// certificate that expired last year, but claiming an old signingTime,
// passes it. Verification here happens at the receipt time.
func TestBackdatedSignatureFromExpiredCertificate(t *testing.T) {
	p := newTestPKI(t)
	user := p.issue(t, "lapsed@example.com", "rsa", userOpts{
		notBefore: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC), notAfter: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)})
	backdated := time.Date(2025, 6, 1, 0, 0, 0, 0, time.UTC) // inside the validity
	sig, err := SignDetached(testBody, user.signer(), nil, backdated)
	if err != nil {
		t.Fatal(err)
	}

	// The hazard: the library alone accepts it.
	p7, err := pkcs7.Parse(sig)
	if err != nil {
		t.Fatal(err)
	}
	p7.Content = testBody
	if err := p7.VerifyWithChain(p.roots()); err != nil {
		t.Fatalf("expected the library's VerifyWithChain to accept the back-dated signature (the hazard this test guards), got %v", err)
	}

	// This package refuses it at the receipt time.
	_, err = VerifyDetached(sig, testBody, verifyOpts(p, testNow))
	if !errors.Is(err, ErrSignerExpired) {
		t.Fatalf("VerifyDetached = %v, want ErrSignerExpired", err)
	}
	// And accepts it when it really arrived in time.
	if _, err := VerifyDetached(sig, testBody, verifyOpts(p, backdated.Add(time.Hour))); err != nil {
		t.Fatalf("received while valid: %v", err)
	}
}

func TestVerifyRefuses(t *testing.T) {
	p := newTestPKI(t)
	good := p.issue(t, "alice@example.com", "ec", userOpts{})
	sign := func(id identity) []byte {
		t.Helper()
		sig, err := SignDetached(testBody, id.signer(), nil, testNow)
		if err != nil {
			t.Fatal(err)
		}
		return sig
	}
	goodSig := sign(good)
	certsOnly, err := CertsOnly(good.cert)
	if err != nil {
		t.Fatal(err)
	}
	tampered := bytes.Replace(testBody, []byte("renew"), []byte("revoke"), 1)
	expired := p.issue(t, "old@example.com", "ec", userOpts{notBefore: pkiStart, notAfter: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)})
	future := p.issue(t, "future@example.com", "ec", userOpts{notBefore: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), notAfter: pkiEnd})
	serverEKU := p.issue(t, "tls@example.com", "ec", userOpts{eku: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	encOnly := p.issue(t, "enc@example.com", "rsa", userOpts{keyUsage: x509.KeyUsageKeyEncipherment})
	foreign := p.issue(t, "mallory@example.com", "ec", userOpts{issuer: &p.evilRoot})
	noEKU := p.issue(t, "any@example.com", "ec", userOpts{eku: []x509.ExtKeyUsage{}})

	deep := append(bytes.Repeat([]byte{0x30, 0x80}, 5000), bytes.Repeat([]byte{0, 0}, 5000)...)
	many := []byte{0x30, 0x83, 0x03, 0x0d, 0x40}
	many = append(many, bytes.Repeat([]byte{0x05, 0x00}, 200000)...)

	tests := []struct {
		name    string
		sig     []byte
		content []byte
		opaque  bool
		at      time.Time
		want    error
	}{
		{name: "certs-only, no signer", sig: certsOnly, content: testBody, want: ErrNotSigned},
		{name: "content altered after signing", sig: goodSig, content: tampered, want: ErrBadSignature},
		{name: "signer from an unknown CA", sig: sign(foreign), content: testBody, want: ErrUntrustedSigner},
		{name: "signer expired at receipt", sig: sign(expired), content: testBody, want: ErrSignerExpired},
		{name: "signer not yet valid", sig: sign(future), content: testBody, want: ErrUntrustedSigner},
		{name: "signer EKU serverAuth only", sig: sign(serverEKU), content: testBody, want: ErrUntrustedSigner},
		{name: "signer key usage keyEncipherment only", sig: sign(encOnly), content: testBody, want: ErrUntrustedSigner},
		{name: "truncated CMS", sig: goodSig[:len(goodSig)/2], content: testBody, want: ErrMalformed},
		{name: "garbage", sig: []byte("this is not DER at all, just text"), content: testBody, want: ErrMalformed},
		{name: "empty", sig: nil, content: testBody, want: ErrMalformed},
		{name: "huge declared length", sig: []byte{0x30, 0x84, 0x7f, 0xff, 0xff, 0xff, 0x06, 0x01}, content: testBody, want: ErrMalformed},
		{name: "5-octet length", sig: []byte{0x30, 0x85, 0x01, 0, 0, 0, 0}, content: testBody, want: ErrLimit},
		{name: "deep nesting", sig: deep, content: testBody, want: ErrLimit},
		{name: "too many elements", sig: many, content: testBody, want: ErrLimit},
		{name: "larger than MaxCMSBytes", sig: make([]byte, MaxCMSBytes+1), content: testBody, want: ErrLimit},
		{name: "trailing data", sig: append(append([]byte{}, goodSig...), 0x05, 0x00), content: testBody, want: ErrMalformed},
		{name: "detached signature given as opaque", sig: goodSig, opaque: true, want: ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			at := tt.at
			if at.IsZero() {
				at = testNow
			}
			var err error
			if tt.opaque {
				_, err = VerifyOpaque(tt.sig, verifyOpts(p, at))
			} else {
				_, err = VerifyDetached(tt.sig, tt.content, verifyOpts(p, at))
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("error = %v, want %v", err, tt.want)
			}
		})
	}

	// RFC 8550 4.4.4: no EKU extension means no restriction.
	if _, err := VerifyDetached(sign(noEKU), testBody, verifyOpts(p, testNow)); err != nil {
		t.Errorf("signer without EKU: %v", err)
	}
	if _, err := VerifyDetached(goodSig, testBody, VerifyOptions{At: testNow}); err == nil || !strings.Contains(err.Error(), "Roots") {
		t.Errorf("nil Roots: %v, want an error naming Roots", err)
	}
	if _, err := VerifyDetached(goodSig, testBody, VerifyOptions{Roots: p.roots()}); err == nil || !strings.Contains(err.Error(), "At") {
		t.Errorf("zero At: %v, want an error naming At", err)
	}
}

func TestSignDetachedChecksSigner(t *testing.T) {
	p := newTestPKI(t)
	a := p.issue(t, "a@example.com", "ec", userOpts{})
	b := p.issue(t, "b@example.com", "ec", userOpts{})
	if _, err := SignDetached(testBody, Signer{Key: a.key, Cert: b.cert}, nil, testNow); err == nil {
		t.Error("a key that is not the certificate's was accepted")
	}
	if _, err := SignDetached(testBody, a.signer(), nil, time.Time{}); err == nil {
		t.Error("zero signing time was accepted")
	}
}

func TestEncryptDecrypt(t *testing.T) {
	p := newTestPKI(t)
	kms := p.issue(t, "kms@example.com", "rsa", userOpts{})
	other := p.issue(t, "other@example.com", "rsa", userOpts{})
	ec := p.issue(t, "ec@example.com", "ec", userOpts{})
	env, err := Encrypt(testBody, []*x509.Certificate{kms.cert})
	if err != nil {
		t.Fatal(err)
	}
	// The content cipher must be AES-256-CBC, not the library's DES.
	if !bytes.Contains(env, mustOIDDER(oidAES256CBC)) {
		t.Error("EnvelopedData does not use AES-256-CBC")
	}
	got, err := Decrypt(env, kms.cert, kms.key.(crypto.Decrypter))
	if err != nil || !bytes.Equal(got, testBody) {
		t.Fatalf("Decrypt = %q, %v", got, err)
	}
	if _, err := Decrypt(env, other.cert, other.key.(crypto.Decrypter)); !errors.Is(err, ErrNotRecipient) {
		t.Errorf("wrong recipient: %v, want ErrNotRecipient", err)
	}
	if _, err := Encrypt(testBody, []*x509.Certificate{ec.cert}); !errors.Is(err, ErrUnsupported) {
		t.Errorf("EC recipient: %v, want ErrUnsupported", err)
	}
	sig, _ := SignDetached(testBody, kms.signer(), nil, testNow)
	if _, err := Decrypt(sig, kms.cert, kms.key.(crypto.Decrypter)); !errors.Is(err, ErrMalformed) {
		t.Errorf("Decrypt of SignedData: %v, want ErrMalformed", err)
	}
}

func TestCertsOnlyRoundTrip(t *testing.T) {
	p := newTestPKI(t)
	u := p.issue(t, "u@example.com", "ec", userOpts{})
	der, err := CertsOnly(u.cert, p.ca.cert, u.cert)
	if err != nil {
		t.Fatal(err)
	}
	certs, err := ParseCertsOnly(der)
	if err != nil {
		t.Fatal(err)
	}
	if len(certs) != 2 || !certs[0].Equal(u.cert) || !certs[1].Equal(p.ca.cert) {
		t.Fatalf("got %d certificates, want the user's then the CA's, once each", len(certs))
	}
	if _, err := ParseCertsOnly([]byte{0x30, 0x03, 0x02, 0x01, 0x01}); !errors.Is(err, ErrMalformed) {
		t.Errorf("garbage: %v", err)
	}
	// The same bytes as the pkcs7 library's encoder, which wrote them
	// before (and what TestComposeInterop has every tool read).
	want, err := pkcs7.DegenerateCertificate(append(append([]byte{}, u.cert.Raw...), p.ca.cert.Raw...))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(der, want) {
		t.Errorf("CertsOnly differs from pkcs7.DegenerateCertificate:\n got %x\nwant %x", der, want)
	}
}

func mustOIDDER(oid asn1.ObjectIdentifier) []byte {
	b, err := asn1.Marshal(oid)
	if err != nil {
		panic(err)
	}
	return b
}

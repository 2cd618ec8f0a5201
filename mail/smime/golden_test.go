package smime

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

func readGolden(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(goldenDir, name))
	if err != nil {
		t.Fatalf("golden sample missing (run TestGenerateGolden with SMIME_REGEN=1): %v", err)
	}
	return b
}

const daveCode = "ENROLL-7Q2K-94XD-PL3M"

// TestGoldenSigned verifies every signed sample made by OpenSSL, gpgsm and
// NSS, and checks the outcome each should have.
func TestGoldenSigned(t *testing.T) {
	g := loadGoldenPKI(t)
	tests := []struct {
		file    string
		kind    Kind
		signer  string // email in the signer certificate
		keyType string
		csrs    int
		code    string // challengePassword of the first CSR
		wantErr error
	}{
		{file: "openssl-smime-detached-rsa.eml", kind: KindSigned, signer: "alice@example.com", keyType: "rsa"},
		{file: "openssl-cms-detached-ec-crlf.eml", kind: KindSigned, signer: "bob@example.com", keyType: "ec"},
		{file: "openssl-smime-opaque-rsa.eml", kind: KindSignedOpaque, signer: "alice@example.com", keyType: "rsa"},
		{file: "openssl-cms-opaque-stream-ec.eml", kind: KindSignedOpaque, signer: "bob@example.com", keyType: "ec"},
		{file: "openssl-cms-pss-rsa.eml", kind: KindSigned, signer: "alice@example.com", keyType: "rsa"},
		{file: "openssl-cms-sha384-ec.eml", kind: KindSigned, signer: "bob@example.com", keyType: "ec"},
		{file: "openssl-rekey-pem-rsa.eml", kind: KindSigned, signer: "alice@example.com", keyType: "rsa", csrs: 1, code: daveCode},
		{file: "openssl-rekey-pkcs10-ec.eml", kind: KindSigned, signer: "bob@example.com", keyType: "ec", csrs: 1},
		{file: "gpgsm-detached-rsa.eml", kind: KindSigned, signer: "alice@example.com", keyType: "rsa"},
		{file: "nss-detached-rsa.eml", kind: KindSigned, signer: "alice@example.com", keyType: "rsa"},
		{file: "nss-opaque-ec.eml", kind: KindSignedOpaque, signer: "bob@example.com", keyType: "ec"},
		{file: "openssl-cms-sha1-rsa.eml", kind: KindSigned, wantErr: ErrWeakAlgorithm},
		{file: "openssl-expired-signer.eml", kind: KindSigned, wantErr: ErrSignerExpired},
		{file: "openssl-unknown-ca.eml", kind: KindSigned, wantErr: ErrUntrustedSigner},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			req, err := ParseRequest(readGolden(t, tt.file), Limits{})
			if err != nil {
				t.Fatalf("ParseRequest: %v", err)
			}
			if req.Kind != tt.kind {
				t.Fatalf("Kind = %v, want %v", req.Kind, tt.kind)
			}
			v, err := req.Verify(g.opts())
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Verify error = %v, want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			if got := v.Signature.Signer.EmailAddresses; len(got) != 1 || got[0] != tt.signer {
				t.Errorf("signer emails = %v, want %s", got, tt.signer)
			}
			switch v.Signature.Signer.PublicKey.(type) {
			case *rsa.PublicKey:
				if tt.keyType != "rsa" {
					t.Errorf("signer key is RSA, want %s", tt.keyType)
				}
			case *ecdsa.PublicKey:
				if tt.keyType != "ec" {
					t.Errorf("signer key is ECDSA, want %s", tt.keyType)
				}
			}
			if len(v.Signature.Chain) != 3 || !v.Signature.Chain[2].Equal(g.root) {
				t.Errorf("chain has %d certificates, want signer, CA, root", len(v.Signature.Chain))
			}
			if v.Signature.SigningTime.IsZero() {
				t.Error("no signing time; every tool used here writes one")
			}
			if v.Signature.ReplayID == ([32]byte{}) {
				t.Error("zero ReplayID")
			}
			if len(v.Content.CSRs) != tt.csrs {
				t.Fatalf("%d CSRs, want %d", len(v.Content.CSRs), tt.csrs)
			}
			if tt.csrs > 0 && v.Content.CSRs[0].ChallengePassword != tt.code {
				t.Errorf("challengePassword = %q, want %q", v.Content.CSRs[0].ChallengePassword, tt.code)
			}
		})
	}
}

// TestGoldenExpiredSignerNamesCertificate: a lapsed user's signed mail
// must identify the certificate, for the lapse notice (SPEC 4.2).
func TestGoldenExpiredSignerNamesCertificate(t *testing.T) {
	g := loadGoldenPKI(t)
	req, err := ParseRequest(readGolden(t, "openssl-expired-signer.eml"), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = req.Verify(g.opts())
	var exp *SignerExpiredError
	if !errors.As(err, &exp) {
		t.Fatalf("Verify error = %v, want *SignerExpiredError", err)
	}
	if !exp.Signer.Equal(g.carol.cert) || exp.ReplayID == ([32]byte{}) {
		t.Errorf("SignerExpiredError names %s, want carol's certificate and a ReplayID", exp.Signer.Subject)
	}
	if errors.Is(err, ErrUntrustedSigner) {
		t.Error("an expired signer must be told apart from an untrusted one")
	}
}

// TestGoldenEncrypted decrypts the enrollment requests OpenSSL encrypted to
// the KMS certificate and reads their CSR and enrollment code.
func TestGoldenEncrypted(t *testing.T) {
	g := loadGoldenPKI(t)
	for _, file := range []string{"openssl-enroll-aes256cbc.eml", "openssl-enroll-aes256gcm.eml"} {
		t.Run(file, func(t *testing.T) {
			req, err := ParseRequest(readGolden(t, file), Limits{})
			if err != nil {
				t.Fatal(err)
			}
			if req.Kind != KindEnveloped || req.From != "dave@example.com" {
				t.Fatalf("Kind %v From %q", req.Kind, req.From)
			}
			if _, err := req.UnverifiedContent(); !errors.Is(err, ErrEncrypted) {
				t.Fatalf("UnverifiedContent on enveloped: %v, want ErrEncrypted", err)
			}
			inner, err := req.Decrypt(g.kms.cert, g.kms.key.(*rsa.PrivateKey))
			if err != nil {
				t.Fatalf("Decrypt: %v", err)
			}
			if inner.Kind != KindUnsigned || !inner.Encrypted || inner.From != "dave@example.com" {
				t.Fatalf("inner Kind %v Encrypted %v From %q", inner.Kind, inner.Encrypted, inner.From)
			}
			c, err := inner.UnverifiedContent()
			if err != nil {
				t.Fatal(err)
			}
			if len(c.CSRs) != 1 || c.CSRs[0].ChallengePassword != daveCode {
				t.Fatalf("CSRs %d, want 1 with the enrollment code", len(c.CSRs))
			}
			if got := c.CSRs[0].Request.Subject.CommonName; got != "Dave Example" {
				t.Errorf("CSR subject CN %q, want Dave Example", got)
			}
			// Not addressed to alice.
			if _, err := req.Decrypt(g.alice.cert, g.alice.key.(*rsa.PrivateKey)); !errors.Is(err, ErrNotRecipient) {
				t.Errorf("Decrypt with alice's certificate: %v, want ErrNotRecipient", err)
			}
		})
	}
}

func TestGoldenSignedThenEncrypted(t *testing.T) {
	g := loadGoldenPKI(t)
	req, err := ParseRequest(readGolden(t, "openssl-signed-then-encrypted.eml"), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	inner, err := req.Decrypt(g.kms.cert, g.kms.key.(*rsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	if inner.Kind != KindSigned {
		t.Fatalf("inner Kind %v, want signed", inner.Kind)
	}
	v, err := inner.Verify(g.opts())
	if err != nil {
		t.Fatal(err)
	}
	if v.Signature.Signer.EmailAddresses[0] != "bob@example.com" || len(v.Content.CSRs) != 1 {
		t.Errorf("signer %v, %d CSRs", v.Signature.Signer.EmailAddresses, len(v.Content.CSRs))
	}
}

func TestGoldenPlainEnrollment(t *testing.T) {
	req, err := ParseRequest(readGolden(t, "plain-enroll.eml"), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if req.Kind != KindUnsigned || req.MessageID != "enroll-1@example.com" || req.Subject != "Enroll" {
		t.Fatalf("Kind %v MessageID %q Subject %q", req.Kind, req.MessageID, req.Subject)
	}
	if _, err := req.Verify(loadGoldenPKI(t).opts()); !errors.Is(err, ErrNotSigned) {
		t.Errorf("Verify on unsigned: %v, want ErrNotSigned", err)
	}
	c, err := req.UnverifiedContent()
	if err != nil {
		t.Fatal(err)
	}
	if len(c.CSRs) != 1 || c.CSRs[0].ChallengePassword != daveCode {
		t.Fatalf("%d CSRs", len(c.CSRs))
	}
}

func TestSignerHasAddress(t *testing.T) {
	g := loadGoldenPKI(t)
	s := &Signature{Signer: g.alice.cert}
	for addr, want := range map[string]bool{
		"alice@example.com":  true,
		"alice@EXAMPLE.Com":  true,  // domains are case-insensitive
		"Alice@example.com":  false, // local parts are not
		"alice@example.org":  false,
		"alice":              false,
		"@example.com":       false,
		"bob@example.com":    false,
		"alice@example.com ": false,
	} {
		if got := s.SignerHasAddress(addr); got != want {
			t.Errorf("SignerHasAddress(%q) = %v, want %v", addr, got, want)
		}
	}
}

// TestGoldenStreamIsBER keeps the streamed sample honest: it must use
// indefinite lengths, or it would not test the BER path.
func TestGoldenStreamIsBER(t *testing.T) {
	r, err := ParseRequest(readGolden(t, "openssl-cms-opaque-stream-ec.eml"), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.cms) < 2 || r.cms[0] != 0x30 || r.cms[1] != 0x80 {
		t.Fatalf("sample starts % x, want an indefinite-length SEQUENCE (30 80)", r.cms[:2])
	}
	der, _, err := toDER(r.cms)
	if err != nil || der[1] == 0x80 {
		t.Fatalf("toDER: %v", err)
	}
}

// TestGoldenReplies reads back the replies Compose wrote into testdata.
func TestGoldenReplies(t *testing.T) {
	g := loadGoldenPKI(t)
	for file, certs := range map[string]int{"kms-certificate-reply.eml": 3, "kms-reminder.eml": 2} {
		r, err := ParseRequest(readGolden(t, file), Limits{})
		if err != nil {
			t.Fatal(err)
		}
		v, err := r.Verify(g.opts())
		if err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		if !v.Signature.SignerHasAddress("kms@example.com") || len(v.Signature.Certificates) != certs {
			t.Errorf("%s: signer %v, %d certificates, want %d", file, v.Signature.Signer.EmailAddresses, len(v.Signature.Certificates), certs)
		}
	}
}

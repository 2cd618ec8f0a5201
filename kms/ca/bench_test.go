package ca

import (
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"testing"

	"github.com/kmsmail/kms/policy"
)

// BenchmarkIssue measures certificates issued per second with an RSA-2048
// issuing CA; compare with BenchmarkRawSign to see what the certificate
// building and DER encoding cost on top of the signature.
func BenchmarkIssue(b *testing.B) {
	a := fastCA(b)
	pub := subscriberKeys(b)[policy.P256].Public()
	req := Request{Email: "alice@example.com", PublicKey: pub, NotBefore: testNow, NotAfter: testNow.AddDate(1, 0, 0)}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := a.Issue(req); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkRawSign measures the issuing CA key alone signing a SHA-256
// digest, the floor under BenchmarkIssue.
func BenchmarkRawSign(b *testing.B) {
	signer := fastCA(b).IssuerSigner()
	digest := sha256.Sum256([]byte("kms"))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := signer.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

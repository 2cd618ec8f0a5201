package smime

import (
	"errors"
	"testing"
	"time"
)

// TestChainCache: a cached signer verifies without its chain being built
// again, but expiry, another roots pool and a bad signature are still seen.
func TestChainCache(t *testing.T) {
	p := newTestPKI(t)
	user := p.issue(t, "alice@example.com", "ec", userOpts{})
	sig, err := SignDetached(testBody, user.signer(), nil, testNow)
	if err != nil {
		t.Fatal(err)
	}
	cache := NewChainCache(10)
	opts := verifyOpts(p, testNow)
	opts.Cache = cache
	if _, err := VerifyDetached(sig, testBody, opts); err != nil {
		t.Fatal(err)
	}
	if cache.lookup(user.cert, opts.Roots, testNow) == nil {
		t.Fatal("a verified signer was not cached")
	}
	if _, err := VerifyDetached(sig, testBody, opts); err != nil {
		t.Fatalf("cached verification: %v", err)
	}
	// Tampered content fails whatever the cache holds.
	if _, err := VerifyDetached(sig, append([]byte("x"), testBody...), opts); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("tampered content with a cached signer: %v", err)
	}
	// After the certificate's expiry the cache does not answer.
	late := opts
	late.At = user.cert.NotAfter.Add(time.Hour)
	if _, err := VerifyDetached(sig, testBody, late); !errors.Is(err, ErrSignerExpired) {
		t.Fatalf("expired signer with a cached chain: %v", err)
	}
	// Another roots pool (one that does not hold the CA) is not answered from the cache.
	other := opts
	other.Roots = newTestPKI(t).roots()
	if _, err := VerifyDetached(sig, testBody, other); !errors.Is(err, ErrUntrustedSigner) {
		t.Fatalf("foreign roots with a cached chain: %v", err)
	}
}

package smime

import (
	"bytes"
	"crypto/x509"
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

// TestChainCacheIssuer: once one certificate of a CA has verified, another
// certificate of the same CA (a renewal) is checked against that CA alone,
// and still refused when it is not valid, not for S/MIME, or only claims
// the CA's name.
func TestChainCacheIssuer(t *testing.T) {
	p := newTestPKI(t)
	cache := NewChainCache(10)
	opts := verifyOpts(p, testNow)
	opts.Cache = cache
	first := p.issue(t, "alice@example.com", "ec", userOpts{})
	verifyWith(t, first, opts)
	if len(cache.tails(first.cert, opts.Roots, testNow)) != 1 {
		t.Fatal("the issuing CA's proven chain was not kept")
	}

	renewed := p.issue(t, "alice@example.com", "ec", userOpts{})
	chain := cache.viaIssuer(renewed.cert, opts.Roots, testNow)
	if len(chain) != 3 || chain[0] != renewed.cert || !chain[1].Equal(p.ca.cert) || !chain[2].Equal(p.root.cert) {
		t.Fatalf("a renewed certificate of the same CA: chain %v, want leaf, issuing CA, root", chain)
	}
	if got := verifyWith(t, renewed, opts); len(got) != 3 {
		t.Fatalf("verified chain has %d certificates", len(got))
	}

	// Another roots pool is not answered from the cache.
	if cache.tails(renewed.cert, p.roots(), testNow) != nil {
		t.Fatal("tails answered for a different roots pool")
	}
	// A CA that only has the same name is not the proven one.
	impostorCA := p.makeCA(t, "kms test issuing CA", &p.evilRoot)
	forged := p.issue(t, "alice@example.com", "ec", userOpts{issuer: &impostorCA})
	if cache.viaIssuer(forged.cert, opts.Roots, testNow) != nil {
		t.Fatal("a certificate from a CA of the same name verified against the cached CA")
	}
	if _, err := verifyErr(t, forged, opts); !errors.Is(err, ErrUntrustedSigner) {
		t.Fatalf("forged issuer: %v", err)
	}
	// Expiry and the wrong usage are still seen, and classified as before.
	old := p.issue(t, "alice@example.com", "ec", userOpts{notBefore: testNow.AddDate(-2, 0, 0), notAfter: testNow.AddDate(0, 0, -1)})
	if cache.viaIssuer(old.cert, opts.Roots, testNow) != nil {
		t.Fatal("an expired certificate verified through the cached issuer")
	}
	if _, err := verifyErr(t, old, opts); !errors.Is(err, ErrSignerExpired) {
		t.Fatalf("expired certificate: %v", err)
	}
	server := p.issue(t, "alice@example.com", "ec", userOpts{eku: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	if cache.viaIssuer(server.cert, opts.Roots, testNow) != nil {
		t.Fatal("a certificate without emailProtection verified through the cached issuer")
	}
	if _, err := verifyErr(t, server, opts); !errors.Is(err, ErrUntrustedSigner) {
		t.Fatalf("serverAuth-only certificate: %v", err)
	}
	// Past the CA's own validity the tail does not answer.
	if cache.tails(renewed.cert, opts.Roots, p.ca.cert.NotAfter.Add(time.Hour)) != nil {
		t.Fatal("tails answered after the issuing CA expired")
	}
}

// TestChainCacheIssuedByCaller: a certificate the caller vouches it issued
// (VerifyOptions.Issued) verifies through the proven tail above its issuer
// without its CA signature being checked again, which a certificate with a
// broken CA signature shows; without the vouching, or with no proven tail,
// the same certificate is refused, and expiry and the wrong usage are
// still refused and classified as without it.
func TestChainCacheIssuedByCaller(t *testing.T) {
	p := newTestPKI(t)
	opts := verifyOpts(p, testNow)
	opts.Cache = NewChainCache(10)
	calls := 0
	issuedBy := func(answer bool) func(*x509.Certificate) bool {
		return func(*x509.Certificate) bool { calls++; return answer }
	}
	brokenCASignature := func(id identity) identity {
		der := bytes.Clone(id.cert.Raw)
		der[len(der)-1] ^= 1 // the last byte of the CA's signature
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		id.cert = c
		return id
	}
	broken := brokenCASignature(p.issue(t, "alice@example.com", "ec", userOpts{}))

	// No proven tail yet: the full verification runs, and refuses.
	opts.Issued = issuedBy(true)
	if _, err := verifyErr(t, broken, opts); !errors.Is(err, ErrUntrustedSigner) {
		t.Fatalf("broken CA signature, nothing proven yet: %v", err)
	}
	verifyWith(t, p.issue(t, "bob@example.com", "ec", userOpts{}), opts) // proves the tail

	calls = 0
	if chain := verifyWith(t, broken, opts); len(chain) != 3 || !chain[0].Equal(broken.cert) || !chain[1].Equal(p.ca.cert) {
		t.Fatalf("vouched certificate: chain %v, want leaf, issuing CA, root", chain)
	}
	if calls != 1 {
		t.Fatalf("Issued called %d times, want 1", calls)
	}
	opts.Issued = issuedBy(false)
	if _, err := verifyErr(t, broken, opts); !errors.Is(err, ErrUntrustedSigner) {
		t.Fatalf("broken CA signature, not vouched for: %v", err)
	}

	opts.Issued = issuedBy(true)
	calls = 0
	old := brokenCASignature(p.issue(t, "alice@example.com", "ec", userOpts{notBefore: testNow.AddDate(-2, 0, 0), notAfter: testNow.AddDate(0, 0, -1)}))
	if _, err := verifyErr(t, old, opts); !errors.Is(err, ErrUntrustedSigner) {
		t.Fatalf("expired, with a broken CA signature: %v", err)
	}
	expired := p.issue(t, "alice@example.com", "ec", userOpts{notBefore: testNow.AddDate(-2, 0, 0), notAfter: testNow.AddDate(0, 0, -1)})
	if _, err := verifyErr(t, expired, opts); !errors.Is(err, ErrSignerExpired) {
		t.Fatalf("expired certificate, vouched for: %v", err)
	}
	server := p.issue(t, "alice@example.com", "ec", userOpts{eku: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	if _, err := verifyErr(t, server, opts); !errors.Is(err, ErrUntrustedSigner) {
		t.Fatalf("serverAuth-only certificate, vouched for: %v", err)
	}
	if calls != 0 {
		t.Fatalf("Issued consulted %d times for certificates that fail the leaf checks", calls)
	}
}

// TestChainCacheConstrainedTail: a chain with name constraints above the
// leaf is never reused for other leaves.
func TestChainCacheConstrainedTail(t *testing.T) {
	ca := &x509.Certificate{IsCA: true, PermittedEmailAddresses: []string{"example.com"}}
	if reusableTail([]*x509.Certificate{ca}) {
		t.Fatal("a name-constrained CA was taken as reusable")
	}
	if reusableTail([]*x509.Certificate{{IsCA: true, InhibitAnyPolicyZero: true}}) {
		t.Fatal("a policy-constrained CA was taken as reusable")
	}
	if !reusableTail([]*x509.Certificate{{IsCA: true}}) {
		t.Fatal("a plain CA was not taken as reusable")
	}
}

func verifyWith(t *testing.T, id identity, opts VerifyOptions) []*x509.Certificate {
	t.Helper()
	s, err := verifyErr(t, id, opts)
	if err != nil {
		t.Fatalf("verify %s: %v", id.cert.Subject, err)
	}
	return s.Chain
}

func verifyErr(t *testing.T, id identity, opts VerifyOptions) (*Signature, error) {
	t.Helper()
	sig, err := SignDetached(testBody, id.signer(), nil, testNow)
	if err != nil {
		t.Fatal(err)
	}
	return VerifyDetached(sig, testBody, opts)
}

// TestChainCacheStartsAfreshWhenFull: a full cache forgets everything
// (signers and issuers alike) and keeps working: the signer that found it
// full is cached, and its CA's chain is proven again for the next renewal.
func TestChainCacheStartsAfreshWhenFull(t *testing.T) {
	p := newTestPKI(t)
	cache := NewChainCache(2)
	opts := verifyOpts(p, testNow)
	opts.Cache = cache
	users := []identity{
		p.issue(t, "alice@example.com", "ec", userOpts{}),
		p.issue(t, "bob@example.com", "ec", userOpts{}),
		p.issue(t, "carol@example.com", "ec", userOpts{}),
	}
	for _, u := range users {
		verifyWith(t, u, opts)
	}
	if cache.lookup(users[0].cert, opts.Roots, testNow) != nil || cache.lookup(users[1].cert, opts.Roots, testNow) != nil {
		t.Fatal("signers from before the cache filled up are still cached")
	}
	if cache.lookup(users[2].cert, opts.Roots, testNow) == nil {
		t.Fatal("the signer that found the cache full was not cached")
	}
	if n := len(cache.entries); n != 1 {
		t.Fatalf("%d signers cached after starting afresh, want 1", n)
	}
	renewed := p.issue(t, "carol@example.com", "ec", userOpts{})
	if chain := cache.viaIssuer(renewed.cert, opts.Roots, testNow); len(chain) != 3 {
		t.Fatalf("after starting afresh, a renewal's chain via the issuer: %v, want 3 certificates", chain)
	}
	// A forgotten signer verifies again through the full path.
	if got := verifyWith(t, users[0], opts); len(got) != 3 {
		t.Fatalf("a forgotten signer's chain has %d certificates, want 3", len(got))
	}
}

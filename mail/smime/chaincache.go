package smime

import (
	"bytes"
	"crypto/sha256"
	"crypto/x509"
	"sync"
	"time"
)

// ChainCache remembers chains that verified, so that the next request does
// not build and check them again. It keeps two things:
//
//   - signers whose whole chain verified, so that a user's next request
//     signed with the same certificate costs no public-key operation for
//     the chain;
//   - the upper part of each such chain (the issuing CA up to the root), so
//     that a certificate the same CA issued later (a renewed one: every
//     renewal changes the signer) is checked against its issuer alone, one
//     signature, instead of the whole chain again. The leaf is still
//     verified by crypto/x509 (signature, validity, key usage, critical
//     extensions); only the issuer's own chain, already proven, is reused.
//
// An entry answers only for the same roots pool and only while the
// verification time lies within the validity of every certificate it
// covers, so expiry is still seen. What the caller checks beyond the chain
// (that kms tracks the certificate, that it is not revoked) is not cached.
// It is safe for concurrent use; a nil *ChainCache caches nothing.
type ChainCache struct {
	mu      sync.Mutex
	max     int
	entries map[[32]byte]cachedChain
	// issuers maps an issuing CA's raw subject to the proven chains above
	// it (usually one; a re-keyed CA under the same name adds another).
	issuers map[string][]cachedTail
}

type cachedChain struct {
	roots       *x509.CertPool
	chain       []*x509.Certificate
	from, until time.Time // the validity every certificate of the chain shares
}

// cachedTail is a proven chain from an issuing CA to a root, with a pool
// holding only that CA, for verifying a leaf against it alone.
type cachedTail struct {
	roots       *x509.CertPool
	tail        []*x509.Certificate // the issuing CA first, the root last
	anchor      *x509.CertPool
	from, until time.Time
}

// NewChainCache returns a cache of at most max signers; when it is full it
// starts afresh, which is simple and bounded.
func NewChainCache(max int) *ChainCache {
	return &ChainCache{max: max, entries: map[[32]byte]cachedChain{}, issuers: map[string][]cachedTail{}}
}

func (c *ChainCache) lookup(signer *x509.Certificate, roots *x509.CertPool, at time.Time) []*x509.Certificate {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[sha256.Sum256(signer.Raw)]
	if !ok || e.roots != roots || at.Before(e.from) || at.After(e.until) {
		return nil
	}
	return e.chain
}

// tails returns the proven chains above signer's issuer usable at at.
func (c *ChainCache) tails(signer *x509.Certificate, roots *x509.CertPool, at time.Time) []cachedTail {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []cachedTail
	for _, t := range c.issuers[string(signer.RawIssuer)] {
		if t.roots == roots && !at.Before(t.from) && !at.After(t.until) {
			out = append(out, t)
		}
	}
	return out
}

func (c *ChainCache) store(signer *x509.Certificate, roots *x509.CertPool, chain []*x509.Certificate) {
	if c == nil || len(chain) == 0 {
		return
	}
	from, until := validity(chain)
	e := cachedChain{roots: roots, chain: chain, from: from, until: until}
	var tail *cachedTail
	if len(chain) >= 2 && reusableTail(chain[1:]) {
		from, until := validity(chain[1:])
		anchor := x509.NewCertPool()
		anchor.AddCert(chain[1])
		tail = &cachedTail{roots: roots, tail: chain[1:], anchor: anchor, from: from, until: until}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= c.max {
		c.entries = map[[32]byte]cachedChain{}
		c.issuers = map[string][]cachedTail{}
	}
	c.entries[sha256.Sum256(signer.Raw)] = e
	if tail != nil {
		key := string(tail.tail[0].RawSubject)
		for _, t := range c.issuers[key] {
			if t.roots == roots && t.tail[0].Equal(tail.tail[0]) {
				return
			}
		}
		c.issuers[key] = append(c.issuers[key], *tail)
	}
}

// issuedLeaf returns signer's chain without checking its CA signature, for
// a certificate the caller issued itself (VerifyOptions.Issued): signer
// and the one proven tail above its issuer, told apart by the issuer's
// subject key identifier, after the checks crypto/x509 makes of a leaf
// other than its signature: validity at at, the emailProtection usage (or
// any, or no extended key usage at all) and no critical extension it does
// not handle. It returns nil when any of that fails or no single tail
// fits; the caller then verifies in full, which also classifies failures.
func (c *ChainCache) issuedLeaf(signer *x509.Certificate, roots *x509.CertPool, at time.Time) []*x509.Certificate {
	restricted := len(signer.ExtKeyUsage)+len(signer.UnknownExtKeyUsage) > 0
	if at.Before(signer.NotBefore) || at.After(signer.NotAfter) || len(signer.UnhandledCriticalExtensions) > 0 ||
		restricted && !allowsEmail(signer.ExtKeyUsage) {
		return nil
	}
	var found []*x509.Certificate
	for _, t := range c.tails(signer, roots, at) {
		if len(signer.AuthorityKeyId) == 0 || bytes.Equal(signer.AuthorityKeyId, t.tail[0].SubjectKeyId) {
			if found != nil {
				return nil // two CAs under one name and key id: let x509 choose
			}
			found = t.tail
		}
	}
	if found == nil {
		return nil
	}
	return append([]*x509.Certificate{signer}, found...)
}

// allowsEmail reports whether extended key usages allow email protection.
func allowsEmail(usages []x509.ExtKeyUsage) bool {
	for _, u := range usages {
		if u == x509.ExtKeyUsageEmailProtection || u == x509.ExtKeyUsageAny {
			return true
		}
	}
	return false
}

// validity is the time span every certificate of chain is valid in.
func validity(chain []*x509.Certificate) (from, until time.Time) {
	from, until = chain[0].NotBefore, chain[0].NotAfter
	for _, cert := range chain[1:] {
		if cert.NotBefore.After(from) {
			from = cert.NotBefore
		}
		if cert.NotAfter.Before(until) {
			until = cert.NotAfter
		}
	}
	return from, until
}

// reusableTail reports whether a proven chain above a leaf may be reused
// for other leaves by checking the leaf against the issuing CA alone. That
// is only sound when nothing in the tail constrains the leaf beyond what
// crypto/x509 checks against its direct issuer: no name constraints and no
// policy constraints anywhere above it. Chains with such constraints are
// always verified whole.
func reusableTail(tail []*x509.Certificate) bool {
	for _, c := range tail {
		if !c.IsCA || c.PermittedDNSDomainsCritical ||
			len(c.PermittedDNSDomains)+len(c.ExcludedDNSDomains)+len(c.PermittedIPRanges)+len(c.ExcludedIPRanges)+
				len(c.PermittedEmailAddresses)+len(c.ExcludedEmailAddresses)+len(c.PermittedURIDomains)+len(c.ExcludedURIDomains) > 0 ||
			c.RequireExplicitPolicy > 0 || c.RequireExplicitPolicyZero || c.InhibitPolicyMapping > 0 || c.InhibitPolicyMappingZero ||
			c.InhibitAnyPolicy > 0 || c.InhibitAnyPolicyZero || len(c.PolicyMappings) > 0 {
			return false
		}
	}
	return true
}

// viaIssuer verifies signer against a proven issuer chain: crypto/x509
// checks the leaf (its signature by the issuing CA, validity at at, the
// emailProtection usage, critical extensions) with that CA as the only
// anchor, and the proven tail completes the chain. It returns nil when no
// cached issuer fits or the leaf fails; the caller then verifies the whole
// chain, which also classifies the failure.
func (c *ChainCache) viaIssuer(signer *x509.Certificate, roots *x509.CertPool, at time.Time) []*x509.Certificate {
	for _, t := range c.tails(signer, roots, at) {
		_, err := signer.Verify(x509.VerifyOptions{Roots: t.anchor, CurrentTime: at,
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}})
		if err == nil {
			return append([]*x509.Certificate{signer}, t.tail...)
		}
	}
	return nil
}

package smime

import (
	"crypto/sha256"
	"crypto/x509"
	"sync"
	"time"
)

// ChainCache remembers signer certificates whose chain to a set of roots
// verified, so that a user's next request does not build and check the
// chain again (two or three public-key operations and a pool copy each
// time). An entry answers only for the same roots pool and only while the
// verification time lies within the validity of every certificate of the
// chain, so expiry is still seen; what the caller checks beyond the chain
// (that kms tracks the certificate, that it is not revoked) is not cached.
// It is safe for concurrent use; a nil *ChainCache caches nothing.
type ChainCache struct {
	mu      sync.Mutex
	max     int
	entries map[[32]byte]cachedChain
}

type cachedChain struct {
	roots       *x509.CertPool
	chain       []*x509.Certificate
	from, until time.Time // the validity every certificate of the chain shares
}

// NewChainCache returns a cache of at most max signers; when it is full it
// starts afresh, which is simple and bounded.
func NewChainCache(max int) *ChainCache {
	return &ChainCache{max: max, entries: map[[32]byte]cachedChain{}}
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

func (c *ChainCache) store(signer *x509.Certificate, roots *x509.CertPool, chain []*x509.Certificate) {
	if c == nil || len(chain) == 0 {
		return
	}
	e := cachedChain{roots: roots, chain: chain, from: chain[0].NotBefore, until: chain[0].NotAfter}
	for _, cert := range chain[1:] {
		if cert.NotBefore.After(e.from) {
			e.from = cert.NotBefore
		}
		if cert.NotAfter.Before(e.until) {
			e.until = cert.NotAfter
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= c.max {
		c.entries = map[[32]byte]cachedChain{}
	}
	c.entries[sha256.Sum256(signer.Raw)] = e
}

// Package signrate measures how fast keys sign: the bound that kms's
// performance figures are reported against (issuance against the CA key,
// mail against the KMS key, renewals against both).
package signrate

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Measure signs SHA-256 digests with keys, taken in turn, on workers
// goroutines for about d, and returns signatures per second.
func Measure(ctx context.Context, keys []crypto.Signer, workers int, d time.Duration) (float64, error) {
	if len(keys) == 0 || workers < 1 {
		return 0, errors.New("signrate: no key or no worker")
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	digest := sha256.Sum256([]byte("kms sign rate"))
	var (
		n    atomic.Int64
		wg   sync.WaitGroup
		fail atomic.Pointer[error]
	)
	start := time.Now()
	for w := range workers {
		wg.Go(func() {
			for i := w; ctx.Err() == nil; i++ {
				if _, err := keys[i%len(keys)].Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
					fail.Store(&err)
					return
				}
				n.Add(1)
			}
		})
	}
	wg.Wait()
	if err := fail.Load(); err != nil {
		return 0, fmt.Errorf("signing: %w", *err)
	}
	return float64(n.Load()) / time.Since(start).Seconds(), nil
}

package mail

import (
	"context"
	"math"
	"sync"
	"time"

	"github.com/kmsmail/kms/clock"
)

// limiter is a token bucket on a clock.Clock: rate tokens a second, at most
// max(1, rate) in store, so a burst after a quiet spell is one second's
// worth. It is written here rather than taken from golang.org/x/time/rate
// because that package reads the wall clock itself, and the outbox tests
// move a fake one.
type limiter struct {
	clock  clock.Clock
	rate   float64 // tokens per second; <= 0 means no limit
	burst  float64
	mu     sync.Mutex
	tokens float64
	last   time.Time
}

// maxNap bounds one sleep while waiting for a token: the clock may be moved
// (a fake one in tests, or the wall clock stepping), so the wait re-reads it
// rather than trusting one long sleep computed from the old time.
const maxNap = 50 * time.Millisecond

func newLimiter(c clock.Clock, rate float64) *limiter {
	burst := math.Max(1, math.Floor(rate))
	return &limiter{clock: c, rate: rate, burst: burst, tokens: burst, last: c.Now()}
}

// take waits until a token is available, then takes up to n (at least one)
// and returns how many it took. waited is called once if it had to wait.
func (l *limiter) take(ctx context.Context, n int, waited func()) (int, error) {
	if l.rate <= 0 {
		return n, nil
	}
	for first := true; ; first = false {
		l.mu.Lock()
		l.refill()
		if l.tokens >= 1 {
			k := min(n, int(l.tokens))
			l.tokens -= float64(k)
			l.mu.Unlock()
			return k, nil
		}
		wait := time.Duration((1 - l.tokens) / l.rate * float64(time.Second))
		l.mu.Unlock()
		if first && waited != nil {
			waited()
		}
		t := time.NewTimer(min(wait, maxNap))
		select {
		case <-ctx.Done():
			t.Stop()
			return 0, ctx.Err()
		case <-t.C:
		}
	}
}

// refund returns k tokens that were taken but not used.
func (l *limiter) refund(k int) {
	if l.rate <= 0 || k <= 0 {
		return
	}
	l.mu.Lock()
	l.tokens = math.Min(l.burst, l.tokens+float64(k))
	l.mu.Unlock()
}

// refill adds the tokens earned since the last call; l.mu is held.
func (l *limiter) refill() {
	now := l.clock.Now()
	if now.After(l.last) {
		l.tokens = math.Min(l.burst, l.tokens+now.Sub(l.last).Seconds()*l.rate)
		l.last = now
	}
}

package kms

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kmsmail/kms/clock"
	"github.com/kmsmail/kms/internal/signrate"
	"github.com/kmsmail/kms/kms/ca"
	"github.com/kmsmail/kms/policy"
)

// benchCA is an RSA-2048 issuing CA, the key the performance goal names.
var (
	benchCAOnce sync.Once
	benchCA     *ca.Authority
	benchCAErr  error
)

func rsaIssuingCA(b *testing.B) *ca.Authority {
	benchCAOnce.Do(func() {
		dir := filepath.Join(b.TempDir(), "ca")
		benchCA, benchCAErr = ca.Open(ca.Config{Dir: dir, KeyType: policy.RSA2048, RootKeyType: policy.P256,
			BaseURL: "http://127.0.0.1:8025", KMSAddress: "kms@example.com"}, time.Now(), slog.New(slog.DiscardHandler))
	})
	if benchCAErr != nil {
		b.Fatal(benchCAErr)
	}
	return benchCA
}

// rawSignRate measures what the issuing key alone can do, on every core.
func rawSignRate(signer crypto.Signer, d time.Duration) float64 {
	rate, err := signrate.Measure(context.Background(), []crypto.Signer{signer}, parallelism(), d)
	if err != nil {
		panic(err)
	}
	return rate
}

// BenchmarkRawSign is the bound: the issuing CA key's signing rate.
func BenchmarkRawSign(b *testing.B) {
	signer := rsaIssuingCA(b).IssuerSigner()
	digest := sha256.Sum256([]byte("kms benchmark"))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := signer.Sign(rand.Reader, digest[:], crypto.SHA256); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "signs/s")
}

// BenchmarkIssue renews certificates through the whole domain path: state
// checks, key policy, signing by the RSA-2048 issuing CA, and one durable
// SQLite transaction (synchronous=FULL) writing the certificate, the
// superseded predecessor, the outbox row and the audit record. It reports
// issues/s and, measured in the same run, the raw signing rate of the same
// key and the ratio of the two.
func BenchmarkIssue(b *testing.B) {
	authority := rsaIssuingCA(b)
	st, err := OpenStore(context.Background(), "sqlite", filepath.Join(b.TempDir(), "kms.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	svc := New(Config{Store: st, Issuer: authority, Policies: policy.Set{Default: policy.Default()},
		Domains: []string{"example.com"}, KMSAddress: "kms@example.com", Clock: clock.System{}})
	ctx := context.Background()
	// One user per goroutine: renewals of one user serialise by design.
	workers := parallelism() * 32
	serials := make([]string, workers)
	for i := range serials {
		email := fmt.Sprintf("bench%d@example.com", i)
		en, err := svc.Enroll(ctx, email, "", "bench")
		if err != nil {
			b.Fatal(err)
		}
		c, err := svc.EnrollByCode(ctx, email, en.Code, newKey(b).Public(), Request{Actor: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		serials[i] = c.Serial
	}
	bound := rawSignRate(authority.IssuerSigner(), time.Second)
	var next atomic.Int64
	b.ResetTimer()
	b.SetParallelism(32)
	b.RunParallel(func(pb *testing.PB) {
		i := int(next.Add(1)-1) % workers
		serial := serials[i]
		for pb.Next() {
			c, err := svc.Renew(ctx, serial, Request{Actor: "bench"})
			if err != nil {
				b.Error(err)
				return
			}
			serial = c.Serial
		}
	})
	rate := float64(b.N) / b.Elapsed().Seconds()
	b.ReportMetric(rate, "issues/s")
	b.ReportMetric(bound, "raw-signs/s")
	b.ReportMetric(rate/bound, "ratio")
}

func parallelism() int { return runtime.GOMAXPROCS(0) }

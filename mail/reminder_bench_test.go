package mail

import (
	"context"
	"crypto"
	"fmt"
	"log/slog"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/kmsmail/kms/internal/signrate"
	"github.com/kmsmail/kms/kms"
	"github.com/kmsmail/kms/kms/ca"
	"github.com/kmsmail/kms/policy"
)

// kmsKeySignRate measures what the KMS key alone can do, on every core:
// the bound for mail that kms signs.
func kmsKeySignRate(key crypto.Signer, d time.Duration) float64 {
	rate, err := signrate.Measure(context.Background(), []crypto.Signer{key}, runtime.GOMAXPROCS(0), d)
	if err != nil {
		panic(err)
	}
	return rate
}

// BenchmarkReminderDelivery delivers b.N queued reminders through the real
// outbox worker: each is rendered and signed with the KMS's RSA-2048 key
// (SignedRenderer, as the daemon does) and handed over SMTP to a local
// sink on loopback, then marked sent in SQLite. It reports reminders/s
// beside the raw signing rate of the same KMS key, measured in the same run
// before and after, and their ratio.
func BenchmarkReminderDelivery(b *testing.B) {
	e := newOutEnv(b)
	authority, err := ca.Open(ca.Config{Dir: filepath.Join(b.TempDir(), "ca"), KeyType: policy.RSA2048, RootKeyType: policy.P256,
		BaseURL: "http://127.0.0.1:8025", KMSAddress: kmsAddr}, e.clock.Now(), slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < b.N; i++ {
		e.queue(b, kms.MailReminder, fmt.Sprintf("user%d@example.com", i))
	}
	sink := startRelay(b, false)
	relay, err := NewRelay(RelayConfig{Addr: sink.addr, Hostname: "kms.example.com", AllowPlaintext: true})
	if err != nil {
		b.Fatal(err)
	}
	_, key := authority.KMS()
	before := kmsKeySignRate(key, time.Second)
	b.ResetTimer()
	o, stop := e.run(b, OutboxConfig{Transport: relay, Workers: 8, BatchSize: 64,
		Renderer: &SignedRenderer{Identity: authority, Chain: authority.Chain(), KMSAddress: kmsAddr, Clock: e.clock}})
	for value(b, o.m.sent) < float64(b.N) {
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	stop()
	if got := len(sink.received()); got != b.N {
		b.Fatalf("the sink received %d messages, want %d", got, b.N)
	}
	after := kmsKeySignRate(key, time.Second)
	rate := float64(b.N) / b.Elapsed().Seconds()
	bound := (before + after) / 2
	b.ReportMetric(rate, "reminders/s")
	b.ReportMetric(bound, "raw-signs/s")
	b.ReportMetric(rate/bound, "ratio")
}

package mail

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/kmsmail/kms/kms"
)

// benchMsg is about the size of a signed certificate reply.
var benchMsg = []byte("From: kms@example.com\r\nTo: alice@example.com\r\nSubject: Your certificate\r\n\r\n" +
	strings.Repeat("MIIFazCCA1OgAwIBAgIUQ2hlY2sgdGhlIGxpbmUgbGVuZ3RoIGZvciBiYXNlNjQgYm9k\r\n", 90))

func reportRate(b *testing.B) {
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkMaildirDeliver measures Deliver into a Maildir: write, fsync,
// rename, fsync of new/.
func BenchmarkMaildirDeliver(b *testing.B) {
	md := newMaildir(b)
	ctx := context.Background()
	b.SetBytes(int64(len(benchMsg)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := md.Deliver(ctx, kmsAddr, []string{"alice@example.com"}, benchMsg, fmt.Sprintf("%d-bench", i)); err != nil {
			b.Fatal(err)
		}
	}
	reportRate(b)
}

// BenchmarkRelayDeliver measures Deliver through a loopback relay, one
// session per message: connect, STARTTLS, AUTH PLAIN, one transaction.
func BenchmarkRelayDeliver(b *testing.B) {
	srv := startRelay(b, true)
	r, err := NewRelay(srv.relayConfig())
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	b.SetBytes(int64(len(benchMsg)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := r.Deliver(ctx, kmsAddr, []string{"alice@example.com"}, benchMsg, ""); err != nil {
			b.Fatal(err)
		}
	}
	reportRate(b)
	if got := len(srv.received()); got != b.N {
		b.Fatalf("relay received %d of %d", got, b.N)
	}
}

// BenchmarkOutboxToMaildir measures the worker end to end: claim, render,
// deliver into the Maildir, MarkSent (a durable SQLite commit).
func BenchmarkOutboxToMaildir(b *testing.B) {
	e := newOutEnv(b)
	md := newMaildir(b)
	for i := 0; i < b.N; i++ {
		e.queue(b, kms.MailReminder, fmt.Sprintf("user%d@example.com", i))
	}
	b.ResetTimer()
	o, stop := e.run(b, OutboxConfig{Transport: md, PollInterval: time.Hour})
	for value(b, o.m.sent) < float64(b.N) {
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	stop()
	reportRate(b)
}

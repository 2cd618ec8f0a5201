package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kmsmail/kms/config"
	"github.com/kmsmail/kms/kms"
	"github.com/kmsmail/kms/policy"
)

// envInt reads a positive integer from the environment, or def.
func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// TestLoadInProcess runs the generator through its command line against a
// daemon assembled in-process, and checks that every renewal was answered
// and recorded; it asserts no timing. It is small by default (3 users, 3
// renewals each); KMS_LOAD_USERS, KMS_LOAD_RENEWALS, KMS_LOAD_CONCURRENCY
// and KMS_LOAD_CA=rsa2048 make it a profiling run of the daemon's side
// (KMS_LOAD_WORKERS and KMS_LOAD_OUTBOX_WORKERS vary the daemon's
// concurrency):
//
//	KMS_LOAD_CA=rsa2048 KMS_LOAD_USERS=32 KMS_LOAD_RENEWALS=640 \
//	  go test ./cmd/kms-load -run TestLoadInProcess -cpuprofile cpu.out
func TestLoadInProcess(t *testing.T) {
	kt := policy.P256
	if os.Getenv("KMS_LOAD_CA") == "rsa2048" {
		kt = policy.RSA2048
	}
	users := envInt(t, "KMS_LOAD_USERS", 3)
	renewals := envInt(t, "KMS_LOAD_RENEWALS", 3*users)
	conc := envInt(t, "KMS_LOAD_CONCURRENCY", 2)
	d := startDaemon(t, kt)

	var stdout, stderr bytes.Buffer
	code := run(context.Background(), d.flagsFor("--users", strconv.Itoa(users), "--renewals", strconv.Itoa(renewals),
		"--concurrency", strconv.Itoa(conc), "--sign-time", "100ms", "--timeout", "5m", "--json"), &stdout, &stderr)
	if code != 0 {
		t.Fatalf("kms-load exited %d:\n%s", code, stderr.String())
	}
	var r report
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("report %q: %v", stdout.String(), err)
	}
	t.Logf("%+v", r)
	if r.Renewals != renewals || r.Users != users || r.SignRateBefore <= 0 || r.Bound <= 0 {
		t.Fatalf("report %+v: want %d renewals by %d users and a signing rate", r, renewals, users)
	}
	if !strings.Contains(r.SignKeys, "the daemon's issuing CA and KMS keys") {
		t.Errorf("signing rate measured with %s, want the daemon's own keys", r.SignKeys)
	}

	// The daemon's records agree: each user holds one current certificate
	// and one superseded for every renewal.
	ctx := context.Background()
	list, err := d.svc.ListUsers(ctx, kms.UserActive)
	if err != nil {
		t.Fatal(err)
	}
	total := 0
	for _, u := range list {
		if !strings.HasPrefix(u.Email, "load-") {
			continue
		}
		detail, err := d.svc.GetUser(ctx, u.Email)
		if err != nil {
			t.Fatal(err)
		}
		current := 0
		for _, c := range detail.Certificates {
			if c.State == kms.CertCurrent {
				current++
			}
		}
		if current != 1 {
			t.Errorf("%s has %d current certificates, want 1", u.Email, current)
		}
		total += len(detail.Certificates) - 1
	}
	if len(list) != users || total != renewals {
		t.Fatalf("%d active users with %d renewals between them; want %d and %d", len(list), total, users, renewals)
	}
}

func TestPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		var out []time.Duration
		for _, x := range v {
			out = append(out, time.Duration(x)*time.Millisecond)
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = i + 1
	}
	for _, tt := range []struct {
		in   []time.Duration
		q    float64
		want time.Duration
	}{
		{nil, 0.5, 0},
		{ms(7), 0.99, 7 * time.Millisecond},
		{ms(1, 2, 3, 4), 0.5, 2 * time.Millisecond},
		{ms(hundred...), 0.5, 50 * time.Millisecond},
		{ms(hundred...), 0.99, 99 * time.Millisecond},
		{ms(hundred...), 1, 100 * time.Millisecond},
	} {
		if got := percentile(tt.in, tt.q); got != tt.want {
			t.Errorf("percentile(%d values, %v) = %v, want %v", len(tt.in), tt.q, got, tt.want)
		}
	}
}

func TestNewReport(t *testing.T) {
	o := &outcome{Renewals: 4, Elapsed: 2 * time.Second, Latencies: []time.Duration{4, 1, 3, 2}}
	r := newReport(o, options{Users: 2, Concurrency: 1}, "keys", 2, 300, 100)
	if r.PerSecond != 2 || r.Bound != 100 || r.Ratio != 0.02 {
		t.Fatalf("rate %v, bound %v, ratio %v; want 2, 100 (mean of 300 and 100, halved), 0.02", r.PerSecond, r.Bound, r.Ratio)
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{
		{"--data-dir", "x", "--smtp", "192.0.2.1:25"},
		{"--data-dir", "x", "--http", "example.com:8025"},
		{"--smtp", "127.0.0.1:2525"}, // no --data-dir
		{"--spawn", "--users", "0"},
		{"--spawn", "extra"},
	} {
		var stderr bytes.Buffer
		if code := run(context.Background(), args, &bytes.Buffer{}, &stderr); code != 2 {
			t.Errorf("kms-load %q exited %d, want 2 (usage)", args, code)
		} else if stderr.Len() == 0 {
			t.Errorf("kms-load %q said nothing", args)
		}
	}
}

// TestSpawnConfig: the configuration --spawn writes is one kms accepts,
// with the key type and connection cap the run needs.
func TestSpawnConfig(t *testing.T) {
	dir := t.TempDir()
	path, err := writeConfig(dir, "127.0.0.1:1", "127.0.0.1:2", 16)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path, nil)
	if err != nil {
		t.Fatalf("kms rejects the configuration kms-load writes: %v", err)
	}
	if cfg.CA.KeyType != policy.RSA2048 || cfg.SMTP.MaxConnectionsPerIP < 16 || cfg.DataDir != dir || cfg.Relay.Addr != "" {
		t.Fatalf("config %+v: want rsa2048, at least 16 connections, data_dir %s, Maildir delivery", cfg, dir)
	}
}

// TestSpawn runs the generator as documented, with --spawn: it builds and
// starts `kms serve`, runs a small load and stops the daemon.
func TestSpawn(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts the kms binary")
	}
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"--spawn", "--data-dir", t.TempDir(), "--users", "2", "--renewals", "2",
		"--concurrency", "2", "--sign-time", "100ms", "--timeout", "4m"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("kms-load --spawn exited %d:\n%s", code, stderr.String())
	}
	if !strings.Contains(stdout.String(), "renewals:        2 by 2 users") || !strings.Contains(stdout.String(), "RSA-2048, RSA-2048") {
		t.Fatalf("report:\n%s", stdout.String())
	}
}

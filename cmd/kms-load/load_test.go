package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"io"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmsmail/kms/config"
	"github.com/kmsmail/kms/kms"
	"github.com/kmsmail/kms/mail"
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
// daemon assembled in-process that relays its replies to the generator's
// SMTP sink (--sink), as --spawn sets it up, and checks that every renewal
// was answered, verified and recorded; it asserts no timing. It is small
// by default (3 users, 3 renewals each, so later renewals are signed with
// the certificate taken from the reply before); KMS_LOAD_USERS,
// KMS_LOAD_RENEWALS, KMS_LOAD_CONCURRENCY and KMS_LOAD_CA=rsa2048 make it a
// profiling run of the daemon's side (KMS_LOAD_WORKERS and
// KMS_LOAD_OUTBOX_WORKERS vary the daemon's concurrency):
//
//	KMS_LOAD_CA=rsa2048 KMS_LOAD_USERS=640 KMS_LOAD_RENEWALS=640 \
//	  go test ./cmd/kms-load -run TestLoadInProcess -cpuprofile cpu.out
func TestLoadInProcess(t *testing.T) {
	kt := policy.P256
	if os.Getenv("KMS_LOAD_CA") == "rsa2048" {
		kt = policy.RSA2048
	}
	users := envInt(t, "KMS_LOAD_USERS", 3)
	renewals := envInt(t, "KMS_LOAD_RENEWALS", 3*users)
	conc := envInt(t, "KMS_LOAD_CONCURRENCY", 2)
	sink := freeAddr(t)
	d := startDaemon(t, daemonOptions{KeyType: kt, Relay: sink})
	r := runOK(t, d, "--sink", sink, "--users", strconv.Itoa(users), "--renewals", strconv.Itoa(renewals),
		"--concurrency", strconv.Itoa(conc))
	if r.Renewals != renewals || r.Users != users || r.SignRateBefore <= 0 || r.Bound <= 0 {
		t.Fatalf("report %+v: want %d renewals by %d users and a signing rate", r, renewals, users)
	}
	if !strings.Contains(r.SignKeys, "the daemon's issuing CA and KMS keys") {
		t.Errorf("signing rate measured with %s, want the daemon's own keys", r.SignKeys)
	}
	if r.RepliesVia != "the SMTP sink" || !strings.Contains(r.Verified, "after the timed window") {
		t.Errorf("replies via %q, verified %q; want the sink, after the timed window", r.RepliesVia, r.Verified)
	}
	// Nothing failed: no SMTP transaction was sent again, no reply came twice.
	if r.Retries != 0 || r.Redeliveries != 0 {
		t.Errorf("%d SMTP retries, %d replies received again in a normal run; want 0 and 0", r.Retries, r.Redeliveries)
	}
	// The daemon runs in this process, so only this process's CPU is
	// known; it did something in the window.
	if r.KMSCPU != nil || r.LoadCPU.Seconds <= 0 || r.LoadCPU.MsPerRenewal <= 0 {
		t.Errorf("CPU: kms-load %+v, kms %+v; want kms-load's only", r.LoadCPU, r.KMSCPU)
	}
	checkRecords(t, d, users, renewals)
}

// TestLoadOneRenewalEach: without --users, every user renews once, each
// with a request prepared before the clock; --cpuprofile writes a profile
// of the window.
func TestLoadOneRenewalEach(t *testing.T) {
	sink := freeAddr(t)
	d := startDaemon(t, daemonOptions{Relay: sink})
	args := []string{"--sink", sink, "--renewals", "4", "--concurrency", "2"}
	profile := filepath.Join(t.TempDir(), "cpu.out")
	// One CPU profile at a time: not while go test -cpuprofile makes one.
	testProfiling := flag.Lookup("test.cpuprofile") != nil && flag.Lookup("test.cpuprofile").Value.String() != ""
	if !testProfiling {
		args = append(args, "--cpuprofile", profile)
	}
	r := runOK(t, d, args...)
	if r.Renewals != 4 || r.Users != 4 {
		t.Fatalf("report %+v: want 4 renewals by 4 users", r)
	}
	checkRecords(t, d, 4, 4)
	if fi, err := os.Stat(profile); !testProfiling && (err != nil || fi.Size() == 0) {
		t.Fatalf("--cpuprofile %s: %v, %v; want a profile", profile, fi, err)
	}
}

// TestLoadMaildir: without --sink, replies are taken from the daemon's
// Maildir, and verified after the timed window just the same.
func TestLoadMaildir(t *testing.T) {
	d := startDaemon(t, daemonOptions{})
	r := runOK(t, d, "--users", "2", "--renewals", "4", "--concurrency", "2")
	if r.Renewals != 4 || r.Users != 2 || r.RepliesVia != "the Maildir" {
		t.Fatalf("report %+v: want 4 renewals by 2 users, through the Maildir", r)
	}
	checkRecords(t, d, 2, 4)
}

// TestLoadFailsVerification: a renewal reply that the daemon's side alters
// on its way to the sink is matched during the timed window like any
// other (and its certificate used for the user's next renewal), then fails
// verification after the window, which fails the run, naming the reply.
func TestLoadFailsVerification(t *testing.T) {
	const users, renewals = 2, 4
	for _, tt := range []struct {
		name string
		edit func(to []string, msg []byte) ([]string, []byte)
		want string
	}{
		{"tampered text", func(to []string, msg []byte) ([]string, []byte) {
			// The first letter of the signed text, its case swapped.
			i := bytes.Index(msg, []byte("quoted-printable\r\n\r\n"))
			if i < 0 {
				t.Errorf("reply has no quoted-printable text:\n%s", msg)
				return to, msg
			}
			i += len("quoted-printable\r\n\r\n")
			msg = bytes.Clone(msg)
			msg[i] ^= 0x20
			return to, msg
		}, "the KMS signature does not verify"},
		{"another user's mailbox", func(to []string, msg []byte) ([]string, []byte) {
			// To and the envelope name the other user; nothing signed
			// changes, so only the address check can tell.
			other := otherUser(t, to[0], users)
			end := bytes.Index(msg, []byte("\r\n\r\n"))
			hdr := bytes.ReplaceAll(msg[:end], []byte(to[0]), []byte(other))
			return []string{other}, append(hdr, msg[end:]...)
		}, "not to the user"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sink := freeAddr(t)
			// Enrollment replies come first, all of them: the next reply
			// to a kms-load request is the first renewal's.
			tr := &tamperTransport{nth: users + 1, edit: tt.edit}
			d := startDaemon(t, daemonOptions{Relay: sink, Wrap: func(next mail.Transport) mail.Transport {
				tr.next = next
				return tr
			}})
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), d.flagsFor("--sink", sink, "--users", strconv.Itoa(users), "--renewals", strconv.Itoa(renewals),
				"--concurrency", "2", "--sign-time", "10ms", "--timeout", "2m"), &stdout, &stderr)
			if tr.hits() != 1 {
				t.Fatalf("the reply was altered %d times, want once; kms-load exited %d:\n%s", tr.hits(), code, stderr.String())
			}
			if code != 1 {
				t.Fatalf("kms-load exited %d, want 1 (a reply fails verification):\n%s", code, stderr.String())
			}
			msg := stderr.String()
			t.Logf("kms-load said:\n%s", msg)
			if !strings.Contains(msg, tt.want) || !strings.Contains(msg, "the reply to load-") || !strings.Contains(msg, "renewal request <kms-load-") {
				t.Fatalf("kms-load said:\n%s\nwant the reply named and %q", msg, tt.want)
			}
			if stdout.Len() != 0 {
				t.Errorf("a failed run printed a report:\n%s", stdout.String())
			}
		})
	}
}

// tamperTransport alters the nth message that answers a kms-load request
// (by its In-Reply-To) on its way to the next transport.
type tamperTransport struct {
	next mail.Transport
	nth  int
	edit func(to []string, msg []byte) ([]string, []byte)

	mu    sync.Mutex
	seen  int
	edits int
}

func (tt *tamperTransport) Deliver(ctx context.Context, from string, to []string, msg []byte, key string) error {
	if bytes.Contains(msg, []byte("\r\nIn-Reply-To: <kms-load-")) {
		tt.mu.Lock()
		tt.seen++
		hit := tt.seen == tt.nth
		if hit {
			tt.edits++
		}
		tt.mu.Unlock()
		if hit {
			to, msg = tt.edit(to, msg)
		}
	}
	return tt.next.Deliver(ctx, from, to, msg, key)
}

func (tt *tamperTransport) hits() int {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	return tt.edits
}

// otherUser is another user of the run than addr (load-RUN-I@DOMAIN).
func otherUser(t *testing.T, addr string, users int) string {
	at := strings.IndexByte(addr, '@')
	dash := strings.LastIndexByte(addr[:max(at, 0)], '-')
	i, err := strconv.Atoi(addr[dash+1 : max(at, dash+1)])
	if at < 0 || dash < 0 || err != nil {
		t.Errorf("recipient %q is not a kms-load user", addr)
		return addr
	}
	return addr[:dash+1] + strconv.Itoa((i+1)%users) + addr[at:]
}

// freeAddr is a free loopback address for the sink, which the daemon must
// know before kms-load starts listening there.
func freeAddr(t *testing.T) string {
	t.Helper()
	addr, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	return addr
}

// runOK runs kms-load against d with a short signing measurement and
// returns its JSON report; the run must succeed.
func runOK(t *testing.T, d *testDaemon, args ...string) report {
	t.Helper()
	var stdout, stderr bytes.Buffer
	args = append(args, "--sign-time", "100ms", "--timeout", "5m", "--json")
	if code := run(context.Background(), d.flagsFor(args...), &stdout, &stderr); code != 0 {
		t.Fatalf("kms-load exited %d:\n%s", code, stderr.String())
	}
	var r report
	if err := json.Unmarshal(stdout.Bytes(), &r); err != nil {
		t.Fatalf("report %q: %v", stdout.String(), err)
	}
	t.Logf("%+v", r)
	return r
}

// checkRecords: the daemon's records agree with the run: each user holds
// one current certificate and one superseded for every renewal.
func checkRecords(t *testing.T, d *testDaemon, users, renewals int) {
	t.Helper()
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
	t0 := time.Now()
	o := &outcome{Renewals: 4, Elapsed: 2 * time.Second, Latencies: []time.Duration{4, 1, 3, 2}, Retries: 3, Redeliveries: 1,
		Arrivals: []time.Time{t0.Add(10 * time.Millisecond), t0.Add(30 * time.Millisecond), t0.Add(25 * time.Millisecond), t0.Add(100 * time.Millisecond)},
		CPU: cpuWindow{Start: cpuSample{at: t0, self: time.Second, daemon: 5 * time.Second, daemonOK: true},
			End: cpuSample{at: t0.Add(2 * time.Second), self: 1200 * time.Millisecond, daemon: 8 * time.Second, daemonOK: true}}}
	r := newReport(o, options{Users: 2, Concurrency: 1}, "keys", 2, 100, 200)
	if r.PerSecond != 2 || r.Bound != 100 || r.Ratio != 0.02 {
		t.Fatalf("rate %v, bound %v, ratio %v; want 2, 100 (the faster of 100 and 200, halved), 0.02", r.PerSecond, r.Bound, r.Ratio)
	}
	if r.LongestPauseMs != 70 {
		t.Errorf("longest pause %v ms, want 70 (from 30 to 100 ms; arrivals out of order are sorted)", r.LongestPauseMs)
	}
	var text strings.Builder
	r.print(&text)
	if !strings.Contains(text.String(), "longest pause:   70.0 ms between two replies") {
		t.Errorf("no longest pause line:\n%s", text.String())
	}
	if !strings.Contains(text.String(), "warning:") {
		t.Errorf("signing rates 100 and 200 without a warning:\n%s", text.String())
	}
	if r.Retries != 3 || r.Redeliveries != 1 || !strings.Contains(text.String(), "retries:         3 (SMTP transactions sent again after a failure); redeliveries: 1 ") {
		t.Errorf("retries %d, redeliveries %d; want 3 and 1, in the text too:\n%s", r.Retries, r.Redeliveries, text.String())
	}
	text.Reset()
	newReport(o, options{}, "keys", 2, 195, 200).print(&text)
	if strings.Contains(text.String(), "warning:") {
		t.Errorf("signing rates 195 and 200 with a warning:\n%s", text.String())
	}
	if r.LoadCPU != (cpuUse{Seconds: 0.2, Cores: 0.1, MsPerRenewal: 50}) {
		t.Errorf("kms-load CPU %+v, want 0.2 s, 0.1 cores, 50 ms a renewal", r.LoadCPU)
	}
	if r.KMSCPU == nil || *r.KMSCPU != (cpuUse{Seconds: 3, Cores: 1.5, MsPerRenewal: 750}) {
		t.Errorf("kms CPU %+v, want 3 s, 1.5 cores, 750 ms a renewal", r.KMSCPU)
	}
	// Two signatures at 200/s on 2 goroutines are 20 ms of CPU: 20 of 750.
	if want := 20.0 / 750; math.Abs(r.SignShare-want) > 1e-9 {
		t.Errorf("signature share %v, want %v", r.SignShare, want)
	}
	if r.OtherMs != 730 {
		t.Errorf("other work %v ms a renewal, want 730 (750 less the signatures' 20)", r.OtherMs)
	}
	text.Reset()
	r.print(&text)
	if !strings.Contains(text.String(), "signature share: 2.7% of the daemon's CPU a renewal is its 2 signatures (20.000 ms at the raw rate)") {
		t.Errorf("no signature share line:\n%s", text.String())
	}
	if !strings.Contains(text.String(), "other work:      730.000 ms of the daemon's CPU a renewal beside its signatures") {
		t.Errorf("no other work line:\n%s", text.String())
	}
	o.Arrivals = o.Arrivals[:1]
	if r := newReport(o, options{}, "keys", 2, 100, 100); r.LongestPauseMs != 0 {
		t.Errorf("longest pause %v ms with one reply, want 0", r.LongestPauseMs)
	}
	o.CPU.End.daemonOK = false
	if r := newReport(o, options{}, "keys", 2, 300, 100); r.KMSCPU != nil || r.SignShare != 0 || r.OtherMs != 0 {
		t.Errorf("kms CPU %+v, signature share %v, other work %v without a daemon process; want none", r.KMSCPU, r.SignShare, r.OtherMs)
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{
		{"--data-dir", "x", "--smtp", "192.0.2.1:25"},
		{"--data-dir", "x", "--http", "example.com:8025"},
		{"--data-dir", "x", "--sink", "192.0.2.1:25"},
		{"--smtp", "127.0.0.1:2525"}, // no --data-dir
		{"--spawn", "--users", "0"},
		{"--spawn", "--renewals", "0"}, // and so no users
		{"--spawn", "--daemon-pid", "1"},
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

// TestUsersDefault: one renewal per user unless --users says otherwise.
func TestUsersDefault(t *testing.T) {
	for _, tt := range []struct {
		args  []string
		users int
	}{
		{[]string{"--spawn"}, 320},
		{[]string{"--spawn", "--renewals", "3000"}, 3000},
		{[]string{"--spawn", "--renewals", "3000", "--users", "64"}, 64},
		{[]string{"--spawn", "--users", "64", "--renewals", "3000"}, 64},
	} {
		f, err := parseFlags(tt.args, io.Discard)
		if err != nil {
			t.Fatalf("%q: %v", tt.args, err)
		}
		if f.o.Users != tt.users {
			t.Errorf("%q: %d users, want %d", tt.args, f.o.Users, tt.users)
		}
	}
}

// TestSpawnConfig: the configuration --spawn writes is one kms accepts,
// with the key type, connection cap and relay the run needs.
func TestSpawnConfig(t *testing.T) {
	dir := t.TempDir()
	path, err := writeConfig(spawnOptions{DataDir: dir, smtpAddr: "127.0.0.1:1", httpAddr: "127.0.0.1:2", Concurrency: 16,
		Relay: "127.0.0.1:3"})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path, nil)
	if err != nil {
		t.Fatalf("kms rejects the configuration kms-load writes: %v", err)
	}
	if cfg.CA.KeyType != policy.RSA2048 || cfg.SMTP.MaxConnectionsPerIP < 16 || cfg.DataDir != dir {
		t.Fatalf("config %+v: want rsa2048, at least 16 connections, data_dir %s", cfg, dir)
	}
	if cfg.Relay.Addr != "127.0.0.1:3" || cfg.Relay.StartTLS || cfg.Relay.Rate != 0 || cfg.Relay.Username != "" {
		t.Fatalf("relay %+v: want the sink, no STARTTLS, no rate limit, no authentication", cfg.Relay)
	}
	if cfg.Address != "kms@example.com" || cfg.AdminAddress != "postmaster@example.com" {
		t.Fatalf("addresses %s, %s: want kms-load's defaults", cfg.Address, cfg.AdminAddress)
	}
}

// TestSpawn runs the generator as documented, with --spawn: it builds and
// starts `kms serve` relaying to the generator's sink, runs a small load,
// reports the daemon's CPU time and stops the daemon.
func TestSpawn(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts the kms binary")
	}
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), []string{"--spawn", "--data-dir", t.TempDir(), "--renewals", "2",
		"--concurrency", "2", "--sign-time", "100ms", "--timeout", "4m"}, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("kms-load --spawn exited %d:\n%s", code, stderr.String())
	}
	out := stdout.String()
	if !strings.Contains(out, "renewals:        2 by 2 users") || !strings.Contains(out, "RSA-2048, RSA-2048") ||
		!strings.Contains(out, "retries:         0 (SMTP transactions sent again after a failure); redeliveries: 0 ") ||
		!strings.Contains(out, "2 replies verified after the timed window") || !strings.Contains(out, "CPU, kms:        ") ||
		strings.Contains(out, "not measured") {
		t.Fatalf("report:\n%s", out)
	}
}

// Command kms-load is a load generator for the kms daemon's mail path. It
// enrolls users by mail, then has them send signed same-key renewal
// requests over SMTP on loopback, and receives the certificate replies as
// the users' mail clients would. It reports renewals per second and the
// p50/p99 latency from the SMTP 250 to the reply's arrival, beside the raw
// RSA signing rate of the daemon's own keys measured in the same run, just
// before the timed window and after it: each renewal costs the daemon two
// signatures (the certificate and the signed reply), so half the faster of
// the two rates bounds the renewal rate. When the two differ by more than
// 10% the report warns that something else was using the CPUs.
//
//	kms-load --spawn [--kms BIN] [--data-dir DIR] [--renewals M] [--users N] [--concurrency C] [--cpuprofile FILE]
//	kms-load --data-dir DIR --smtp 127.0.0.1:2525 --http 127.0.0.1:8025 [--sink 127.0.0.1:PORT] [--daemon-pid PID] [...]
//
// It measures the daemon, not itself. In production the mail clients are
// on other machines, while here the generator shares the CPUs with the
// daemon, so it does as little as it can while the clock runs:
//
//   - Each user renews once by default (--users defaults to --renewals), as
//     a real population does. With fewer users than renewals, a user's
//     later renewals are signed with the certificate of its previous reply.
//   - Every user's first renewal request is built and signed after the
//     enrollment phase, before the clock starts, and the SMTP connections
//     are open; the timed window only sends prepared bytes (and signs a
//     user's later renewals, which need the new certificate).
//   - Requests go out with mail/smtpclient, the client the daemon's relay
//     uses: pipelined (RFC 2920), and since the daemon's go-smtp server
//     offers CHUNKING, each as one write of MAIL, RCPT and BDAT LAST with
//     the message (RFC 3030), as an MTA that sends BDAT delivers to the
//     KMS (Postfix documents BDAT for its server only). The sink is a
//     small one of its own, which reads a message a line at a time where
//     go-smtp's server reads a byte at a time (0.43 ms of CPU a renewal
//     instead of ~0.65).
//   - Replies are only matched to their requests (In-Reply-To) in the
//     window, and, for a user with another renewal to send, its new
//     certificate is taken out without verification. Only replies verified
//     after the timed window count: each is checked as a mail client would,
//     addressed and delivered to the user, the KMS signature chaining to
//     the CA roots of GET /ca.pem, a new certificate for the user's address
//     and key. Any reply that fails fails the run (exit 1), naming it.
//
// It survives a daemon that fails or restarts during the run as a mail
// client would, and reports what that took (0 and 0 in a normal run):
//
//   - An SMTP transaction that fails with the connection refused or cut,
//     or with a 4xx, is sent again on a new connection after a short
//     backoff, until --timeout: the same prepared bytes, never a message
//     whose 250 was seen. The daemon may have committed a message whose
//     250 was lost; it recognises the same bytes by their digest and does
//     not act on them twice. The report counts these retries.
//   - A request answered more than once is accepted only when every copy
//     has the same Message-ID and carries the same certificate: the relay
//     transport delivers at least once, and a daemon that crashed after
//     the relay's 250 sends the same reply again. The report counts these
//     redeliveries; a copy with another certificate (the request acted on
//     twice) or another Message-ID fails the run.
//
// The window runs from the first renewal sent to the last reply in. With
// one renewal per user nothing waits for a reply before sending, so the
// daemon takes requests in faster than it answers them: the rate is its
// throughput, and the latency mostly time queued inside it. The report
// gives the CPU time that this process (user + system, from getrusage)
// and, with --spawn or --daemon-pid, the daemon (from /proc/PID/stat) used
// in the window, as cores and as milliseconds per renewal, and splits the
// daemon's into its signatures (at the raw rate) and the other work, the
// part that code changes move and a busy host inflates most; --cpuprofile
// writes this process's CPU profile of the window.
//
// With --spawn it starts `kms serve` itself (building it unless --kms names
// a binary) with an RSA-2048 issuing CA and KMS key, and an SMTP sink of its
// own on a free loopback port as the daemon's relay (relay.starttls false,
// relay.rate 0), and stops both at the end. The sink accepts mail only for
// the run's users and the admin address, and keeps each message and its
// arrival time in memory.
//
// Otherwise it drives a running daemon whose data directory (admin token,
// CA keys, Maildir) it can read. By default it polls the daemon's Maildir
// (DATA_DIR/mail, or --maildir) for the replies. With --sink ADDR it
// listens on ADDR (loopback) with its SMTP sink instead, for a daemon
// whose configuration has
//
//	relay: {addr: ADDR, starttls: false, rate: 0}
//
// and --admin-address must then be the daemon's admin_address. It talks to
// loopback addresses only, stops by itself after --timeout, and exits 0
// when every renewal was answered and verified, 1 when the run failed, 2 on
// bad usage.
package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/kmsmail/kms/admin"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// flags are the command line.
type flags struct {
	spawn, keep, json               bool
	kmsBin, dataDir                 string
	smtpAddr, httpAddr, sinkAddr    string
	maildir, domain, address, admin string
	cpuProfile                      string
	signFor                         time.Duration
	o                               options
}

func parseFlags(args []string, stderr io.Writer) (*flags, error) {
	f := &flags{}
	fs := flag.NewFlagSet("kms-load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: kms-load --spawn [--kms BIN] [--renewals M] [--users N] [--concurrency C] [flags]\n"+
			"       kms-load --data-dir DIR --smtp ADDR --http ADDR [--sink ADDR] [--daemon-pid PID] [flags]\n\n"+
			"Measures renewals by mail through a kms daemon on loopback; only replies verified after the timed window count.\n\n")
		fs.PrintDefaults()
	}
	fs.BoolVar(&f.spawn, "spawn", false, "start kms serve for the run (RSA-2048 CA, replies relayed to kms-load's SMTP sink) and stop it after")
	fs.StringVar(&f.kmsBin, "kms", "", "with --spawn: the kms `binary` (default: go build ./cmd/kms of this module)")
	fs.BoolVar(&f.keep, "keep", false, "with --spawn and no --data-dir: keep the temporary data directory")
	fs.StringVar(&f.dataDir, "data-dir", "", "the daemon's data `directory` (admin.token, ca/, mail/)")
	fs.StringVar(&f.smtpAddr, "smtp", "127.0.0.1:2525", "the daemon's SMTP `address` (loopback)")
	fs.StringVar(&f.httpAddr, "http", "127.0.0.1:8025", "the daemon's admin HTTP `address` (loopback)")
	fs.StringVar(&f.sinkAddr, "sink", "", "receive the replies with an SMTP sink listening on this loopback `address`, the daemon's relay.addr\n"+
		"(default with --spawn: a free port; without: poll the Maildir)")
	fs.StringVar(&f.maildir, "maildir", "", "without --sink: the daemon's Maildir (default: DATA_DIR/mail)")
	fs.StringVar(&f.domain, "domain", "example.com", "a mail `domain` the daemon serves, for the users")
	fs.StringVar(&f.address, "kms-address", "kms@example.com", "the KMS `address` requests go to")
	fs.StringVar(&f.admin, "admin-address", "postmaster@example.com", "the daemon's admin_address, whose mail the sink also accepts (with --spawn: the one configured)")
	fs.IntVar(&f.o.Users, "users", 0, "users, each enrolled by mail first (default: --renewals, one renewal each)")
	fs.IntVar(&f.o.Renewals, "renewals", 320, "renewal requests in all, spread over the users")
	fs.IntVar(&f.o.Concurrency, "concurrency", 4, "SMTP connections sending at once")
	fs.StringVar(&f.o.UserKey, "user-key", "p256", "the users' key type: p256 or rsa2048")
	fs.DurationVar(&f.o.Timeout, "timeout", 10*time.Minute, "give up after this long")
	fs.DurationVar(&f.signFor, "sign-time", 3*time.Second, "how long the raw signing rate is measured, before and after")
	fs.IntVar(&f.o.DaemonPID, "daemon-pid", 0, "without --spawn: the daemon's process `id`, to report its CPU time")
	fs.StringVar(&f.cpuProfile, "cpuprofile", "", "write kms-load's CPU profile of the timed window to `file`")
	fs.BoolVar(&f.json, "json", false, "print the report as JSON")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	usersSet := false
	fs.Visit(func(fl *flag.Flag) { usersSet = usersSet || fl.Name == "users" })
	if !usersSet {
		f.o.Users = f.o.Renewals
	}
	if f.o.Users <= 0 || f.o.Concurrency <= 0 || f.o.Renewals < 0 || f.o.Timeout <= 0 {
		return nil, errors.New("--users, --concurrency and --timeout must be positive and --renewals not negative")
	}
	if f.sinkAddr != "" {
		if err := loopback(f.sinkAddr); err != nil {
			return nil, fmt.Errorf("--sink: %w", err)
		}
	}
	if f.spawn {
		if f.o.DaemonPID != 0 {
			return nil, errors.New("--daemon-pid is for a daemon kms-load did not start; --spawn knows its own")
		}
		return f, nil
	}
	if f.dataDir == "" {
		return nil, errors.New("--data-dir is required without --spawn: the admin token and the CA keys are in it")
	}
	if f.o.DaemonPID < 0 {
		return nil, errors.New("--daemon-pid must be a process id")
	}
	for _, a := range []string{f.smtpAddr, f.httpAddr} {
		if err := loopback(a); err != nil {
			return nil, err
		}
	}
	return f, nil
}

// loopback refuses addresses that are not on this machine's loopback: the
// generator is not for other people's servers.
func loopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("address %q is not a loopback address (127.0.0.1, ::1, localhost); kms-load only talks to a local daemon", addr)
	}
	return nil
}

// run is the program; it returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f, err := parseFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "kms-load: %v\n", err)
		return 2
	}
	f.o.Log = stderr
	if err := f.run(ctx, stdout, stderr); err != nil {
		fmt.Fprintf(stderr, "kms-load: %v\n", err)
		return 1
	}
	return 0
}

func (f *flags) run(ctx context.Context, stdout, stderr io.Writer) (err error) {
	if f.cpuProfile != "" {
		pf, err := os.Create(f.cpuProfile)
		if err != nil {
			return fmt.Errorf("--cpuprofile: %w", err)
		}
		defer func() {
			if cerr := pf.Close(); cerr != nil && err == nil {
				err = fmt.Errorf("--cpuprofile: %w", cerr)
			}
		}()
		f.o.CPUProfile = pf
	}
	if f.spawn && f.dataDir == "" {
		if f.dataDir, err = os.MkdirTemp("", "kms-load-"); err != nil {
			return err
		}
		if !f.keep {
			defer os.RemoveAll(f.dataDir)
		}
	}
	// The sink is up before the daemon starts, so that the daemon's
	// configuration can name it, and closes after the daemon stops.
	var sk *sink
	if f.spawn || f.sinkAddr != "" {
		addr := f.sinkAddr
		if addr == "" {
			addr = "127.0.0.1:0"
		}
		if sk, err = startSink(addr, f.admin, stderr); err != nil {
			return err
		}
		defer sk.close()
	}
	if f.spawn {
		fmt.Fprintf(stderr, "starting kms serve in %s, relaying to the SMTP sink on %s\n", f.dataDir, sk.addr)
		d, err := spawn(ctx, spawnOptions{Binary: f.kmsBin, DataDir: f.dataDir, Concurrency: f.o.Concurrency,
			Relay: sk.addr, KMSAddress: f.address, AdminAddress: f.admin, Domain: f.domain})
		if err != nil {
			return err
		}
		defer func() {
			if serr := d.stop(); serr != nil && err == nil {
				err = serr
			}
		}()
		f.smtpAddr, f.httpAddr = d.smtpAddr, d.httpAddr
		f.o.DaemonPID = d.pid()
	}
	if f.maildir == "" {
		f.maildir = filepath.Join(f.dataDir, "mail")
	}
	t, err := f.target(ctx)
	if err != nil {
		return err
	}
	t.Sink = sk
	keys, keysDesc, err := signingKeys(f.dataDir)
	if err != nil {
		return err
	}
	workers := runtime.NumCPU()
	var (
		loadBefore string
		before     float64
	)
	f.o.BeforeWindow = func(ctx context.Context) (err error) {
		loadBefore = loadAverage()
		before, err = signRate(ctx, keys, workers, f.signFor)
		return err
	}
	out, err := runLoad(ctx, t, f.o)
	if err != nil {
		return err
	}
	if sk != nil {
		if n := sk.adminMail(); n > 0 {
			fmt.Fprintf(stderr, "kms-load: note: the daemon sent %d messages to the admin address %s during the run\n", n, f.admin)
		}
	}
	after, err := signRate(ctx, keys, workers, f.signFor)
	if err != nil {
		return err
	}
	r := newReport(out, f.o, keysDesc, workers, before, after)
	r.RepliesVia = "the SMTP sink"
	if sk == nil {
		r.RepliesVia = "the Maildir"
	}
	r.LoadBefore, r.LoadAfter = loadBefore, loadAverage()
	if f.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	r.print(stdout)
	return nil
}

// target reads what the run needs of the daemon: the admin token, the CA
// chain to verify replies with.
func (f *flags) target(ctx context.Context) (target, error) {
	tokenPath := filepath.Join(f.dataDir, admin.TokenFile)
	token, err := os.ReadFile(tokenPath)
	if err != nil {
		return target{}, fmt.Errorf("admin token: %w (is --data-dir the daemon's data_dir?)", err)
	}
	roots, err := fetchRoots(ctx, "http://"+f.httpAddr+"/ca.pem")
	if err != nil {
		return target{}, err
	}
	return target{SMTPAddr: f.smtpAddr, Admin: admin.NewClient("http://"+f.httpAddr, strings.TrimSpace(string(token))),
		Maildir: f.maildir, KMSAddress: f.address, Domain: f.domain, Roots: roots}, nil
}

// fetchRoots gets the KMS CA chain and trusts every certificate in it.
func fetchRoots(ctx context.Context, url string) (*x509.CertPool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("CA chain: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("CA chain: GET %s: HTTP %d %v", url, resp.StatusCode, err)
	}
	pool := x509.NewCertPool()
	for block, rest := pem.Decode(b); block != nil; block, rest = pem.Decode(rest) {
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("CA chain from %s: %w", url, err)
		}
		pool.AddCert(c)
	}
	return pool, nil
}

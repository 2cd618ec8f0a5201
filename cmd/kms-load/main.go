// Command kms-load is a load generator for the kms daemon's mail path. It
// enrolls users by mail, then has them send signed same-key renewal
// requests over SMTP on loopback, and counts the certificate replies
// delivered into the daemon's Maildir. It reports renewals per second and
// the p50/p99 latency from the SMTP 250 to the reply file appearing, beside
// the raw RSA signing rate of the daemon's own keys measured in the same
// run: each renewal costs the daemon two signatures (the certificate and
// the signed reply), so half that rate bounds the renewal rate.
//
//	kms-load --spawn [--kms BIN] [--data-dir DIR] [--users N] [--renewals M] [--concurrency C]
//	kms-load --data-dir DIR --smtp 127.0.0.1:2525 --http 127.0.0.1:8025 [...]
//
// With --spawn it starts `kms serve` itself (building it unless --kms names
// a binary) with an RSA-2048 issuing CA and KMS key and Maildir delivery,
// and stops it at the end. Otherwise it drives a running daemon whose data
// directory (admin token, Maildir, CA keys) it can read. It talks to
// loopback addresses only, stops by itself after --timeout, and exits 0
// when every renewal was answered, 1 when the run failed, 2 on bad usage.
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
	spawn, keep, json        bool
	kmsBin, dataDir          string
	smtpAddr, httpAddr       string
	maildir, domain, address string
	signFor                  time.Duration
	o                        options
}

func parseFlags(args []string, stderr io.Writer) (*flags, error) {
	f := &flags{}
	fs := flag.NewFlagSet("kms-load", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.BoolVar(&f.spawn, "spawn", false, "start `kms serve` for the run (RSA-2048 CA, Maildir delivery) and stop it after")
	fs.StringVar(&f.kmsBin, "kms", "", "with --spawn: the kms `binary` (default: go build ./cmd/kms of this module)")
	fs.BoolVar(&f.keep, "keep", false, "with --spawn and no --data-dir: keep the temporary data directory")
	fs.StringVar(&f.dataDir, "data-dir", "", "the daemon's data `directory` (admin.token, mail/, ca/)")
	fs.StringVar(&f.smtpAddr, "smtp", "127.0.0.1:2525", "the daemon's SMTP `address` (loopback)")
	fs.StringVar(&f.httpAddr, "http", "127.0.0.1:8025", "the daemon's admin HTTP `address` (loopback)")
	fs.StringVar(&f.maildir, "maildir", "", "the daemon's Maildir (default: DATA_DIR/mail)")
	fs.StringVar(&f.domain, "domain", "example.com", "a mail `domain` the daemon serves, for the users")
	fs.StringVar(&f.address, "kms-address", "kms@example.com", "the KMS `address` requests go to")
	fs.IntVar(&f.o.Users, "users", 32, "users, each enrolled by mail first")
	fs.IntVar(&f.o.Renewals, "renewals", 320, "renewal requests in all, spread over the users")
	fs.IntVar(&f.o.Concurrency, "concurrency", 4, "SMTP connections sending at once")
	fs.StringVar(&f.o.UserKey, "user-key", "p256", "the users' key type: p256 or rsa2048")
	fs.DurationVar(&f.o.Timeout, "timeout", 10*time.Minute, "give up after this long")
	fs.DurationVar(&f.signFor, "sign-time", 3*time.Second, "how long the raw signing rate is measured, before and after")
	fs.BoolVar(&f.json, "json", false, "print the report as JSON")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if f.o.Users <= 0 || f.o.Concurrency <= 0 || f.o.Renewals < 0 || f.o.Timeout <= 0 {
		return nil, errors.New("--users, --concurrency and --timeout must be positive and --renewals not negative")
	}
	if !f.spawn {
		if f.dataDir == "" {
			return nil, errors.New("--data-dir is required without --spawn: the admin token and the Maildir are in it")
		}
		for _, a := range []string{f.smtpAddr, f.httpAddr} {
			if err := loopback(a); err != nil {
				return nil, err
			}
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
	if f.spawn {
		if f.dataDir == "" {
			if f.dataDir, err = os.MkdirTemp("", "kms-load-"); err != nil {
				return err
			}
			if !f.keep {
				defer os.RemoveAll(f.dataDir)
			}
		}
		fmt.Fprintf(stderr, "starting kms serve in %s\n", f.dataDir)
		d, err := spawn(ctx, spawnOptions{Binary: f.kmsBin, DataDir: f.dataDir, Concurrency: f.o.Concurrency})
		if err != nil {
			return err
		}
		defer func() {
			if serr := d.stop(); serr != nil && err == nil {
				err = serr
			}
		}()
		f.smtpAddr, f.httpAddr = d.smtpAddr, d.httpAddr
	}
	if f.maildir == "" {
		f.maildir = filepath.Join(f.dataDir, "mail")
	}
	t, err := f.target(ctx)
	if err != nil {
		return err
	}
	keys, keysDesc, err := signingKeys(f.dataDir)
	if err != nil {
		return err
	}
	workers := runtime.NumCPU()
	loadBefore := loadAverage()
	before, err := signRate(ctx, keys, workers, f.signFor)
	if err != nil {
		return err
	}
	out, runErr := runLoad(ctx, t, f.o)
	if out == nil {
		return runErr
	}
	after, err := signRate(ctx, keys, workers, f.signFor)
	if err != nil {
		return err
	}
	r := newReport(out, f.o, keysDesc, workers, before, after)
	r.LoadBefore, r.LoadAfter = loadBefore, loadAverage()
	if f.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.Encode(r)
	} else {
		r.print(stdout)
	}
	return runErr
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

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// spawned is a `kms serve` this program started for the run. It can be
// killed (SIGKILL, a crash) and started again on the same configuration,
// data directory and ports, which is how the crash test proves that the
// daemon loses and doubles nothing.
type spawned struct {
	bin        string // the kms binary
	configPath string // the configuration every start uses
	dataDir    string
	smtpAddr   string
	httpAddr   string
	logPath    string // every start's output, appended

	mu     sync.Mutex
	cmd    *exec.Cmd  // the running process; nil once it is known to have exited
	exited chan error // receives cmd's exit, once
}

// spawnOptions say how to start the daemon.
type spawnOptions struct {
	Binary      string // a built kms; "" builds ./cmd/kms of this module into dataDir
	DataDir     string // the daemon's data directory, created if needed
	Concurrency int    // the SMTP connections the run will open
	// smtpAddr and httpAddr are the listeners, chosen by spawn.
	smtpAddr, httpAddr string
	// Relay is the SMTP sink's address: the daemon delivers its mail
	// there, in clear and unthrottled. "" leaves it delivering into its
	// Maildir.
	Relay string
	// KMSAddress, AdminAddress and Domain are the daemon's address,
	// admin_address and only mail domain; empty takes kms@example.com,
	// postmaster@example.com and example.com.
	KMSAddress, AdminAddress, Domain string
}

// spawn writes a configuration for a loopback daemon with an RSA-2048
// issuing CA and KMS key that delivers to o.Relay, starts `kms serve` with
// it and waits until it answers on HTTP and SMTP.
func spawn(ctx context.Context, o spawnOptions) (*spawned, error) {
	if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("--data-dir %s: %w", o.DataDir, err)
	}
	bin := o.Binary
	if bin == "" {
		bin = filepath.Join(o.DataDir, "kms")
		build := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/kmsmail/kms/cmd/kms")
		if out, err := build.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("build kms (run kms-load from the kms module, or pass --kms): %w\n%s", err, out)
		}
	}
	smtpAddr, err := freePort()
	if err != nil {
		return nil, err
	}
	httpAddr, err := freePort()
	if err != nil {
		return nil, err
	}
	o.smtpAddr, o.httpAddr = smtpAddr, httpAddr
	configPath, err := writeConfig(o)
	if err != nil {
		return nil, err
	}
	s := &spawned{bin: bin, configPath: configPath, dataDir: o.DataDir, smtpAddr: smtpAddr, httpAddr: httpAddr,
		logPath: filepath.Join(o.DataDir, "kms.log")}
	// The log starts empty; a start after a crash appends to it.
	if err := os.WriteFile(s.logPath, nil, 0o600); err != nil {
		return nil, err
	}
	// The first start creates an RSA-4096 root and two RSA-2048 keys,
	// which takes seconds on a busy machine.
	if err := s.start(ctx, 3*time.Minute); err != nil {
		return nil, err
	}
	return s, nil
}

// start starts `kms serve` on s's configuration and waits, at most
// patience, until it answers on HTTP and SMTP. The daemon must not be
// running.
func (s *spawned) start(ctx context.Context, patience time.Duration) error {
	s.mu.Lock()
	if s.cmd != nil {
		s.mu.Unlock()
		return errors.New("kms serve is already running")
	}
	logFile, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		s.mu.Unlock()
		return err
	}
	cmd := exec.Command(s.bin, "serve", "--config", s.configPath)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		s.mu.Unlock()
		logFile.Close()
		return fmt.Errorf("start %s: %w", s.bin, err)
	}
	exited := make(chan error, 1)
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()
	go func() {
		exited <- cmd.Wait()
		logFile.Close()
	}()
	deadline := time.Now().Add(patience)
	for {
		if healthy(s.httpAddr) && listening(s.smtpAddr) {
			return nil
		}
		select {
		case err := <-exited:
			s.mu.Lock()
			s.cmd = nil
			s.mu.Unlock()
			return fmt.Errorf("kms serve exited during start-up (%v); see %s", err, s.logPath)
		case <-ctx.Done():
			s.stop()
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.stop()
			return fmt.Errorf("kms serve not ready after %s; see %s", patience, s.logPath)
		}
	}
}

// pid is the running daemon's process id, 0 when none runs.
func (s *spawned) pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return 0
	}
	return s.cmd.Process.Pid
}

// detach takes the running daemon's process and its exit channel, leaving
// none running as far as s knows; cmd is nil when none was.
func (s *spawned) detach() (cmd *exec.Cmd, exited chan error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cmd, exited = s.cmd, s.exited
	s.cmd = nil
	return cmd, exited
}

// kill crashes the daemon: SIGKILL, no shutdown of any kind, as a power
// cut or the OOM killer would end it. It returns once the process is gone
// (its listening sockets closed by the kernel), so that start can bring it
// back on the same ports.
func (s *spawned) kill() error {
	cmd, exited := s.detach()
	if cmd == nil {
		return errors.New("kms serve is not running")
	}
	if err := cmd.Process.Kill(); err != nil {
		return fmt.Errorf("kill kms serve: %w", err)
	}
	<-exited
	return nil
}

// writeConfig writes the daemon's configuration into o.DataDir and
// returns its path: loopback listeners, an RSA-2048 issuing CA and KMS key
// (the default, written out because the run's bound depends on it),
// delivery to the relay o.Relay (or the Maildir), warnings only in the
// log.
func writeConfig(o spawnOptions) (string, error) {
	kmsAddress, adminAddress, domain := o.KMSAddress, o.AdminAddress, o.Domain
	if kmsAddress == "" {
		kmsAddress = "kms@example.com"
	}
	if adminAddress == "" {
		adminAddress = "postmaster@example.com"
	}
	if domain == "" {
		domain = "example.com"
	}
	// The per-address connection cap would refuse the run's connections
	// (all from 127.0.0.1) beyond the default of 10.
	config := fmt.Sprintf(`data_dir: %q
address: %q
admin_address: %q
domains: [%q]
smtp:
  listen: %q
  max_connections_per_ip: %d
http:
  listen: %q
ca:
  key_type: rsa2048
log:
  level: warn
`, o.DataDir, kmsAddress, adminAddress, domain, o.smtpAddr, o.Concurrency+4, o.httpAddr)
	if o.Relay != "" {
		// The sink is on loopback: no TLS, and no rate limit, which would
		// measure the limit instead of the daemon.
		config += fmt.Sprintf("relay: {addr: %q, starttls: false, rate: 0}\n", o.Relay)
	}
	path := filepath.Join(o.DataDir, "kms-load.yaml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		return "", err
	}
	return path, nil
}

// stop ends the daemon gracefully (SIGTERM), or kills it after 15 seconds.
// A daemon that is not running (killed, or never started) is no error.
func (s *spawned) stop() error {
	cmd, exited := s.detach()
	if cmd == nil {
		return nil
	}
	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		var exit *exec.ExitError
		if errors.As(err, &exit) {
			return fmt.Errorf("kms serve: %w; see %s", err, s.logPath)
		}
		return nil
	case <-time.After(15 * time.Second):
		cmd.Process.Kill()
		<-exited
		return fmt.Errorf("kms serve did not stop within 15s of SIGTERM; killed")
	}
}

// freePort finds a free loopback port. The port could be taken before the
// daemon binds it; the daemon then fails to start, with a clear error.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

func healthy(addr string) bool {
	c := http.Client{Timeout: time.Second}
	resp, err := c.Get("http://" + addr + "/healthz")
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func listening(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

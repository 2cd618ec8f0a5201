package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kmsmail/kms/internal/syncbuf"
)

// This file runs the real binary: `go build` once per test run, then
// `kms serve` as a child process on free loopback ports with a temporary
// data directory, and the command line against it, as an administrator
// would.

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
	buildDir  string
)

// kmsBinary builds cmd/kms once for the package's tests.
func kmsBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "kms-bin-")
		if buildErr != nil {
			return
		}
		binPath = filepath.Join(buildDir, "kms")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// freeAddr returns a loopback address with a port nothing listens on.
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// syncBuffer collects a child's output safely while it runs.
type syncBuffer = syncbuf.Buffer

// daemonProc is a running `kms serve`.
type daemonProc struct {
	t        testing.TB
	bin      string
	config   string
	dataDir  string
	httpAddr string
	smtpAddr string
	cmd      *exec.Cmd
	log      *syncBuffer
	done     chan struct{}
	exitErr  error
}

// newDaemonConfig writes a configuration for a daemon in dir on free ports;
// extra is appended to the YAML (policy, relay, ...).
func newDaemonConfig(t testing.TB, dir, extra string) *daemonProc {
	t.Helper()
	d := &daemonProc{t: t, bin: kmsBinary(t), dataDir: filepath.Join(dir, "data"),
		httpAddr: freeAddr(t), smtpAddr: freeAddr(t)}
	d.config = filepath.Join(dir, "kms.yaml")
	yaml := fmt.Sprintf(`data_dir: %q
address: kms@example.com
admin_address: postmaster@example.com
domains: [example.com]
smtp:
  listen: %q
  hostname: kms.example.com
http:
  listen: %q
log:
  level: debug
%s`, d.dataDir, d.smtpAddr, d.httpAddr, extra)
	if err := os.WriteFile(d.config, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return d
}

// start runs the daemon and waits until /healthz answers.
func (d *daemonProc) start() {
	d.t.Helper()
	d.log = &syncBuffer{}
	d.cmd = exec.Command(d.bin, "serve", "--config", d.config)
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	d.done = make(chan struct{})
	go func() {
		d.exitErr = d.cmd.Wait()
		close(d.done)
	}()
	d.t.Cleanup(func() {
		if d.running() {
			d.cmd.Process.Kill()
			<-d.done
		}
		if d.t.Failed() {
			d.t.Logf("daemon log:\n%s", d.log.String())
		}
	})
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-d.done:
			d.t.Fatalf("kms serve exited during start-up: %v\n%s", d.exitErr, d.log.String())
		default:
		}
		resp, err := http.Get("http://" + d.httpAddr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.t.Fatalf("kms serve did not become healthy\n%s", d.log.String())
}

func (d *daemonProc) running() bool {
	select {
	case <-d.done:
		return false
	default:
		return true
	}
}

// stop sends sig and waits for the process to end, returning its error.
func (d *daemonProc) stop(sig syscall.Signal) error {
	d.t.Helper()
	d.cmd.Process.Signal(sig)
	select {
	case <-d.done:
		return d.exitErr
	case <-time.After(30 * time.Second):
		d.t.Fatalf("kms serve did not stop after %v", sig)
		return nil
	}
}

// cli runs the binary's command line against the daemon.
func (d *daemonProc) cli(args ...string) result {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.bin, append(args, "--config", d.config)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		d.t.Fatal(err)
	}
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

// waitLog waits until the daemon's log contains s.
func (d *daemonProc) waitLog(s string, timeout time.Duration) {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Contains(d.log.String(), s) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.t.Fatalf("daemon log never showed %q", s)
}

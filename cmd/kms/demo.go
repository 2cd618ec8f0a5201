package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kmsmail/kms/admin"
	"github.com/kmsmail/kms/clock"
	"github.com/kmsmail/kms/config"
	"github.com/kmsmail/kms/internal/demo"
)

// runDemo is `kms demo` (SPEC section 5): the real daemon, in a temporary
// directory, with a compressed policy, and the story of package demo told
// against it.
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f := newFlags("demo", stderr)
	keep := f.Bool("keep", false, "keep the temporary directory (configuration, log, database, CA, Maildir) and say where it is")
	month := monthFlag(demo.DefaultMonth)
	f.Var(&month, "speed", "how long one month `lasts`: a duration (2s, 1500ms) or a number of seconds")
	if _, code, ok := f.parse(args, 0, 0); !ok {
		return code
	}
	sched, err := demo.NewSchedule(time.Duration(month))
	if err != nil {
		fmt.Fprintf(stderr, "kms demo: --speed: %v\n", err)
		return exitUsage
	}
	if f.config != "" {
		fmt.Fprintln(stderr, "kms demo: --config is ignored: the demo runs its own kms in a temporary directory")
	}
	dir, err := os.MkdirTemp("", "kms-demo-")
	if err != nil {
		fmt.Fprintf(stderr, "kms demo: cannot create a temporary directory: %v (set TMPDIR to a writable directory)\n", err)
		return exitFail
	}
	code := demoIn(ctx, dir, sched, *keep, stdout, stderr)
	if *keep {
		fmt.Fprintf(stdout, "The demo's files are kept in %s:\n", dir)
		fmt.Fprintln(stdout, "  kms.yaml    its configuration")
		fmt.Fprintln(stdout, "  kms.log     the daemon's log (warnings and errors)")
		fmt.Fprintln(stdout, "  data/       the database, the CA and the admin token")
		fmt.Fprintln(stdout, "  data/mail/  every mail kms sent, a Maildir; read it with")
		fmt.Fprintf(stdout, "              mutt -f %s\n", filepath.Join(dir, "data", "mail"))
		fmt.Fprintln(stdout, "To look around with the admin commands, start this kms again:")
		fmt.Fprintf(stdout, "  kms serve --config %s\n", filepath.Join(dir, "kms.yaml"))
	} else if err := os.RemoveAll(dir); err != nil {
		fmt.Fprintf(stderr, "kms demo: cannot remove %s: %v\n", dir, err)
	}
	return code
}

// demoIn runs the daemon with its files in dir and tells the story.
func demoIn(ctx context.Context, dir string, sched demo.Schedule, keep bool, stdout, stderr io.Writer) int {
	logPath := filepath.Join(dir, "kms.log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		fmt.Fprintf(stderr, "kms demo: %v\n", err)
		return exitFail
	}
	defer logFile.Close()
	demo.Intro(stdout, sched, dir)
	d, err := startDemoDaemon(ctx, dir, sched, logFile)
	if err != nil {
		fmt.Fprintf(stderr, "kms demo: cannot start kms: %v\n", err)
		return exitFail
	}
	defer d.close()
	token, err := admin.ReadToken(filepath.Join(d.cfg.DataDir, admin.TokenFile))
	if err != nil {
		fmt.Fprintf(stderr, "kms demo: %v\n", err)
		return exitFail
	}

	// The story stops when the daemon does, with the daemon's reason.
	runCtx, stopDaemon := context.WithCancel(ctx)
	storyCtx, stopStory := context.WithCancelCause(ctx)
	stopped := make(chan error, 1)
	go func() {
		err := d.run(runCtx)
		if err != nil {
			stopStory(fmt.Errorf("kms stopped during the demo: %w", err))
		} else {
			stopStory(errors.New("kms stopped during the demo"))
		}
		stopped <- err
	}()
	err = demo.Run(storyCtx, demo.Options{
		Schedule: sched, DataDir: d.cfg.DataDir, SMTPAddr: d.smtpLn.Addr().String(),
		AdminURL: adminURL(d.httpLn.Addr().String()), Token: token, Maildir: d.cfg.Maildir, Out: stdout,
	})
	stopDaemon()
	if errors.Is(err, context.Canceled) && ctx.Err() == nil && context.Cause(storyCtx) != nil {
		err = context.Cause(storyCtx) // the daemon stopped first: say why
	}
	if rerr := <-stopped; rerr != nil && err == nil {
		err = fmt.Errorf("kms stopped with an error: %w", rerr)
	}
	switch {
	case err == nil:
		return exitOK
	case ctx.Err() != nil:
		fmt.Fprintln(stderr, "kms demo: interrupted")
	default:
		fmt.Fprintf(stderr, "kms demo: %v\n", err)
		if tail := lastLines(logPath, 10); tail != "" {
			fmt.Fprintf(stderr, "The daemon's log ends with:\n%s", tail)
		}
		if !keep {
			fmt.Fprintln(stderr, "Run kms demo --keep to keep the log, the database and the Maildir for a look.")
		}
	}
	return exitFail
}

// startDemoDaemon writes the demo's configuration and builds the daemon.
// The ports are found free just before, so another program may take one
// in between; then it tries again with new ports, and a fresh data
// directory, because the certificates name the admin port in their CRL URL.
func startDemoDaemon(ctx context.Context, dir string, sched demo.Schedule, logw io.Writer) (*daemon, error) {
	dataDir := filepath.Join(dir, "data")
	for attempt := 1; ; attempt++ {
		ports, err := freeLoopbackPorts(2)
		if err != nil {
			return nil, err
		}
		yaml := demo.ConfigYAML(dataDir, ports[0], ports[1], sched)
		if err := os.WriteFile(filepath.Join(dir, "kms.yaml"), yaml, 0o600); err != nil {
			return nil, err
		}
		// No environment: a KMS_CA_PASSPHRASE meant for a real kms must not
		// reach the demo's.
		cfg, err := config.LoadBytes(yaml, func(string) string { return "" })
		if err != nil {
			return nil, fmt.Errorf("the demo's configuration: %w", err)
		}
		d, err := newDaemon(ctx, cfg, clock.System{}, newLogger(cfg, logw))
		if err == nil || !errors.Is(err, syscall.EADDRINUSE) || attempt == 3 {
			return d, err
		}
		if err := os.RemoveAll(dataDir); err != nil {
			return nil, err
		}
	}
}

// freeLoopbackPorts returns n loopback addresses whose ports were free a
// moment ago. The listeners are held until all are chosen, so the n
// addresses differ.
func freeLoopbackPorts(n int) ([]string, error) {
	var addrs []string
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free loopback port: %w", err)
		}
		defer ln.Close()
		addrs = append(addrs, ln.Addr().String())
	}
	return addrs, nil
}

// lastLines returns the last n lines of the file at path, "" if unreadable.
func lastLines(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	lines := bytes.SplitAfter(bytes.TrimRight(b, "\n"), []byte("\n"))
	return string(bytes.Join(lines[max(0, len(lines)-n):], nil)) + "\n"
}

// monthFlag is --speed: how long one compressed month lasts.
type monthFlag time.Duration

func (m *monthFlag) String() string { return time.Duration(*m).String() }

// Set accepts a Go duration (2s, 1500ms) or a bare number of seconds (3.3).
func (m *monthFlag) Set(s string) error {
	if d, err := time.ParseDuration(s); err == nil {
		*m = monthFlag(d)
		return nil
	}
	secs, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || !(secs > 0 && secs <= float64(demo.MaxMonth/time.Second)) {
		return fmt.Errorf("%q is not a duration such as 2s or a number of seconds", s)
	}
	*m = monthFlag(time.Duration(secs * float64(time.Second)))
	return nil
}

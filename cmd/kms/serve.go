package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"

	"github.com/kmsmail/kms/admin"
	"github.com/kmsmail/kms/clock"
	"github.com/kmsmail/kms/config"
	"github.com/kmsmail/kms/kms"
	"github.com/kmsmail/kms/kms/ca"
	"github.com/kmsmail/kms/mail"
	"github.com/kmsmail/kms/mail/smime"
)

// runServe is `kms serve`: load the configuration, build the daemon, run it
// until a signal.
func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", os.Getenv("KMS_CONFIG"), "configuration `file` (default: built-in defaults)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "kms serve: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	cfg, err := config.Load(*configPath, os.Getenv)
	if err != nil {
		fmt.Fprintf(stderr, "kms serve: %v\n", err)
		return 1
	}
	log := newLogger(cfg, stderr)
	setGCPercent()
	setMaxProcs(cfg.Store.Driver, log)
	d, err := newDaemon(ctx, cfg, clock.System{}, log)
	if err != nil {
		log.Error("start-up failed", "err", err)
		return 1
	}
	defer d.close()
	go func() {
		<-ctx.Done()
		exitOnSecondSignal(log)
	}()
	if err := d.run(ctx); err != nil {
		log.Error("daemon stopped", "err", err)
		return 1
	}
	return 0
}

// newLogger builds the daemon's structured logger from the log section.
func newLogger(cfg *config.Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel()}
	if cfg.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// daemon is every long-lived part of `kms serve`, constructed in one place.
type daemon struct {
	cfg      *config.Config
	log      *slog.Logger
	clock    clock.Clock
	store    *kms.Store
	ca       *ca.Authority
	svc      *kms.Service
	http     *http.Server
	httpLn   net.Listener
	registry *prometheus.Registry
	smtp     *mail.Server
	smtpLn   net.Listener
	inbound  *mail.Processor
	outbox   *mail.Outbox
	imap     *mail.IMAPFetcher // nil unless imap.addr is set
	lock     *os.File          // held while a SQLite store is ours; nil for PostgreSQL
}

// daemonGCPercent is the garbage collector's target for the daemon unless
// GOGC says otherwise. Nearly everything a request allocates (MIME, CMS,
// SQL rows, the reply) is garbage once it is answered and the live heap is
// a few tens of MiB, so collecting at 400% growth instead of Go's 100%
// costs little memory and saved ~5% of the daemon's CPU under kms-load
// (481 against 452 renewals/s).
const daemonGCPercent = 400

// setGCPercent applies daemonGCPercent when GOGC is not set.
func setGCPercent() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(daemonGCPercent)
	}
}

// setMaxProcs gives a daemon on the SQLite store one more P (Go's right to
// run Go code on a thread) than Go's default, unless GOMAXPROCS is set.
//
// Why: every SQLite commit waits in fsync (synchronous=FULL), and a thread
// in a system call keeps its P until the runtime's monitor takes it back,
// which it does only after 20 µs to 10 ms; at ~0.3 ms an fsync, it rarely
// does. With one P per CPU, a CPU therefore idles through each commit's
// fsync: in an execution trace under kms-load (2 CPUs, ~600 commits/s),
// 181 ms a second were fsync with the P held, ~9% of the CPUs, matching the
// idle time vmstat showed. The extra P runs other goroutines meanwhile:
// 574–604 → 608–634 renewals/s. PostgreSQL is reached through the network
// poller, which gives up its P while it waits, so it needs none.
//
// The price: Go no longer follows a change of the container's CPU limit
// while the daemon runs; a restart does.
func setMaxProcs(driver string, log *slog.Logger) {
	if n, ok := daemonMaxProcs(driver, os.Getenv("GOMAXPROCS"), runtime.GOMAXPROCS(0)); ok {
		runtime.GOMAXPROCS(n)
		log.Debug("GOMAXPROCS raised by one for SQLite's fsync waits", "gomaxprocs", n)
	}
}

// daemonMaxProcs is setMaxProcs's rule: the GOMAXPROCS a daemon on driver
// runs with when the environment's GOMAXPROCS is env and Go chose current,
// and whether that differs from current.
func daemonMaxProcs(driver, env string, current int) (int, bool) {
	if driver != "sqlite" || env != "" {
		return current, false
	}
	return current + 1, true
}

// newDaemon creates the data directory, opens the store and the CA
// (creating them on first run), and binds the listeners, so that a port
// already in use or a bad key stops start-up with a clear error.
func newDaemon(ctx context.Context, cfg *config.Config, clk clock.Clock, log *slog.Logger) (*daemon, error) {
	d := &daemon{cfg: cfg, log: log, clock: clk}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data_dir %s: %w", cfg.DataDir, err)
	}
	dbPassword, err := cfg.DBPassword()
	if err != nil {
		return nil, err
	}
	if cfg.Store.Driver == "sqlite" {
		// One daemon owns a SQLite store. The lock makes that a fact, which
		// is what allows releasing the previous run's claims below.
		if d.lock, err = lockFile(cfg.Store.DSN + ".lock"); err != nil {
			return nil, err
		}
	}
	d.store, err = kms.OpenStoreWithPassword(ctx, cfg.Store.Driver, cfg.Store.DSN, dbPassword)
	if err != nil {
		d.close()
		return nil, err
	}
	if d.lock != nil {
		// Messages a killed predecessor had claimed would otherwise wait for
		// their lease (minutes) before anyone took them up again.
		n, err := d.store.ReleaseClaims(ctx)
		if err != nil {
			d.close()
			return nil, fmt.Errorf("store: releasing the previous run's claims: %w", err)
		}
		if n > 0 {
			log.Warn("took back messages the previous run had claimed and not finished (it did not stop cleanly)", "messages", n)
		}
	}
	passphrase, err := cfg.CAPassphrase()
	if err != nil {
		d.close()
		return nil, err
	}
	d.ca, err = ca.Open(ca.Config{
		Dir:        filepath.Join(cfg.DataDir, "ca"),
		KeyFile:    cfg.CA.KeyFile,
		Passphrase: passphrase,
		KeyType:    cfg.CA.KeyType,
		BaseURL:    cfg.BaseURL(),
		AIA:        cfg.HTTP.PublicURL != "",
		KMSAddress: cfg.Address,
	}, clk.Now(), log)
	if err != nil {
		d.close()
		return nil, fmt.Errorf("ca: %w", err)
	}
	d.registry = prometheus.NewRegistry()
	d.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := kms.NewMetrics(d.registry)
	d.svc = kms.New(kms.Config{
		Store:        d.store,
		Issuer:       d.ca,
		CRLSigner:    d.ca,
		Policies:     cfg.Policies(),
		Domains:      cfg.Domains,
		KMSAddress:   cfg.Address,
		AdminAddress: cfg.AdminAddress,
		Clock:        clk,
		Log:          log,
		Metrics:      metrics,
		MailQueued:   func() { d.outbox.Notify() },
	})
	d.registry.MustRegister(kms.NewStateCollector(d.svc))
	if err := d.buildMail(); err != nil {
		d.close()
		return nil, err
	}

	token, err := admin.EnsureToken(filepath.Join(cfg.DataDir, admin.TokenFile))
	if err != nil {
		d.close()
		return nil, fmt.Errorf("admin token: %w", err)
	}
	handler, err := admin.NewServer(admin.Options{
		Users:      d.svc,
		Certs:      d.svc,
		CRL:        d.svc,
		Audit:      d.store,
		Token:      token,
		Metrics:    d.registry,
		CAChainPEM: d.ca.ChainPEM(),
		IssuerDER:  d.ca.Issuer().Raw,
		Ready:      func(ctx context.Context) error { _, err := d.store.SchemaVersion(ctx); return err },
		Clock:      clk,
		Log:        log,
	})
	if err != nil {
		d.close()
		return nil, err
	}
	d.httpLn, err = net.Listen("tcp", cfg.HTTP.Listen)
	if err != nil {
		d.close()
		return nil, fmt.Errorf("http.listen %s: %w", cfg.HTTP.Listen, err)
	}
	d.http = handler.HTTPServer(cfg.HTTP.Listen)
	return d, nil
}

// buildMail constructs the inbound SMTP listener, the request processor
// and the outbound delivery worker, and binds the SMTP port.
func (d *daemon) buildMail() error {
	cfg := d.cfg
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(d.ca.Root())
	inter.AddCert(d.ca.Issuer())
	if f := cfg.CA.ImportTrustFile; f != "" {
		pemBytes, err := os.ReadFile(f)
		if err != nil {
			return fmt.Errorf("ca.import_trust_file: %w", err)
		}
		if !roots.AppendCertsFromPEM(pemBytes) {
			return fmt.Errorf("ca.import_trust_file %s: no PEM certificate in it", f)
		}
	}
	d.inbound = mail.NewProcessor(mail.ProcessorOptions{
		Service: d.svc, Queue: d.store, Identity: d.ca, Roots: roots, Intermediates: inter,
		Limits: smime.Limits{MaxMessageBytes: int(cfg.SMTP.MaxMessageBytes)},
		Clock:  d.clock, Log: d.log, Registerer: d.registry,
	})
	if cfg.IMAP.Addr != "" {
		password, err := cfg.IMAPPassword()
		if err != nil {
			return err
		}
		d.imap, err = mail.NewIMAPFetcher(mail.IMAPOptions{
			Addr: cfg.IMAP.Addr, Username: cfg.IMAP.Username, Password: password, Mailbox: cfg.IMAP.Mailbox,
			MaxMessageBytes: cfg.SMTP.MaxMessageBytes,
			Store:           d.store, Clock: d.clock, Log: d.log, Notify: d.inbound.Notify, Registerer: d.registry,
		})
		if err != nil {
			return fmt.Errorf("imap: %w", err)
		}
	}
	var tlsConfig *tls.Config
	if cfg.SMTP.TLS.CertFile != "" {
		pair, err := tls.LoadX509KeyPair(cfg.SMTP.TLS.CertFile, cfg.SMTP.TLS.KeyFile)
		if err != nil {
			return fmt.Errorf("smtp.tls: %w", err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	}
	var err error
	d.smtp, err = mail.NewServer(mail.ServerConfig{
		Addr: cfg.SMTP.Listen, Hostname: cfg.SMTP.Hostname, Address: cfg.Address,
		MaxMessageBytes: cfg.SMTP.MaxMessageBytes, TLSConfig: tlsConfig,
		ReadTimeout: cfg.SMTP.ReadTimeout, WriteTimeout: cfg.SMTP.WriteTimeout,
		MaxConnectionsPerIP: cfg.SMTP.MaxConnectionsPerIP,
		Store:               d.store, Clock: d.clock, Log: d.log, Notify: d.inbound.Notify, Handoff: d.inbound, Registerer: d.registry,
	})
	if err != nil {
		return err
	}
	var transport mail.Transport
	rate := 0.0
	if cfg.Relay.Addr != "" {
		password, err := cfg.RelayPassword()
		if err != nil {
			return err
		}
		transport, err = mail.NewRelay(mail.RelayConfig{Addr: cfg.Relay.Addr, Hostname: cfg.SMTP.Hostname,
			Username: cfg.Relay.Username, Password: password, AllowPlaintext: !cfg.Relay.StartTLS})
		if err != nil {
			return fmt.Errorf("relay: %w", err)
		}
		rate = cfg.Relay.Rate
	} else {
		transport, err = mail.NewMaildir(cfg.Maildir)
		if err != nil {
			return fmt.Errorf("maildir %s: %w", cfg.Maildir, err)
		}
	}
	d.outbox, err = mail.NewOutbox(mail.OutboxConfig{
		Store: outboxQueue{Store: d.store, svc: d.svc}, Transport: transport, Clock: d.clock, Log: d.log, Registerer: d.registry,
		Renderer: &mail.SignedRenderer{Identity: d.ca, Chain: d.ca.Chain(), Certs: d.svc, KMSAddress: cfg.Address, Clock: d.clock},
		From:     cfg.Address, Admin: cfg.AdminAddress, RetryFor: cfg.Relay.RetryFor, Rate: rate, PollInterval: time.Second,
	})
	if err != nil {
		return err
	}
	// Certificate replies go from the issuing transaction straight to the
	// delivery worker, without a claim from the outbox table.
	d.svc.SetHandoff(d.outbox)
	d.smtpLn, err = net.Listen("tcp", cfg.SMTP.Listen)
	if err != nil {
		return fmt.Errorf("smtp.listen %s: %w", cfg.SMTP.Listen, err)
	}
	return nil
}

// run serves until ctx ends, then shuts down within a deadline. A second
// interrupt during shutdown exits at once.
func (d *daemon) run(ctx context.Context) error {
	version, _ := d.store.SchemaVersion(ctx)
	d.log.Info("kms started", "version", versionString(), "http", d.httpLn.Addr().String(), "smtp", d.smtpLn.Addr().String(), "store", d.store.Driver(),
		"schema", version, "data_dir", d.cfg.DataDir, "address", d.cfg.Address, "domains", d.cfg.Domains)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := d.http.Serve(d.httpLn); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("http: %w", err)
		}
		return nil
	})
	g.Go(func() error { return d.smtp.Serve(d.smtpLn) })
	g.Go(func() error { return d.maintain(gctx) })
	g.Go(func() error { return d.inbound.Run(gctx) })
	g.Go(func() error { return d.outbox.Run(gctx) })
	if d.imap != nil {
		g.Go(func() error { return d.imap.Run(gctx) })
	}
	g.Go(func() error {
		<-gctx.Done()
		d.log.Info("shutting down")
		sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// SMTP first: a message being received is committed and answered
		// before the workers that would process it stop.
		return errors.Join(d.smtp.Shutdown(sctx), d.http.Shutdown(sctx))
	})
	err := g.Wait()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	d.log.Info("kms stopped")
	return err
}

// maintain runs the periodic work: expiring certificates and lapsing their
// users, and keeping the CRL fresh. It ticks every second because policy
// durations may be seconds (tests, `kms demo`); each pass is indexed
// queries that find nothing most of the time.
func (d *daemon) maintain(ctx context.Context) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		if _, err := d.svc.SendReminders(ctx); err != nil && ctx.Err() == nil {
			d.log.Error("reminder pass failed", "err", err)
		}
		if _, err := d.svc.ExpireDue(ctx); err != nil && ctx.Err() == nil {
			d.log.Error("expiry sweep failed", "err", err)
		}
		if _, err := d.svc.CRL(ctx); err != nil && ctx.Err() == nil {
			d.log.Error("CRL refresh failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// close releases what newDaemon opened.
func (d *daemon) close() {
	if d.httpLn != nil {
		d.httpLn.Close()
	}
	if d.smtpLn != nil {
		d.smtpLn.Close()
	}
	if d.store != nil {
		d.store.Close()
	}
	if d.lock != nil {
		d.lock.Close() // releases the lock
	}
}

// exitOnSecondSignal ends the process at once if another interrupt arrives
// while the daemon is shutting down gracefully.
func exitOnSecondSignal(log *slog.Logger) {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	<-ch
	log.Warn("second signal: exiting without waiting")
	os.Exit(1)
}

// outboxQueue is the store as the delivery worker sees it, with giving a
// mail up done by the service, which also tells the administrators.
type outboxQueue struct {
	*kms.Store
	svc *kms.Service
}

// FailOutbox gives a mail up and queues a notice to the administrators.
func (q outboxQueue) FailOutbox(ctx context.Context, id int64, why string, now time.Time) error {
	return q.svc.FailOutbox(ctx, id, why, now)
}

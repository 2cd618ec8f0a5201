package main

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kmsmail/kms/admin"
	"github.com/kmsmail/kms/clock"
	"github.com/kmsmail/kms/kms"
	"github.com/kmsmail/kms/kms/ca"
	"github.com/kmsmail/kms/mail"
	"github.com/kmsmail/kms/mail/smime"
	"github.com/kmsmail/kms/policy"
)

// testDaemon is the daemon of cmd/kms assembled in-process from the same
// parts, wired as cmd/kms/serve.go wires them (that package cannot be
// imported): store, CA, service, admin API, SMTP listener, request
// processor, and delivery to a relay (kms-load's sink) or into a Maildir,
// on the system clock.
type testDaemon struct {
	dataDir  string
	smtpAddr string
	httpAddr string
	svc      *kms.Service
	ca       *ca.Authority
}

// daemonOptions vary the test daemon.
type daemonOptions struct {
	KeyType policy.KeyType // of the issuing CA and the KMS key; "" is P-256
	// Relay is where outbound mail goes over SMTP, in clear and
	// unthrottled, as --spawn configures it; "" delivers into the Maildir.
	Relay string
	// Wrap, when set, wraps the transport: a test's way to alter the
	// daemon's replies on their way out.
	Wrap func(mail.Transport) mail.Transport
	// WrapListener, when set, wraps the SMTP listener: a test's way to
	// cut the daemon's connections at a chosen moment.
	WrapListener func(net.Listener) net.Listener
}

// startDaemon runs a daemon until the test ends.
func startDaemon(t testing.TB, o daemonOptions) *testDaemon {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	d := &testDaemon{dataDir: dir}
	log := slog.New(slog.DiscardHandler)
	clk := clock.System{}
	store, err := kms.OpenStore(ctx, "sqlite", filepath.Join(dir, "kms.db"))
	if err != nil {
		t.Fatal(err)
	}
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d.httpAddr = httpLn.Addr().String()
	kt := o.KeyType
	if kt == "" {
		kt = policy.P256
	}
	d.ca, err = ca.Open(ca.Config{Dir: filepath.Join(dir, "ca"), KeyType: kt, RootKeyType: policy.P256,
		BaseURL: "http://" + d.httpAddr, KMSAddress: "kms@example.com"}, clk.Now(), log)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	var outbox *mail.Outbox
	d.svc = kms.New(kms.Config{Store: store, Issuer: d.ca, CRLSigner: d.ca, Policies: policy.Set{Default: policy.Default()},
		Domains: []string{"example.com"}, KMSAddress: "kms@example.com", AdminAddress: "postmaster@example.com",
		Clock: clk, Log: log, Metrics: kms.NewMetrics(reg), MailQueued: func() { outbox.Notify() }})
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	roots.AddCert(d.ca.Root())
	inter.AddCert(d.ca.Issuer())
	// KMS_LOAD_WORKERS and KMS_LOAD_OUTBOX_WORKERS set the processor's and
	// the delivery worker's concurrency (the daemon's defaults are 2 and
	// 4), to see what more of them would give.
	workers, _ := strconv.Atoi(os.Getenv("KMS_LOAD_WORKERS"))
	outWorkers, _ := strconv.Atoi(os.Getenv("KMS_LOAD_OUTBOX_WORKERS"))
	proc := mail.NewProcessor(mail.ProcessorOptions{Service: d.svc, Queue: store, Identity: d.ca, Roots: roots,
		Intermediates: inter, Limits: smime.Limits{MaxMessageBytes: 1 << 20}, Clock: clk, Log: log, Registerer: reg,
		Workers: workers})
	var transport mail.Transport
	if o.Relay != "" {
		transport, err = mail.NewRelay(mail.RelayConfig{Addr: o.Relay, Hostname: "kms.example.com", AllowPlaintext: true})
	} else {
		transport, err = mail.NewMaildir(filepath.Join(dir, "mail"))
	}
	if err != nil {
		t.Fatal(err)
	}
	if o.Wrap != nil {
		transport = o.Wrap(transport)
	}
	outbox, err = mail.NewOutbox(mail.OutboxConfig{Store: outboxQueue{Store: store, svc: d.svc}, Transport: transport, Clock: clk,
		Log: log, Registerer: reg, From: "kms@example.com", Admin: "postmaster@example.com", PollInterval: time.Second, Workers: outWorkers,
		Renderer: &mail.SignedRenderer{Identity: d.ca, Chain: d.ca.Chain(), Certs: d.svc, KMSAddress: "kms@example.com", Clock: clk}})
	if err != nil {
		t.Fatal(err)
	}
	d.svc.SetHandoff(outbox) // as cmd/kms does
	smtpSrv, err := mail.NewServer(mail.ServerConfig{Hostname: "kms.example.com", Address: "kms@example.com",
		MaxMessageBytes: 1 << 20, Store: store, Clock: clk, Log: log, Notify: proc.Notify, Handoff: proc, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	smtpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d.smtpAddr = smtpLn.Addr().String()
	if o.WrapListener != nil {
		smtpLn = o.WrapListener(smtpLn)
	}
	token, err := admin.EnsureToken(filepath.Join(dir, admin.TokenFile))
	if err != nil {
		t.Fatal(err)
	}
	handler, err := admin.NewServer(admin.Options{Users: d.svc, Certs: d.svc, CRL: d.svc, Audit: store, Token: token,
		Metrics: reg, CAChainPEM: d.ca.ChainPEM(), IssuerDER: d.ca.Issuer().Raw, Clock: clk, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	httpSrv := handler.HTTPServer(d.httpAddr)

	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { proc.Run(runCtx) })
	wg.Go(func() { outbox.Run(runCtx) })
	wg.Go(func() { smtpSrv.Serve(smtpLn) })
	wg.Go(func() {
		if err := httpSrv.Serve(httpLn); !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("admin HTTP: %v", err)
		}
	})
	t.Cleanup(func() {
		sctx, scancel := context.WithTimeout(ctx, 10*time.Second)
		defer scancel()
		smtpSrv.Shutdown(sctx)
		httpSrv.Shutdown(sctx)
		cancel()
		wg.Wait()
		store.Close()
	})
	return d
}

// outboxQueue is cmd/kms's: giving a mail up also tells the administrators.
type outboxQueue struct {
	*kms.Store
	svc *kms.Service
}

func (q outboxQueue) FailOutbox(ctx context.Context, id int64, why string, now time.Time) error {
	return q.svc.FailOutbox(ctx, id, why, now)
}

// flagsFor returns the command line that points kms-load at d.
func (d *testDaemon) flagsFor(extra ...string) []string {
	return append([]string{"--data-dir", d.dataDir, "--smtp", d.smtpAddr, "--http", d.httpAddr}, extra...)
}

// Package admin is the daemon's administrative HTTP interface (SPEC sections
// 5 and 6) and the client the command line uses to reach it.
//
// The server answers on http.listen. A few resources are public because
// mail clients and monitoring fetch them without credentials: /healthz,
// /metrics, the CA chain (/ca.pem), the issuing CA certificate
// (/issuer.cer, the AIA caIssuers URL of every certificate kms issues) and
// the CRL (/crl, their CRL distribution point). Everything under /api/v1/
// needs the bearer token that EnsureToken keeps in DATA_DIR/admin.token, and
// speaks JSON. Every change goes through the kms.Service, so it is checked,
// audited and seen by the running daemon at once.
package admin

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kmsmail/kms/clock"
	"github.com/kmsmail/kms/kms"
	"github.com/kmsmail/kms/kms/ca"
)

// UserService is what the API needs of kms.Service for users.
type UserService interface {
	Enroll(ctx context.Context, addr, name, actor string) (*kms.Enrollment, error)
	ListUsers(ctx context.Context, state kms.UserState) ([]kms.User, error)
	GetUser(ctx context.Context, addr string) (*kms.UserDetail, error)
	Disable(ctx context.Context, addr string, reason int, actor string) (*kms.User, error)
}

// CertService is what the API needs of kms.Service for certificates.
type CertService interface {
	ListCerts(ctx context.Context, f kms.CertFilter) ([]kms.Certificate, error)
	GetCert(ctx context.Context, serial string) (*kms.Certificate, error)
	Revoke(ctx context.Context, serial string, reason int, actor string) (*kms.Certificate, error)
	Import(ctx context.Context, der []byte, actor string) (*kms.Certificate, error)
}

// CRLSource returns the current CRL in DER; kms.Service implements it.
type CRLSource interface {
	CRL(ctx context.Context) ([]byte, error)
}

// AuditLog returns the newest audit records; *kms.Store implements it.
type AuditLog interface {
	Audit(ctx context.Context, email string, limit int) ([]kms.AuditRecord, error)
}

// Options configure a Server. Users, Certs and Token are required; a
// public resource whose option is nil answers 404.
type Options struct {
	Users UserService
	Certs CertService
	CRL   CRLSource
	Audit AuditLog
	// Token is the bearer token of the API (EnsureToken).
	Token string
	// Metrics is served at /metrics.
	Metrics prometheus.Gatherer
	// CAChainPEM is served at /ca.pem: the issuing CA and the root, PEM.
	CAChainPEM []byte
	// IssuerDER is served at /issuer.cer: the issuing CA certificate, DER.
	IssuerDER []byte
	// Ready reports whether the daemon can serve, typically a ping of the
	// store; /healthz answers 503 while it fails. Nil means always ready.
	Ready func(context.Context) error
	// Clock tells the time for ?expiring=; nil means the system clock.
	Clock clock.Clock
	// Log receives failures and refused logins; nil discards.
	Log *slog.Logger
}

// Server is the admin HTTP handler.
type Server struct {
	opts      Options
	tokenHash [sha256.Size]byte
	clock     clock.Clock
	log       *slog.Logger
	mux       *http.ServeMux
}

// maxBody bounds every request body: an import of a few hundred PEM
// certificates fits, and a runaway client cannot fill the daemon's memory.
const maxBody = 1 << 20

// minTokenLen refuses tokens too short to resist guessing; EnsureToken
// makes 64 hex digits.
const minTokenLen = 32

// NewServer returns the admin handler for opts.
func NewServer(opts Options) (*Server, error) {
	if opts.Users == nil || opts.Certs == nil {
		return nil, errors.New("admin: Options.Users and Options.Certs are required")
	}
	if len(opts.Token) < minTokenLen {
		return nil, errors.New("admin: the API token is missing or shorter than 32 characters; create it with EnsureToken")
	}
	s := &Server{opts: opts, tokenHash: sha256.Sum256([]byte(opts.Token)), clock: opts.Clock, log: opts.Log, mux: http.NewServeMux()}
	if s.clock == nil {
		s.clock = clock.System{}
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.routes()
	return s, nil
}

func (s *Server) routes() {
	m := s.mux
	m.HandleFunc("GET /healthz", s.healthz)
	m.HandleFunc("GET /ca.pem", s.blob("application/x-pem-file", s.opts.CAChainPEM))
	m.HandleFunc("GET "+ca.IssuerPath, s.blob("application/pkix-cert", s.opts.IssuerDER))
	m.HandleFunc("GET "+ca.CRLPath, s.crl)
	if s.opts.Metrics != nil {
		m.Handle("GET /metrics", promhttp.HandlerFor(s.opts.Metrics, promhttp.HandlerOpts{
			ErrorLog: slog.NewLogLogger(s.log.Handler(), slog.LevelError),
		}))
	}
	api := map[string]func(http.ResponseWriter, *http.Request) error{
		"POST /api/v1/users":                 s.enroll,
		"GET /api/v1/users":                  s.listUsers,
		"GET /api/v1/users/{email}":          s.getUser,
		"POST /api/v1/users/{email}/disable": s.disable,
		"GET /api/v1/certs":                  s.listCerts,
		"GET /api/v1/certs/{serial}":         s.getCert,
		"POST /api/v1/certs/{serial}/revoke": s.revoke,
		"POST /api/v1/certs/import":          s.importCerts,
		"GET /api/v1/audit":                  s.audit,
		"/api/v1/":                           s.noEndpoint,
	}
	for pattern, h := range api {
		m.Handle(pattern, s.authed(h))
	}
	// Go's profiler, for operators chasing a slow daemon, behind the token:
	// `curl -H "Authorization: Bearer $(cat DATA_DIR/admin.token)"
	// http://127.0.0.1:8025/debug/pprof/profile?seconds=10 > cpu.out`.
	m.Handle("GET /debug/pprof/", s.authed(serve(pprof.Index)))
	m.Handle("GET /debug/pprof/profile", s.authed(serve(pprof.Profile)))
	m.Handle("GET /debug/pprof/trace", s.authed(serve(pprof.Trace)))
}

// serve adapts a plain handler to the authed signature.
func serve(h http.HandlerFunc) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		h(w, r)
		return nil
	}
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// HTTPServer returns an *http.Server for addr with timeouts that keep a
// slow or stalled client from holding a connection for ever. The caller
// runs it (ListenAndServe or Serve) and stops it with Shutdown.
func (s *Server) HTTPServer(addr string) *http.Server {
	return &http.Server{
		Addr:              addr,
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       time.Minute,
		WriteTimeout:      time.Minute,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
}

// authed checks the bearer token, limits the body and turns the handler's
// error into a JSON answer.
func (s *Server) authed(h func(http.ResponseWriter, *http.Request) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.authorized(r) {
			s.log.Warn("admin api: refused request without a valid token", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr)
			w.Header().Set("WWW-Authenticate", `Bearer realm="kms admin"`)
			writeJSON(w, http.StatusUnauthorized, ErrorBody{Code: CodeUnauthorized,
				Error: "missing or wrong admin token: send the header `Authorization: Bearer TOKEN` with the contents of DATA_DIR/admin.token"})
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		if err := h(w, r); err != nil {
			s.writeError(w, r, err)
		}
	})
}

// authorized compares the bearer token in constant time. Comparing digests
// keeps the comparison's length fixed, so not even the token's length leaks.
func (s *Server) authorized(r *http.Request) bool {
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return false
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(token)))
	return subtle.ConstantTimeCompare(got[:], s.tokenHash[:]) == 1
}

// actor names the administrator in the audit log. The token does not say
// who holds it, so the client's address is the best there is.
func actor(r *http.Request) string { return "admin:" + r.RemoteAddr }

// healthz answers 200 while the daemon's dependencies answer.
func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if s.opts.Ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		if err := s.opts.Ready(ctx); err != nil {
			s.log.Warn("healthz: not ready", "err", err)
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("unavailable: the store does not answer\n"))
			return
		}
	}
	_, _ = w.Write([]byte("ok\n"))
}

// blob serves fixed bytes, or 404 when the daemon has none.
func (s *Server) blob(contentType string, data []byte) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if len(data) == 0 {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", contentType)
		w.Header().Set("Cache-Control", "public, max-age=3600")
		_, _ = w.Write(data)
	}
}

// crl serves the current CRL. Relying parties fetch it without credentials;
// a short max-age lets caches help without hiding a revocation for long.
func (s *Server) crl(w http.ResponseWriter, r *http.Request) {
	if s.opts.CRL == nil {
		http.NotFound(w, r)
		return
	}
	der, err := s.opts.CRL.CRL(r.Context())
	if err != nil {
		s.log.Error("crl: cannot produce the CRL", "err", err)
		http.Error(w, "CRL temporarily unavailable", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/pkix-crl")
	w.Header().Set("Cache-Control", "public, max-age=300")
	_, _ = w.Write(der)
}

// noEndpoint answers API paths that match no endpoint in JSON, like the
// rest of the API.
func (s *Server) noEndpoint(w http.ResponseWriter, r *http.Request) error {
	return &requestError{status: http.StatusNotFound, code: CodeNotFound,
		msg: "no API endpoint " + r.Method + " " + r.URL.Path + " (the endpoints are /api/v1/users, /api/v1/certs and /api/v1/audit and below)"}
}

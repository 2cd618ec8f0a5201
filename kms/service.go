package kms

import (
	"context"
	"crypto/x509"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/mail"
	"strings"

	"github.com/kmsmail/kms/clock"
	"github.com/kmsmail/kms/enroll"
	"github.com/kmsmail/kms/kms/ca"
	"github.com/kmsmail/kms/policy"
)

// Issuer signs certificates. *ca.Authority implements it; an HSM-backed
// authority would too.
type Issuer interface {
	Issue(ca.Request) (*x509.Certificate, error)
}

// Config is what a Service is built from.
type Config struct {
	Store        *Store
	Issuer       Issuer
	CRLSigner    CRLSigner // optional; without it CRL fails
	Policies     policy.Set
	Domains      []string // the mail domains whose addresses kms certifies
	KMSAddress   string   // kms@DOMAIN; its domain names Message-IDs
	AdminAddress string   // where lapse notices for administrators go
	Clock        clock.Clock
	Log          *slog.Logger
	Metrics      *Metrics // optional
	// MailQueued, if set, is called after a transaction that queued mail
	// in the outbox table commits, so the delivery worker need not wait
	// for its next poll. A reply handed over (SetHandoff) is not announced
	// this way: the hand-over wakes its taker.
	MailQueued func()
}

// Service carries out the lifecycle operations of SPEC section 2. It is
// safe for concurrent use: an operation signs outside the database
// transaction (signing is the slow part) and then commits only if the rows
// it read are still as it saw them, so two operations on one user cannot
// both win.
type Service struct {
	store     *Store
	issuer    Issuer
	crlSigner CRLSigner
	crl       crlCache
	policies  policy.Set
	domains   map[string]bool
	kmsAddr   string
	msgDom    string
	admin     string
	clock     clock.Clock
	log       *slog.Logger
	metrics   *Metrics
	queued    func()
	handoff   Handoff // nil: replies are claimed from the outbox table
}

// New builds a Service.
func New(cfg Config) *Service {
	s := &Service{
		store:     cfg.Store,
		issuer:    cfg.Issuer,
		crlSigner: cfg.CRLSigner,
		policies:  cfg.Policies,
		domains:   map[string]bool{},
		kmsAddr:   cfg.KMSAddress,
		admin:     cfg.AdminAddress,
		clock:     cfg.Clock,
		log:       cfg.Log,
		metrics:   cfg.Metrics,
		queued:    cfg.MailQueued,
	}
	for _, d := range cfg.Domains {
		s.domains[strings.ToLower(d)] = true
	}
	if i := strings.LastIndexByte(cfg.KMSAddress, '@'); i >= 0 {
		s.msgDom = cfg.KMSAddress[i+1:]
	}
	if s.clock == nil {
		s.clock = clock.System{}
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s
}

// Store returns the service's store, for the mail workers that share it.
func (s *Service) Store() *Store { return s.store }

// Policies returns the policy set in force.
func (s *Service) Policies() policy.Set { return s.policies }

// NormalizeAddress checks that addr is a bare mail address and returns it in
// lower case. kms compares addresses case-insensitively: mail systems treat
// local parts that way in practice, and a certificate for Alice@ and one for
// alice@ would be the same person.
func NormalizeAddress(addr string) (string, error) {
	a, err := mail.ParseAddress(strings.TrimSpace(addr))
	if err != nil || a.Name != "" || a.Address != strings.TrimSpace(addr) {
		return "", fmt.Errorf("%q is not a mail address like user@example.com: %w", addr, ErrInvalidAddress)
	}
	at := strings.LastIndexByte(a.Address, '@')
	if at <= 0 || at == len(a.Address)-1 || !strings.Contains(a.Address[at:], ".") {
		return "", fmt.Errorf("%q is not a mail address like user@example.com: %w", addr, ErrInvalidAddress)
	}
	return strings.ToLower(a.Address), nil
}

// checkAddress normalises addr and checks that its domain is served.
func (s *Service) checkAddress(addr string) (email, domain string, err error) {
	email, err = NormalizeAddress(addr)
	if err != nil {
		return "", "", err
	}
	domain = email[strings.LastIndexByte(email, '@')+1:]
	if !s.domains[domain] {
		return "", "", fmt.Errorf("%s: domain %s is not in the configured domains (add it to `domains` in the configuration): %w", email, domain, ErrDomain)
	}
	return email, domain, nil
}

// Request identifies the mail a lifecycle operation answers: its Message-ID
// for In-Reply-To, and the digest of its signature so that the same signed
// request is never honoured twice.
type Request struct {
	Actor           string // for the audit log, e.g. "mail:alice@example.com"
	MessageID       string
	Subject         string
	SignatureDigest []byte // empty for unsigned enrollment requests
	// InboundID is the received message being answered; the operation
	// closes it in its own transaction, so a worker that crashes after the
	// commit cannot act on the message a second time.
	InboundID int64
	// Answers is the kind of kms mail the request replies to (In-Reply-To),
	// e.g. a reminder; it goes into the audit record.
	Answers OutboxKind
	// Signer is the certificate that signed the request, as CertForSigner
	// returned it moments before: Renew and Rekey use it instead of
	// reading the row again. Their transaction still checks that it is
	// current and its owner active, so a change since the read is caught.
	Signer *Certificate
}

func oneRow(res sql.Result, err error, what string) error {
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return err
	}
	if n != 1 {
		return fmt.Errorf("%s: %w", what, ErrConflict)
	}
	return nil
}

// mailQueued tells the delivery worker that mail is waiting.
func (s *Service) mailQueued() {
	if s.queued != nil {
		s.queued()
	}
}

// issued logs and counts a successful issuance, and tells the delivery
// worker about a reply queued in the table (one handed over wakes it
// itself).
func (s *Service) issued(email string, row *certRow, op, actor string, handedOver bool) {
	if !handedOver {
		s.mailQueued()
	}
	s.log.Info("audit", "action", "issue:"+op, "actor", actor, "email", email, "serial", row.Serial, "not_after", row.NotAfter)
	if s.metrics != nil {
		s.metrics.Issued.WithLabelValues(op).Inc()
	}
}

// refused records a refused operation in the audit log, the log and the
// metrics, and returns err so callers can write `return s.refused(...)`.
func (s *Service) refused(ctx context.Context, actor, op, email, serial string, err error) error {
	if err == nil {
		return nil
	}
	reason := refusalReason(err)
	s.log.Warn("audit", "action", "refuse:"+op, "actor", actor, "email", email, "serial", serial, "reason", reason, "err", err)
	if s.metrics != nil {
		s.metrics.Refused.WithLabelValues(op, reason).Inc()
	}
	if aerr := s.store.tx(ctx, func(tx *sql.Tx) error {
		return insertAudit(ctx, s.store.q(tx), auditEntry{Actor: actor, Action: "refuse:" + op, Email: email, Serial: serial,
			Detail: err.Error()}, s.clock.Now())
	}); aerr != nil {
		s.log.Error("audit write failed", "err", aerr)
	}
	return err
}

// refusalReason is a short, bounded label for metrics.
func refusalReason(err error) string {
	for _, c := range []struct {
		err   error
		label string
	}{
		{ErrNotFound, "not_found"}, {ErrInvalidAddress, "invalid_address"}, {ErrDomain, "domain"},
		{ErrAlreadyActive, "already_active"}, {ErrUserState, "user_state"}, {ErrCertState, "cert_state"},
		{ErrLapsed, "lapsed"}, {ErrReplay, "replay"}, {ErrConflict, "conflict"}, {ErrRekeyRequired, "rekey_required"},
		{ErrNoCode, "no_code"}, {enroll.ErrCodeWrong, "code_wrong"}, {enroll.ErrCodeExpired, "code_expired"},
		{enroll.ErrCodeLocked, "code_locked"}, {enroll.ErrCodeUsed, "code_used"}, {enroll.ErrMalformedCode, "code_malformed"},
		{policy.ErrWeakKey, "weak_key"}, {policy.ErrKeyNotAllowed, "key_not_allowed"},
	} {
		if errors.Is(err, c.err) {
			return c.label
		}
	}
	return "other"
}

// SerialHex formats a certificate's serial as kms shows and stores it.
func SerialHex(cert *x509.Certificate) string { return fmt.Sprintf("%x", cert.SerialNumber) }

// NormalizeSerial accepts a serial as administrators paste it (upper case,
// colons, spaces, a 0x prefix, leading zeros) and returns the stored form.
func NormalizeSerial(s string) (string, error) {
	t := strings.ToLower(strings.NewReplacer(":", "", " ", "", "-", "").Replace(strings.TrimSpace(s)))
	t = strings.TrimPrefix(t, "0x")
	t = strings.TrimLeft(t, "0")
	if t == "" || len(t) > 40 {
		return "", fmt.Errorf("serial %q: expected up to 40 hexadecimal digits: %w", s, ErrNotFound)
	}
	for _, r := range t {
		if !strings.ContainsRune("0123456789abcdef", r) {
			return "", fmt.Errorf("serial %q: %q is not a hexadecimal digit: %w", s, r, ErrNotFound)
		}
	}
	return t, nil
}

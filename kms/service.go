package kms

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/mail"
	"strings"
	"time"

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
	// commits, so the delivery worker need not wait for its next poll.
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

// Enroll creates an invited user with a one-time code, or re-enrolls a lapsed
// or disabled one. An invited user gets a fresh code and the old one stops
// working (the administrator lost it, or it expired). A user who holds a
// current certificate is refused: they renew by mail.
func (s *Service) Enroll(ctx context.Context, addr, name, actor string) (*Enrollment, error) {
	email, domain, err := s.checkAddress(addr)
	if err != nil {
		return nil, s.refused(ctx, actor, "enroll", addr, "", err)
	}
	code, err := enroll.NewCode()
	if err != nil {
		return nil, err
	}
	now := s.clock.Now()
	pol := s.policies.For(domain)
	expires := pol.Enrollment.CodeTTL.AddTo(now)
	action := "enroll"
	err = s.store.tx(ctx, func(tx *sql.Tx) error {
		u, err := s.store.userByEmail(ctx, tx, email, true)
		switch {
		case errors.Is(err, ErrNotFound):
			if err := tx.QueryRowContext(ctx, `INSERT INTO users (email, name, state, created_at, updated_at)
				VALUES ($1, $2, 'invited', $3, $3) RETURNING id`, email, name, ms(now)).Scan(new(int64)); err != nil {
				return err
			}
			u, err = s.store.userByEmail(ctx, tx, email, false)
			if err != nil {
				return err
			}
		case err != nil:
			return err
		case u.State == UserActive:
			return fmt.Errorf("%s holds a current certificate and renews by mail; to replace it, revoke it first (kms cert revoke): %w", email, ErrAlreadyActive)
		default:
			action = "re-enroll"
			if name == "" {
				name = u.Name
			}
			if _, err := tx.ExecContext(ctx, `UPDATE users SET state = 'invited', name = $1, updated_at = $2 WHERE id = $3`, name, ms(now), u.ID); err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, `UPDATE enrollment_codes SET state = 'cancelled' WHERE user_id = $1 AND state = 'outstanding'`, u.ID); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO enrollment_codes (user_id, code_hash, state, created_at, expires_at)
			VALUES ($1, $2, 'outstanding', $3, $4)`, u.ID, enroll.Hash(code), ms(now), ms(expires)); err != nil {
			return err
		}
		invitation := OutboxPayload{Email: email}
		if pol.Enrollment.MailCode {
			invitation.Code = code
		}
		if err := s.store.insertOutbox(ctx, tx, outboxMail{Kind: MailInvitation, To: email,
			Payload: invitation}, s.msgDom, now); err != nil {
			return err
		}
		return insertAudit(ctx, tx, auditEntry{Actor: actor, Action: action, Email: email,
			Detail: "code expires " + expires.Format(time.RFC3339)}, now)
	})
	if err != nil {
		s.refused(ctx, actor, "enroll", email, "", err)
		return nil, err
	}
	s.log.Info("audit", "action", action, "actor", actor, "email", email, "code_expires", expires)
	s.mailQueued()
	return &Enrollment{Email: email, Code: code, Expires: expires}, nil
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
}

// EnrollByCode redeems a one-time code: the invited user's first
// certificate, for pub. A wrong code counts against the code's attempts in a
// transaction of its own, so the count survives the failed request.
func (s *Service) EnrollByCode(ctx context.Context, addr, code string, pub crypto.PublicKey, req Request) (*Certificate, error) {
	email, domain, err := s.checkAddress(addr)
	if err != nil {
		return nil, s.refused(ctx, req.Actor, "enroll-by-mail", addr, "", err)
	}
	now := s.clock.Now()
	pol := s.policies.For(domain)
	u, err := s.store.userByEmail(ctx, s.store.db, email, false)
	if err != nil {
		return nil, s.refused(ctx, req.Actor, "enroll-by-mail", email, "", err)
	}
	if u.State != UserInvited {
		return nil, s.refused(ctx, req.Actor, "enroll-by-mail", email, "",
			fmt.Errorf("%s is %s, not invited: %w", email, u.State, ErrNoCode))
	}
	codeID, err := s.checkCode(ctx, u, code, now, pol.Enrollment.MaxAttempts)
	if err != nil {
		return nil, s.refused(ctx, req.Actor, "enroll-by-mail", email, "", err)
	}
	if err := pol.CheckKey(pub); err != nil {
		return nil, s.refused(ctx, req.Actor, "enroll-by-mail", email, "", err)
	}
	cert, err := s.sign(email, pub, now, pol)
	if err != nil {
		return nil, err
	}
	row := newCertRow(cert, u.ID, now, now)
	err = s.store.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE enrollment_codes SET state = 'used', used_at = $1 WHERE id = $2 AND state = 'outstanding'`, ms(now), codeID)
		if err := oneRow(res, err, "enrollment code already used"); err != nil {
			return err
		}
		res, err = tx.ExecContext(ctx, `UPDATE users SET state = 'active', updated_at = $1 WHERE id = $2 AND state = 'invited'`, ms(now), u.ID)
		if err := oneRow(res, err, "user no longer invited"); err != nil {
			return err
		}
		return s.recordIssue(ctx, tx, row, "enrollment", req, pol, now)
	})
	if err != nil {
		return nil, s.refused(ctx, req.Actor, "enroll-by-mail", email, "", err)
	}
	s.issued(email, row, "enrollment", req.Actor)
	return &row.Certificate, nil
}

// checkCode finds the user's outstanding code and checks input against it.
// The read, the check and the count of a wrong try share one transaction, so
// parallel guesses cannot slip past max_attempts.
func (s *Service) checkCode(ctx context.Context, u *User, input string, now time.Time, maxAttempts int) (int64, error) {
	var (
		id       int64
		checkErr error
	)
	err := s.store.tx(ctx, func(tx *sql.Tx) error {
		var (
			expires  int64
			attempts int
			hash     []byte
		)
		err := tx.QueryRowContext(ctx, `SELECT id, code_hash, expires_at, attempts FROM enrollment_codes
			WHERE user_id = $1 AND state = 'outstanding' ORDER BY id DESC LIMIT 1`+s.store.dialect.lockRow, u.ID).Scan(&id, &hash, &expires, &attempts)
		if errors.Is(err, sql.ErrNoRows) {
			checkErr = fmt.Errorf("%s: %w", u.Email, ErrNoCode)
			return nil
		}
		if err != nil {
			return err
		}
		c := enroll.Code{Hash: hash, ExpiresAt: fromMS(expires), Attempts: attempts}
		checkErr = c.Check(input, now, maxAttempts)
		if errors.Is(checkErr, enroll.ErrCodeWrong) || errors.Is(checkErr, enroll.ErrMalformedCode) {
			_, err := tx.ExecContext(ctx, `UPDATE enrollment_codes SET attempts = attempts + 1 WHERE id = $1`, id)
			return err
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	if checkErr != nil {
		return 0, fmt.Errorf("%s: %w", u.Email, checkErr)
	}
	return id, nil
}

// Renew issues a same-key successor to the current certificate serial, as
// asked by a request signed with it.
func (s *Service) Renew(ctx context.Context, serial string, req Request) (*Certificate, error) {
	return s.renew(ctx, serial, nil, req)
}

// Rekey issues a successor to the current certificate serial for a new key.
func (s *Service) Rekey(ctx context.Context, serial string, pub crypto.PublicKey, req Request) (*Certificate, error) {
	if pub == nil {
		return nil, errors.New("rekey: no public key")
	}
	return s.renew(ctx, serial, pub, req)
}

func (s *Service) renew(ctx context.Context, serial string, newKey crypto.PublicKey, req Request) (*Certificate, error) {
	op := "renewal"
	if newKey != nil {
		op = "rekey"
	}
	now := s.clock.Now()
	// A replay is recognised before anything else, so that it is refused
	// as a replay even after the certificate it renewed was superseded.
	// The insert in recordIssue remains the guard against races.
	if len(req.SignatureDigest) > 0 {
		var n int
		if err := s.store.q(nil).QueryRowContext(ctx, `SELECT COUNT(*) FROM seen_signatures WHERE digest = $1`, req.SignatureDigest).Scan(&n); err != nil {
			return nil, err
		}
		if n > 0 {
			return nil, s.refused(ctx, req.Actor, op, "", serial, ErrReplay)
		}
	}
	old, err := s.store.certBySerial(ctx, s.store.q(nil), serial, false)
	if err != nil {
		return nil, s.refused(ctx, req.Actor, op, "", serial, err)
	}
	u := &User{ID: old.userID, Email: old.Email, State: old.userState}
	if err := checkRenewable(u, old, now); err != nil {
		return nil, s.refused(ctx, req.Actor, op, u.Email, serial, err)
	}
	pol := s.policies.For(u.Email[strings.LastIndexByte(u.Email, '@')+1:])
	pub := newKey
	keySince := now
	if newKey == nil {
		if pol.NeedsRekey(old.KeySince, now) {
			return nil, s.refused(ctx, req.Actor, op, u.Email, serial,
				fmt.Errorf("key certified since %s: %w", old.KeySince.Format("2006-01-02"), ErrRekeyRequired))
		}
		parsed, err := x509.ParseCertificate(old.DER)
		if err != nil {
			return nil, fmt.Errorf("certificate %s: stored DER unreadable: %w", serial, err)
		}
		pub, keySince = parsed.PublicKey, old.KeySince
	}
	if err := pol.CheckKey(pub); err != nil {
		return nil, s.refused(ctx, req.Actor, op, u.Email, serial, err)
	}
	cert, err := s.sign(u.Email, pub, now, pol)
	if err != nil {
		return nil, err
	}
	row := newCertRow(cert, u.ID, now, keySince)
	if newKey != nil && string(row.keyHash) == string(old.keyHash) {
		row.KeySince = old.KeySince // a "rekey" to the same key is a renewal
	}
	err = s.store.tx(ctx, func(tx *sql.Tx) error {
		// The predecessor must still be current and its owner still
		// active: one statement checks both and supersedes it.
		res, err := s.store.q(tx).ExecContext(ctx, `UPDATE certificates SET state = 'superseded', superseded_by = $1, next_reminder_at = NULL
			WHERE serial = $2 AND state = 'current' AND user_id IN (SELECT id FROM users WHERE id = $3 AND state = 'active')`,
			row.Serial, serial, u.ID)
		if err := oneRow(res, err, "certificate "+serial+" is no longer current, or its user no longer active"); err != nil {
			return err
		}
		return s.recordIssue(ctx, tx, row, op, req, pol, now)
	})
	if err != nil {
		return nil, s.refused(ctx, req.Actor, op, u.Email, serial, err)
	}
	s.issued(u.Email, row, op, req.Actor)
	return &row.Certificate, nil
}

// checkRenewable applies SPEC 4.2's state rules to a renewal request.
func checkRenewable(u *User, c *certRow, now time.Time) error {
	switch {
	case c.State == CertRevoked:
		return fmt.Errorf("certificate %s was revoked (%s): %w", c.Serial, c.RevocationReason, ErrCertState)
	case !now.Before(c.NotAfter) || c.State == CertExpired:
		return fmt.Errorf("certificate %s expired %s: %w", c.Serial, c.NotAfter.Format(time.RFC3339), ErrLapsed)
	case u.State != UserActive:
		return fmt.Errorf("%s is %s: %w", u.Email, u.State, ErrUserState)
	case c.State != CertCurrent:
		return fmt.Errorf("certificate %s is %s (by %s); sign with your newest certificate: %w", c.Serial, c.State, c.SupersededBy, ErrCertState)
	case now.Before(c.NotBefore):
		return fmt.Errorf("certificate %s is not valid before %s: %w", c.Serial, c.NotBefore.Format(time.RFC3339), ErrCertState)
	}
	return nil
}

// sign has the CA issue a certificate for email and pub under pol.
func (s *Service) sign(email string, pub crypto.PublicKey, now time.Time, pol policy.Policy) (*x509.Certificate, error) {
	cert, err := s.issuer.Issue(ca.Request{Email: email, PublicKey: pub, NotBefore: now, NotAfter: pol.Lifetime.AddTo(now)})
	if err != nil {
		return nil, fmt.Errorf("issue certificate for %s: %w", email, err)
	}
	return cert, nil
}

// newCertRow turns a freshly issued certificate into a row.
func newCertRow(cert *x509.Certificate, userID int64, now, keySince time.Time) *certRow {
	h := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
	email := ""
	if len(cert.EmailAddresses) > 0 {
		email = strings.ToLower(cert.EmailAddresses[0])
	}
	return &certRow{
		Certificate: Certificate{
			Serial:    SerialHex(cert),
			Email:     email,
			State:     CertCurrent,
			NotBefore: cert.NotBefore.UTC(),
			NotAfter:  cert.NotAfter.UTC(),
			IssuedAt:  now,
			KeySince:  keySince,
			DER:       cert.Raw,
		},
		keyHash: h[:],
		userID:  userID,
	}
}

// recordIssue writes a new current certificate with its first reminder, the
// certificate reply, the replay record and the audit record.
func (s *Service) recordIssue(ctx context.Context, tx *sql.Tx, row *certRow, op string, req Request, pol policy.Policy, now time.Time) error {
	var next *time.Time
	if due, ok := pol.Reminders.Next(row.NotBefore, row.NotAfter, time.Time{}); ok {
		next = &due
	}
	row.NextReminderAt = next
	q := s.store.q(tx)
	if err := insertCert(ctx, q, row, next); err != nil {
		return err
	}
	if len(req.SignatureDigest) > 0 {
		if _, err := q.ExecContext(ctx, `INSERT INTO seen_signatures (digest, serial, seen_at) VALUES ($1, $2, $3)`,
			req.SignatureDigest, row.Serial, ms(now)); err != nil {
			if isUniqueViolation(err) {
				return ErrReplay
			}
			return err
		}
	}
	if err := finishInbound(ctx, q, req.InboundID, InboundDone, op+" "+row.Serial, now); err != nil {
		return err
	}
	if err := s.store.insertOutbox(ctx, tx, outboxMail{Kind: MailCertificate, To: row.Email, InReplyTo: req.MessageID,
		Payload: OutboxPayload{Email: row.Email, Serial: row.Serial, NotAfter: row.NotAfter, Operation: op, Subject: req.Subject}}, s.msgDom, now); err != nil {
		return err
	}
	detail := "not_after " + row.NotAfter.Format(time.RFC3339)
	if req.Answers != "" {
		detail += "; answers a " + string(req.Answers)
	}
	return insertAudit(ctx, q, auditEntry{Actor: req.Actor, Action: "issue:" + op, Email: row.Email, Serial: row.Serial,
		Detail: detail}, now)
}

// oneRow turns an UPDATE that matched no row into ErrConflict: the row
// changed between the read and the transaction.
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

// issued logs and counts a successful issuance.
func (s *Service) issued(email string, row *certRow, op, actor string) {
	s.mailQueued()
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

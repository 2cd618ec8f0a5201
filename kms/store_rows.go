package kms

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// This file holds the row-level helpers the lifecycle operations compose
// inside one transaction. They take a *sql.Tx (or the *sql.DB for reads) so
// that an operation decides what belongs to its transaction.

// querier is what both *sql.DB and *sql.Tx offer.
type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

const userColumns = `id, email, name, state, created_at, updated_at`

func scanUser(row interface{ Scan(...any) error }) (*User, error) {
	var (
		u                User
		created, updated int64
		state            string
	)
	if err := row.Scan(&u.ID, &u.Email, &u.Name, &state, &created, &updated); err != nil {
		return nil, err
	}
	u.State = UserState(state)
	u.CreatedAt, u.UpdatedAt = fromMS(created), fromMS(updated)
	return &u, nil
}

// userByEmail reads a user; lock asks PostgreSQL for a row lock.
func (s *Store) userByEmail(ctx context.Context, q querier, email string, lock bool) (*User, error) {
	query := `SELECT ` + userColumns + ` FROM users WHERE email = $1`
	if lock {
		query += s.dialect.lockRow
	}
	u, err := scanUser(q.QueryRowContext(ctx, query, email))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("user %s: %w", email, ErrNotFound)
	}
	return u, err
}

func setUserState(ctx context.Context, tx *sql.Tx, id int64, state UserState, now time.Time) error {
	_, err := tx.ExecContext(ctx, `UPDATE users SET state = $1, updated_at = $2 WHERE id = $3`, string(state), ms(now), id)
	return err
}

const certColumns = `c.serial, u.email, c.state, c.not_before, c.not_after, c.issued_at, c.key_since,
	c.imported, c.superseded_by, c.revoked_at, c.revocation_reason, c.next_reminder_at,
	c.last_reminder_at, c.reminders_sent, c.der, c.key_hash, c.user_id, u.state`

// certRow is a certificate with the columns the operations need beyond the
// public view.
type certRow struct {
	Certificate
	keyHash   []byte
	userID    int64
	userState UserState // the owner's state when the row was read
}

func scanCert(row interface{ Scan(...any) error }) (*certRow, error) {
	var (
		c                             certRow
		state, userState              string
		nb, na, issued, since         int64
		imported                      int64
		supersededBy                  sql.NullString
		revokedAt, reason, next, last sql.NullInt64
	)
	if err := row.Scan(&c.Serial, &c.Email, &state, &nb, &na, &issued, &since, &imported,
		&supersededBy, &revokedAt, &reason, &next, &last, &c.RemindersSent, &c.DER, &c.keyHash, &c.userID, &userState); err != nil {
		return nil, err
	}
	c.userState = UserState(userState)
	c.State = CertState(state)
	c.NotBefore, c.NotAfter, c.IssuedAt, c.KeySince = fromMS(nb), fromMS(na), fromMS(issued), fromMS(since)
	c.Imported = imported != 0
	c.SupersededBy = supersededBy.String
	if revokedAt.Valid {
		t := fromMS(revokedAt.Int64)
		c.RevokedAt = &t
		c.RevocationReason = ReasonName(int(reason.Int64))
	}
	if next.Valid {
		t := fromMS(next.Int64)
		c.NextReminderAt = &t
	}
	if last.Valid {
		t := fromMS(last.Int64)
		c.LastReminderAt = &t
	}
	return &c, nil
}

func (s *Store) certBySerial(ctx context.Context, q querier, serial string, lock bool) (*certRow, error) {
	query := `SELECT ` + certColumns + ` FROM certificates c JOIN users u ON u.id = c.user_id WHERE c.serial = $1`
	if lock && s.dialect.lockRow != "" {
		query += " FOR UPDATE OF c"
	}
	c, err := scanCert(q.QueryRowContext(ctx, query, serial))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("certificate %s: %w", serial, ErrNotFound)
	}
	return c, err
}

func insertCert(ctx context.Context, tx querier, c *certRow, next *time.Time) error {
	var nextMS sql.NullInt64
	if next != nil {
		nextMS = sql.NullInt64{Int64: ms(*next), Valid: true}
	}
	imported := 0
	if c.Imported {
		imported = 1
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO certificates
		(serial, user_id, state, not_before, not_after, issued_at, key_hash, key_since, imported, der, next_reminder_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)`,
		c.Serial, c.userID, string(c.State), ms(c.NotBefore), ms(c.NotAfter), ms(c.IssuedAt),
		c.keyHash, ms(c.KeySince), imported, c.DER, nextMS)
	if isUniqueViolation(err) {
		return fmt.Errorf("certificate %s already recorded: %w", c.Serial, ErrConflict)
	}
	return err
}

// OutboxKind names a kind of mail kms sends.
type OutboxKind string

// The kinds of mail kms sends, SPEC sections 4.3 and 4.4.
const (
	MailCertificate OutboxKind = "certificate" // certificate reply to the user
	MailInvitation  OutboxKind = "invitation"  // how to enroll, to a newly enrolled user
	MailReminder    OutboxKind = "reminder"    // renew before expiry
	MailRejection   OutboxKind = "rejection"   // a request from a known user was refused
	MailLapse       OutboxKind = "lapse"       // the certificate expired unrenewed, to the user
	MailLapseAdmin  OutboxKind = "lapse_admin" // the same, to the administrators
	MailRevocation  OutboxKind = "revocation"  // a certificate was revoked
	// MailUndeliverable tells the administrators that a mail was given up.
	MailUndeliverable OutboxKind = "undeliverable"
)

// OutboxPayload is what the mail renderer needs beyond the row's columns.
type OutboxPayload struct {
	Email     string    `json:"email,omitempty"`     // the user the mail is about
	Serial    string    `json:"serial,omitempty"`    // the certificate it is about
	NotAfter  time.Time `json:"not_after,omitzero"`  // that certificate's expiry
	Reason    string    `json:"reason,omitempty"`    // why (rejections, revocations)
	Operation string    `json:"operation,omitempty"` // enrollment, renewal, rekey
	Subject   string    `json:"subject,omitempty"`   // the request's subject, for replies
	Code      string    `json:"code,omitempty"`      // the enrollment code, only when policy mails it
}

// outboxMail is one mail to queue.
type outboxMail struct {
	Kind      OutboxKind
	To        string
	InReplyTo string
	Payload   OutboxPayload
}

// insertOutbox queues mail in the caller's transaction.
func (s *Store) insertOutbox(ctx context.Context, tx *sql.Tx, m outboxMail, msgDomain string, now time.Time) error {
	_, err := s.queueOutbox(ctx, tx, m, msgDomain, now, 0)
	return err
}

// queueOutbox queues m in tx and returns the row as the delivery worker
// sees it. With a lease, the row is inserted already claimed until
// now+lease, as ClaimOutbox would have left it, and not due before the
// lease ends (see Handoff and handedOver).
func (s *Store) queueOutbox(ctx context.Context, tx *sql.Tx, m outboxMail, msgDomain string, now time.Time, lease time.Duration) (*OutboxMessage, error) {
	payload, err := json.Marshal(m.Payload)
	if err != nil {
		return nil, err
	}
	out := &OutboxMessage{Kind: m.Kind, To: m.To, MessageID: newMessageID(msgDomain, now), InReplyTo: m.InReplyTo,
		Payload: m.Payload, CreatedAt: now}
	due, claimedUntil, attempts := handedOver(now, lease)
	out.Attempts = attempts
	err = s.q(tx).QueryRowContext(ctx, `INSERT INTO outbox
		(kind, recipient, message_id, in_reply_to, payload, state, created_at, next_attempt_at, claimed_until, attempts)
		VALUES ($1, $2, $3, $4, $5, 'pending', $6, $7, $8, $9) RETURNING id`,
		string(m.Kind), m.To, out.MessageID, m.InReplyTo, string(payload), ms(now), due, claimedUntil, attempts).Scan(&out.ID)
	if err != nil {
		return nil, err
	}
	return out, nil
}

// insertOutboxRows queues many mails with multi-row INSERTs.
func (s *Store) insertOutboxRows(ctx context.Context, tx *sql.Tx, mails []outboxMail, msgDomain string, now time.Time) error {
	const perStatement = 200 // 7 parameters each, well under both databases' limits
	for start := 0; start < len(mails); start += perStatement {
		chunk := mails[start:min(start+perStatement, len(mails))]
		values := make([]string, 0, len(chunk))
		args := make([]any, 0, 7*len(chunk))
		for _, m := range chunk {
			payload, err := json.Marshal(m.Payload)
			if err != nil {
				return err
			}
			n, p := len(args), s.dialect.param
			values = append(values, "("+p(n+1)+", "+p(n+2)+", "+p(n+3)+", "+p(n+4)+", "+p(n+5)+", 'pending', "+p(n+6)+", "+p(n+7)+")")
			args = append(args, string(m.Kind), m.To, newMessageID(msgDomain, now), m.InReplyTo, string(payload), ms(now), ms(now))
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO outbox
			(kind, recipient, message_id, in_reply_to, payload, state, created_at, next_attempt_at) VALUES `+strings.Join(values, ", "), args...); err != nil {
			return fmt.Errorf("outbox: %w", err)
		}
	}
	return nil
}

// newMessageID makes an RFC 5322 Message-ID. It is fixed when the mail is
// queued, so a delivery retried after a crash carries the same id and
// receivers can recognise the duplicate.
//
// The id starts with the queueing time (Unix microseconds, hex) and ends
// with 96 random bits: unique without coordination, and in time order, so
// that new ids land at the end of the outbox's unique index instead of on
// a random page of it, which keeps each commit's writes small.
func newMessageID(domain string, now time.Time) string {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	if domain == "" {
		domain = "kms.invalid"
	}
	return fmt.Sprintf("<%012x.%s@%s>", now.UnixMicro(), hex.EncodeToString(b[:]), domain)
}

// auditEntry is one record of the append-only audit log.
type auditEntry struct {
	Actor  string
	Action string
	Email  string
	Serial string
	Detail string
}

func insertAudit(ctx context.Context, q querier, e auditEntry, now time.Time) error {
	_, err := q.ExecContext(ctx, `INSERT INTO audit (at, actor, action, email, serial, detail) VALUES ($1, $2, $3, $4, $5, $6)`,
		ms(now), e.Actor, e.Action, e.Email, e.Serial, e.Detail)
	return err
}

// AuditRecord is one line of the audit log as the admin API shows it.
type AuditRecord struct {
	At     time.Time `json:"at"`
	Actor  string    `json:"actor"`
	Action string    `json:"action"`
	Email  string    `json:"email,omitempty"`
	Serial string    `json:"serial,omitempty"`
	Detail string    `json:"detail,omitempty"`
}

// Audit returns the newest audit records, optionally for one address.
func (s *Store) Audit(ctx context.Context, email string, limit int) ([]AuditRecord, error) {
	if limit <= 0 || limit > 10000 {
		limit = 100
	}
	query := `SELECT at, actor, action, email, serial, detail FROM audit`
	args := []any{}
	if email != "" {
		query += ` WHERE email = $1`
		args = append(args, strings.ToLower(email))
	}
	query += fmt.Sprintf(` ORDER BY id DESC LIMIT %d`, limit)
	rows, err := s.db.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []AuditRecord
	for rows.Next() {
		var r AuditRecord
		var at int64
		if err := rows.Scan(&at, &r.Actor, &r.Action, &r.Email, &r.Serial, &r.Detail); err != nil {
			return nil, err
		}
		r.At = fromMS(at)
		out = append(out, r)
	}
	return out, rows.Err()
}

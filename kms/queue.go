package kms

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// This file is the store side of the two mail queues: inbound messages,
// committed before the SMTP 250 and processed by workers afterwards, and the
// outbox, written with the state changes that cause mail. Both are claimed
// with a lease: a worker that dies leaves its rows to be claimed again when
// the lease runs out, so processing is at least once, and the effects are
// made exactly once by finishing the row in the same transaction as the
// effect (see Request.InboundID).

// Inbound is one received message waiting to be processed.
type Inbound struct {
	ID         int64
	MailFrom   string
	RemoteAddr string
	Raw        []byte
	ReceivedAt time.Time
	Attempts   int
}

// AcceptInbound stores a received message durably. It reports duplicate when
// the same bytes were accepted before (a client retrying after a lost 250),
// in which case nothing new is stored.
func (s *Store) AcceptInbound(ctx context.Context, raw []byte, mailFrom, remoteAddr string, now time.Time) (id int64, duplicate bool, err error) {
	return s.AcceptInboundClaimed(ctx, raw, mailFrom, remoteAddr, now, 0)
}

// AcceptInboundClaimed is AcceptInbound for a message that is handed to a
// processor in memory once it is stored (mail.InboundHandoff): with lease
// > 0, a new message is stored already claimed for lease, its first
// attempt counted. It is also not due before the lease ends, so that the
// claims from the table do not have to step over it (see handedOver).
// A duplicate is not claimed.
func (s *Store) AcceptInboundClaimed(ctx context.Context, raw []byte, mailFrom, remoteAddr string, now time.Time, lease time.Duration) (id int64, duplicate bool, err error) {
	digest := sha256.Sum256(raw)
	due, claimedUntil, attempts := handedOver(now, lease)
	err = s.tx(ctx, func(tx *sql.Tx) error {
		duplicate = false // the transaction may run again
		q := s.q(tx)
		// The insert is tried first: a duplicate is the rare case.
		err := q.QueryRowContext(ctx, `INSERT INTO inbound (digest, mail_from, remote_addr, state, received_at, next_attempt_at, claimed_until, attempts)
			VALUES ($1, $2, $3, 'pending', $4, $5, $6, $7) ON CONFLICT (digest) DO NOTHING RETURNING id`,
			digest[:], mailFrom, remoteAddr, ms(now), due, claimedUntil, attempts).Scan(&id)
		if errors.Is(err, sql.ErrNoRows) {
			duplicate = true
			return q.QueryRowContext(ctx, `SELECT id FROM inbound WHERE digest = $1`, digest[:]).Scan(&id)
		}
		if err != nil {
			return err
		}
		_, err = q.ExecContext(ctx, `INSERT INTO inbound_raw (inbound_id, raw) VALUES ($1, $2)`, id, raw)
		return err
	})
	return id, duplicate, err
}

// handedOver gives the queue columns of a row written at now: due now and
// unclaimed when lease is 0; otherwise claimed for lease by the worker it
// is handed to in memory, with its first attempt counted, and not due
// before the claim ends. A claim from the table then never has to look at
// it: the claims walk the pending rows in next_attempt_at order and stop
// at the first that is not due, where a handed-over row due now would have
// to be fetched and skipped, once per claim, while it waits in memory.
// Such a row is recognised by next_attempt_at = claimed_until, which a
// claim from the table never writes (see releaseRows).
func handedOver(now time.Time, lease time.Duration) (due, claimedUntil int64, attempts int) {
	if lease <= 0 {
		return ms(now), 0, 0
	}
	until := ms(now.Add(lease))
	return until, until, 1
}

// ClaimInbound leases up to limit pending messages for lease, those due
// longest first (new mail in the order it arrived).
func (s *Store) ClaimInbound(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]Inbound, error) {
	var out []Inbound
	err := s.tx(ctx, func(tx *sql.Tx) error {
		q := s.q(tx)
		rows, err := q.QueryContext(ctx, `UPDATE inbound SET claimed_until = $1, attempts = attempts + 1
			WHERE claimed_until <= $2 AND id IN (SELECT id FROM inbound WHERE state = 'pending' AND next_attempt_at <= $2
				AND claimed_until <= $2 ORDER BY next_attempt_at, id LIMIT $3`+s.dialect.skipLocked+`)
			RETURNING id, mail_from, remote_addr, received_at, attempts`, ms(now.Add(lease)), ms(now), limit)
		if err != nil {
			return err
		}
		out = out[:0]
		for rows.Next() {
			var (
				m  Inbound
				at int64
			)
			if err := rows.Scan(&m.ID, &m.MailFrom, &m.RemoteAddr, &at, &m.Attempts); err != nil {
				rows.Close()
				return err
			}
			m.ReceivedAt = fromMS(at)
			out = append(out, m)
		}
		if err := rows.Close(); err != nil {
			return err
		}
		if err := rows.Err(); err != nil {
			return err
		}
		for i := range out {
			if err := q.QueryRowContext(ctx, `SELECT raw FROM inbound_raw WHERE inbound_id = $1`, out[i].ID).Scan(&out[i].Raw); err != nil {
				return fmt.Errorf("inbound %d: message bytes: %w", out[i].ID, err)
			}
		}
		return nil
	})
	return out, err
}

// InboundState is the outcome of processing a received message.
type InboundState string

// Inbound outcomes.
const (
	InboundDone    InboundState = "done"    // a certificate was issued
	InboundRefused InboundState = "refused" // refused (rejection mailed to a known user) or dropped
	InboundFailed  InboundState = "failed"  // could not be processed after retries; kept for an administrator
)

// finishInbound closes an inbound row inside tx; it fails with ErrConflict
// if another worker finished it first, which rolls back the duplicate effect.
func finishInbound(ctx context.Context, tx querier, id int64, state InboundState, outcome string, now time.Time) error {
	if id == 0 {
		return nil
	}
	res, err := tx.ExecContext(ctx, `UPDATE inbound SET state = $1, outcome = $2, processed_at = $3 WHERE id = $4 AND state = 'pending'`,
		string(state), outcome, ms(now), id)
	return oneRow(res, err, fmt.Sprintf("inbound message %d already processed", id))
}

// FinishInbound closes an inbound row whose processing has no other effect
// (a dropped message).
func (s *Store) FinishInbound(ctx context.Context, id int64, state InboundState, outcome string, now time.Time) error {
	return s.tx(ctx, func(tx *sql.Tx) error { return finishInbound(ctx, tx, id, state, outcome, now) })
}

// RetryInbound releases a claimed message for another attempt at next.
func (s *Store) RetryInbound(ctx context.Context, id int64, next time.Time, why string) error {
	return s.exec(ctx, `UPDATE inbound SET claimed_until = 0, next_attempt_at = $1, outcome = $2 WHERE id = $3 AND state = 'pending'`,
		ms(next), why, id)
}

// OutboxMessage is one queued mail as the delivery worker sees it.
type OutboxMessage struct {
	ID        int64
	Kind      OutboxKind
	To        string
	MessageID string
	InReplyTo string
	Payload   OutboxPayload
	Attempts  int
	CreatedAt time.Time
	// Issued is the certificate a certificate reply carries, when the
	// reply was handed over in memory (see Handoff); nil when the row was
	// claimed from the table, and the renderer reads it from the store.
	Issued *x509.Certificate
}

// ClaimOutbox leases up to limit mails that are due.
func (s *Store) ClaimOutbox(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]OutboxMessage, error) {
	var out []OutboxMessage
	err := s.tx(ctx, func(tx *sql.Tx) error {
		rows, err := s.q(tx).QueryContext(ctx, `UPDATE outbox SET claimed_until = $1, attempts = attempts + 1
			WHERE claimed_until <= $2 AND id IN (SELECT id FROM outbox WHERE state = 'pending' AND next_attempt_at <= $2
				AND claimed_until <= $2 ORDER BY next_attempt_at, id LIMIT $3`+s.dialect.skipLocked+`)
			RETURNING id, kind, recipient, message_id, in_reply_to, payload, attempts, created_at`, ms(now.Add(lease)), ms(now), limit)
		if err != nil {
			return err
		}
		defer rows.Close()
		out = out[:0]
		for rows.Next() {
			var (
				m       OutboxMessage
				kind    string
				payload string
				created int64
			)
			if err := rows.Scan(&m.ID, &kind, &m.To, &m.MessageID, &m.InReplyTo, &payload, &m.Attempts, &created); err != nil {
				return err
			}
			m.Kind, m.CreatedAt = OutboxKind(kind), fromMS(created)
			if err := json.Unmarshal([]byte(payload), &m.Payload); err != nil {
				return fmt.Errorf("outbox %d: payload: %w", m.ID, err)
			}
			out = append(out, m)
		}
		return rows.Err()
	})
	return out, err
}

// MarkSent records a delivered mail.
func (s *Store) MarkSent(ctx context.Context, id int64, now time.Time) error {
	return s.exec(ctx, `UPDATE outbox SET state = 'sent', sent_at = $1, last_error = '' WHERE id = $2`, ms(now), id)
}

// RetryOutbox schedules another delivery attempt at next.
func (s *Store) RetryOutbox(ctx context.Context, id int64, next time.Time, why string) error {
	return s.exec(ctx, `UPDATE outbox SET claimed_until = 0, next_attempt_at = $1, last_error = $2 WHERE id = $3 AND state = 'pending'`,
		ms(next), why, id)
}

// FailOutbox gives a mail up (a permanent 5xx, or retries exhausted),
// with an audit record.
func (s *Store) FailOutbox(ctx context.Context, id int64, why string, now time.Time) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		_, _, _, err := failOutbox(ctx, tx, id, why, now)
		return err
	})
}

// FailOutbox is Store.FailOutbox plus, in the same transaction, a notice to
// the administrators, unless the mail was itself to them or such a notice
// (no loops).
func (s *Service) FailOutbox(ctx context.Context, id int64, why string, now time.Time) error {
	err := s.store.tx(ctx, func(tx *sql.Tx) error {
		kind, to, msgID, err := failOutbox(ctx, tx, id, why, now)
		if err != nil || s.admin == "" || to == s.admin || kind == MailUndeliverable {
			return err
		}
		err = s.store.insertOutbox(ctx, tx, outboxMail{Kind: MailUndeliverable, To: s.admin,
			Payload: OutboxPayload{Email: to, Reason: why, Operation: string(kind), Subject: msgID}}, s.msgDom, now)
		return err
	})
	if err == nil {
		s.mailQueued()
	}
	return err
}

// failOutbox marks one mail failed inside tx and says what it was.
func failOutbox(ctx context.Context, tx *sql.Tx, id int64, why string, now time.Time) (kind OutboxKind, to, msgID string, err error) {
	var k string
	if err := tx.QueryRowContext(ctx, `SELECT kind, recipient, message_id FROM outbox WHERE id = $1`, id).Scan(&k, &to, &msgID); err != nil {
		return "", "", "", fmt.Errorf("outbox %d: %w", id, err)
	}
	if _, err := tx.ExecContext(ctx, `UPDATE outbox SET state = 'failed', last_error = $1 WHERE id = $2`, why, id); err != nil {
		return "", "", "", err
	}
	err = insertAudit(ctx, tx, auditEntry{Actor: "system", Action: "mail-failed", Email: to,
		Detail: fmt.Sprintf("%s mail %s: %s", k, msgID, why)}, now)
	return OutboxKind(k), to, msgID, err
}

// maxRepliesPerHour caps rejections and lapse notices to one address.
const maxRepliesPerHour = 5

// Reply is a mail that answers a refused request.
type Reply struct {
	Kind      OutboxKind // MailRejection or MailLapse
	To        string     // the address on record, never the request's From
	InReplyTo string
	Payload   OutboxPayload
}

// RefuseInbound closes a received message that was refused, queueing reply
// (nil for a message dropped without answer, SPEC 4: no backscatter) in the
// same transaction, so a crash cannot send the rejection twice.
func (s *Service) RefuseInbound(ctx context.Context, id int64, reply *Reply, outcome string) error {
	now := s.clock.Now()
	queued := false
	defer func() {
		if queued {
			s.mailQueued()
		}
	}()
	return s.store.tx(ctx, func(tx *sql.Tx) error {
		queued = false // the transaction may run again
		if err := finishInbound(ctx, tx, id, InboundRefused, outcome, now); err != nil {
			return err
		}
		if reply == nil {
			return nil
		}
		// A cap on answers per address and hour: a peer that answers
		// every mail without Auto-Submitted cannot start a loop.
		var recent int
		if err := s.store.q(tx).QueryRowContext(ctx, `SELECT COUNT(*) FROM outbox WHERE recipient = $1 AND kind = $2 AND created_at > $3`,
			reply.To, string(reply.Kind), ms(now.Add(-time.Hour))).Scan(&recent); err != nil {
			return err
		}
		if recent >= maxRepliesPerHour {
			s.log.Warn("reply suppressed: too many to one address", "to", reply.To, "kind", reply.Kind, "last_hour", recent)
			return nil
		}
		err := s.store.insertOutbox(ctx, tx, outboxMail{Kind: reply.Kind, To: reply.To, InReplyTo: reply.InReplyTo,
			Payload: reply.Payload}, s.msgDom, now)
		queued = err == nil
		return err
	})
}

// ReleaseInbound gives back claims on messages this process took and did
// not process (it is shutting down), undoing the attempt the claim
// counted. Finished messages are not touched.
func (s *Store) ReleaseInbound(ctx context.Context, ids []int64) error {
	return s.releaseRows(ctx, "inbound", ids)
}

// ReleaseOutbox gives back claims on mails that a delivery worker took
// and did not deliver (it is shutting down), undoing the attempt the
// claim counted. Sent and failed mails are not touched.
func (s *Store) ReleaseOutbox(ctx context.Context, ids []int64) error {
	return s.releaseRows(ctx, "outbox", ids)
}

// releaseRows gives back claims on pending rows of a queue table (inbound
// or outbox). A row that was handed over in memory is made due again at
// once (see handedOver).
func (s *Store) releaseRows(ctx context.Context, table string, ids []int64) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		q := s.q(tx)
		for _, id := range ids {
			if _, err := q.ExecContext(ctx, `UPDATE `+table+` SET claimed_until = 0, attempts = attempts - 1, `+dueAgain(table)+`
				WHERE id = $1 AND state = 'pending' AND attempts > 0`, id); err != nil {
				return err
			}
		}
		return nil
	})
}

// dueAgain is the SET clause that makes a released row that was handed
// over due at once (at the time it was queued), and leaves any other
// row's next_attempt_at as it is.
func dueAgain(table string) string {
	queued := "received_at"
	if table == "outbox" {
		queued = "created_at"
	}
	return `next_attempt_at = CASE WHEN next_attempt_at = claimed_until THEN ` + queued + ` ELSE next_attempt_at END`
}

// ReleaseClaims gives back every claim on pending inbound and outbox rows,
// so that they are processed at once instead of when their lease runs out.
// It is only safe when no other process uses the store: the daemon calls
// it at start-up on SQLite, whose store it holds a lock on. It returns how
// many rows it released.
func (s *Store) ReleaseClaims(ctx context.Context) (int64, error) {
	var n int64
	err := s.tx(ctx, func(tx *sql.Tx) error {
		n = 0
		for _, table := range []string{"inbound", "outbox"} {
			res, err := tx.ExecContext(ctx, `UPDATE `+table+` SET claimed_until = 0, `+dueAgain(table)+` WHERE state = 'pending' AND claimed_until > 0`)
			if err != nil {
				return err
			}
			k, err := res.RowsAffected()
			if err != nil {
				return err
			}
			n += k
		}
		return nil
	})
	return n, err
}

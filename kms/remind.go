package kms

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"time"
)

// This file is the reminder scheduler (SPEC section 3, issue "Reminders"):
// it finds current certificates whose next reminder is due, with an indexed
// query whose cost grows with the number due, and queues one reminder per
// user in the same transaction that records it and moves the certificate's
// next_reminder_at on. The move is a compare-and-set on the due time it
// read, so a crash, a restart or a second daemon on the same database can
// neither lose a reminder nor send one twice.

// reminderBatch is how many due certificates one transaction handles: big
// enough to amortise the commit, small enough to keep the write lock short.
const reminderBatch = 1000

// dueReminder is a certificate whose reminder is due.
type dueReminder struct {
	serial    string
	userID    int64
	email     string
	due       int64
	notBefore time.Time
	notAfter  time.Time
}

// SendReminders queues every reminder that is due now and returns how many
// mails it queued. A certificate whose reminder was due while the daemon
// was down gets one reminder now, not one per missed date: the next one is
// computed from now.
func (s *Service) SendReminders(ctx context.Context) (int, error) {
	now := s.clock.Now()
	queued := 0
	for {
		batch, err := s.dueReminders(ctx, now)
		if err != nil {
			return queued, err
		}
		if len(batch) == 0 {
			break
		}
		n, err := s.queueReminders(ctx, batch, now)
		queued += n
		if err != nil {
			return queued, err
		}
		if len(batch) < reminderBatch {
			break
		}
	}
	if queued > 0 {
		s.log.Info("reminders queued", "count", queued)
		if s.metrics != nil {
			s.metrics.Reminders.Add(float64(queued))
		}
		s.mailQueued()
	}
	return queued, nil
}

// dueReminders reads the next batch of due certificates, oldest due first,
// through the partial index on next_reminder_at.
func (s *Service) dueReminders(ctx context.Context, now time.Time) ([]dueReminder, error) {
	rows, err := s.store.db.QueryContext(ctx, `SELECT c.serial, c.user_id, u.email, c.next_reminder_at, c.not_before, c.not_after
		FROM certificates c JOIN users u ON u.id = c.user_id
		WHERE c.next_reminder_at IS NOT NULL AND c.next_reminder_at <= $1
		ORDER BY c.next_reminder_at LIMIT $2`, ms(now), reminderBatch)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []dueReminder
	for rows.Next() {
		var (
			d      dueReminder
			nb, na int64
		)
		if err := rows.Scan(&d.serial, &d.userID, &d.email, &d.due, &nb, &na); err != nil {
			return nil, err
		}
		d.notBefore, d.notAfter = fromMS(nb), fromMS(na)
		out = append(out, d)
	}
	return out, rows.Err()
}

// queueReminders handles one batch in one transaction. Several due
// certificates of one user make one mail, about the one expiring first.
// The mails are queued with multi-row INSERTs. The outbox row is the
// record of the reminder (kind, recipient, time and the certificate in its
// payload); the certificate row counts them.
func (s *Service) queueReminders(ctx context.Context, batch []dueReminder, now time.Time) (int, error) {
	queued := 0
	err := s.store.tx(ctx, func(tx *sql.Tx) error {
		queued = 0
		active, err := s.activeUsers(ctx, tx, batch)
		if err != nil {
			return err
		}
		claimed, err := s.advanceReminders(ctx, tx, batch, active, now)
		if err != nil {
			return err
		}
		var mails []outboxMail
		mailed := map[int64]bool{}
		for _, d := range batch { // oldest due first: the mail is about that one
			if !claimed[d.serial] || !active[d.userID] || mailed[d.userID] {
				continue // another daemon took it, or its user is not active, or already mailed
			}
			mailed[d.userID] = true
			mails = append(mails, outboxMail{Kind: MailReminder, To: d.email,
				Payload: OutboxPayload{Email: d.email, Serial: d.serial, NotAfter: d.notAfter}})
		}
		queued = len(mails)
		return s.store.insertOutboxRows(ctx, tx, mails, s.msgDom, now)
	})
	return queued, err
}

// advanceReminders moves each due certificate's next reminder on (to none
// for a user who is not active), if it is still due at the time read: a
// compare-and-set, so that of two daemons only one claims a reminder. It
// returns the serials it claimed. One prepared statement per row, looked up
// by serial: a set-based UPDATE ... FROM (VALUES ...) was tried, and
// SQLite's planner then scans the reminder index (every tracked
// certificate) instead of looking the rows up by serial.
func (s *Service) advanceReminders(ctx context.Context, tx *sql.Tx, batch []dueReminder, active map[int64]bool, now time.Time) (map[string]bool, error) {
	advance, err := tx.PrepareContext(ctx, `UPDATE certificates SET next_reminder_at = $1, last_reminder_at = $2,
		reminders_sent = reminders_sent + 1 WHERE serial = $3 AND next_reminder_at = $4`)
	if err != nil {
		return nil, err
	}
	defer advance.Close()
	claimed := make(map[string]bool, len(batch))
	for _, d := range batch {
		var next sql.NullInt64 // NULL: no more reminders
		if active[d.userID] {
			pol := s.policies.For(d.email[strings.LastIndexByte(d.email, '@')+1:])
			if due, ok := pol.Reminders.Next(d.notBefore, d.notAfter, now); ok {
				next = sql.NullInt64{Int64: ms(due), Valid: true}
			}
		}
		res, err := advance.ExecContext(ctx, next, ms(now), d.serial, d.due)
		if err != nil {
			return nil, fmt.Errorf("reminders: advance %s: %w", d.serial, err)
		}
		if n, _ := res.RowsAffected(); n == 1 {
			claimed[d.serial] = true
		}
	}
	return claimed, nil
}

// activeUsers reports which of the batch's users are active; a reminder
// for a disabled or lapsed user's certificate is dropped (its schedule is
// cleared by the advance).
func (s *Service) activeUsers(ctx context.Context, tx *sql.Tx, batch []dueReminder) (map[int64]bool, error) {
	ids := make([]string, 0, len(batch))
	seen := map[int64]bool{}
	for _, d := range batch {
		if !seen[d.userID] {
			seen[d.userID] = true
			ids = append(ids, fmt.Sprint(d.userID))
		}
	}
	// The ids are integers from the database, so joining them is safe.
	rows, err := tx.QueryContext(ctx, `SELECT id FROM users WHERE state = 'active' AND id IN (`+strings.Join(ids, ",")+`)`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[int64]bool{}
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out[id] = true
	}
	return out, rows.Err()
}

// ReminderStats describes the scheduler's backlog for metrics.
type ReminderStats struct {
	Due     int           // reminders due now and not yet queued
	Overdue time.Duration // how far behind schedule the oldest due one is
}

// ReminderBacklog counts due reminders and how late the oldest is.
func (s *Service) ReminderBacklog(ctx context.Context) (ReminderStats, error) {
	now := s.clock.Now()
	var (
		st     ReminderStats
		oldest sql.NullInt64
	)
	err := s.store.db.QueryRowContext(ctx, `SELECT COUNT(*), MIN(next_reminder_at) FROM certificates
		WHERE next_reminder_at IS NOT NULL AND next_reminder_at <= $1`, ms(now)).Scan(&st.Due, &oldest)
	if err == nil && oldest.Valid {
		st.Overdue = now.Sub(fromMS(oldest.Int64))
	}
	return st, err
}

// MailKindOf returns the kind of mail kms sent with messageID (angle
// brackets optional), so a request answering a reminder can be recognised.
func (s *Store) MailKindOf(ctx context.Context, messageID string) (OutboxKind, error) {
	id := "<" + strings.Trim(messageID, "<>") + ">"
	var kind string
	err := s.db.QueryRowContext(ctx, `SELECT kind FROM outbox WHERE message_id = $1`, id).Scan(&kind)
	if err == sql.ErrNoRows {
		return "", ErrNotFound
	}
	return OutboxKind(kind), err
}

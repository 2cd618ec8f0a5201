// Package kms is the domain of the key management server: users, their
// certificates, the lifecycle operations that move them between states
// (SPEC section 2), and the SQL store that keeps them. Every operation
// commits its state change, the mail it causes (an outbox row) and its audit
// record in one transaction.
package kms

import (
	"errors"
	"time"
)

// UserState is where a user stands in the lifecycle.
type UserState string

// User states, SPEC section 2.
const (
	UserInvited  UserState = "invited"  // an enrollment code is outstanding
	UserActive   UserState = "active"   // holds a current certificate
	UserLapsed   UserState = "lapsed"   // the newest certificate expired unrenewed
	UserDisabled UserState = "disabled" // switched off by an administrator
)

// CertState is where a certificate stands.
type CertState string

// Certificate states, SPEC section 2.
const (
	CertCurrent    CertState = "current"    // the user's certificate in force
	CertSuperseded CertState = "superseded" // replaced by a renewal; valid until its own expiry
	CertExpired    CertState = "expired"
	CertRevoked    CertState = "revoked"
)

// User is a person whose certificates kms manages.
type User struct {
	ID        int64     `json:"-"`
	Email     string    `json:"email"`
	Name      string    `json:"name,omitempty"`
	State     UserState `json:"state"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// Certificate is a certificate kms issued or tracks by import.
type Certificate struct {
	Serial           string     `json:"serial"` // lower-case hex
	Email            string     `json:"email"`
	State            CertState  `json:"state"`
	NotBefore        time.Time  `json:"not_before"`
	NotAfter         time.Time  `json:"not_after"`
	IssuedAt         time.Time  `json:"issued_at"`
	KeySince         time.Time  `json:"key_since"`
	Imported         bool       `json:"imported,omitempty"`
	SupersededBy     string     `json:"superseded_by,omitempty"`
	RevokedAt        *time.Time `json:"revoked_at,omitempty"`
	RevocationReason string     `json:"revocation_reason,omitempty"`
	NextReminderAt   *time.Time `json:"next_reminder_at,omitempty"`
	LastReminderAt   *time.Time `json:"last_reminder_at,omitempty"`
	RemindersSent    int        `json:"reminders_sent"`
	DER              []byte     `json:"-"`

	tracked *certRow // the row this was read from, when CertForSigner read it
}

// trackedRow returns the row c was read from by CertForSigner, if c is the
// certificate serial; nil otherwise.
func (c *Certificate) trackedRow(serial string) *certRow {
	if c == nil || c.tracked == nil || c.Serial != serial {
		return nil
	}
	return c.tracked
}

// Enrollment is what an administrator hands to a user out of band.
type Enrollment struct {
	Email   string    `json:"email"`
	Code    string    `json:"code"`
	Expires time.Time `json:"expires"`
}

// Sentinel errors for domain outcomes. Callers test them with errors.Is; the
// admin API maps them to HTTP status codes and the mail layer to rejections.
var (
	ErrNotFound       = errors.New("not found")
	ErrInvalidAddress = errors.New("invalid address")
	ErrDomain         = errors.New("domain not served by this kms")
	ErrAlreadyActive  = errors.New("user already holds a current certificate")
	ErrUserState      = errors.New("operation not allowed in the user's state")
	ErrCertState      = errors.New("operation not allowed in the certificate's state")
	ErrLapsed         = errors.New("certificate expired: the user must be re-enrolled by an administrator")
	ErrReplay         = errors.New("request already honoured")
	ErrConflict       = errors.New("concurrent change: try again")
	ErrRekeyRequired  = errors.New("key too old for same-key renewal: send a new certificate request")
	ErrNoCode         = errors.New("no enrollment code outstanding")
)

// ms converts t to the store's time unit, Unix milliseconds.
func ms(t time.Time) int64 { return t.UnixMilli() }

// fromMS converts a stored time back, in UTC.
func fromMS(v int64) time.Time { return time.UnixMilli(v).UTC() }

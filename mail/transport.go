package mail

import (
	"context"
	"errors"

	"github.com/kmsmail/kms/kms"
)

// Renderer turns a queued mail into a complete, signed RFC 5322 message.
// It must be deterministic enough that the Message-ID is the row's
// (m.MessageID): a retried delivery must carry the same one.
type Renderer interface {
	Render(ctx context.Context, m kms.OutboxMessage) ([]byte, error)
}

// Transport hands a rendered message to its next hop. key identifies the
// message across attempts (see DeliveryKey); a transport that can detect an
// earlier delivery of the same key (Maildir) uses it to deliver exactly
// once. An error for which IsPermanent is true means a retry cannot
// succeed; any other error is temporary.
type Transport interface {
	Deliver(ctx context.Context, from string, to []string, msg []byte, key string) error
}

// ErrPermanent is matched (errors.Is) by delivery errors that a retry cannot
// fix: a 5xx reply to the message, or a message that cannot be rendered.
var ErrPermanent = errors.New("permanent delivery failure")

// permanentError marks err as permanent while keeping it matchable.
type permanentError struct{ err error }

func (e *permanentError) Error() string   { return e.err.Error() }
func (e *permanentError) Unwrap() []error { return []error{e.err, ErrPermanent} }

// Permanent marks err as a failure that retrying cannot fix, for Transport
// implementations outside this package. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err is a permanent delivery failure. Errors
// not marked permanent (network errors, timeouts, 4xx replies, a full disk)
// are temporary and the mail is retried.
func IsPermanent(err error) bool { return errors.Is(err, ErrPermanent) }

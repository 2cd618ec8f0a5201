// Package demo is the story `kms demo` tells (SPEC section 5): two users,
// played by a small S/MIME mail client in this package, go through a whole
// certificate lifecycle against a real kms daemon in compressed time, and
// every step and every mail kms sends is narrated as it happens.
//
// The daemon itself is started by cmd/kms, which owns its wiring; this
// package talks to it only as outsiders do: SMTP to its listener, HTTP to
// its admin API, and files in the Maildir it delivers into.
package demo

import (
	"errors"
	"fmt"
	"time"
)

// The bounds of Schedule.Month. Below half a second the daemon's one-second
// maintenance tick (reminders, expiry) is longer than the shortest reminder
// interval and the story stops being the policy's; above an hour nobody
// watches a demo.
const (
	MinMonth     = 500 * time.Millisecond
	MaxMonth     = time.Hour
	DefaultMonth = 2 * time.Second
)

// ErrSpeed is returned by NewSchedule for a month length out of bounds.
var ErrSpeed = errors.New("month length out of range")

// Schedule is the policy of the demo: the product's defaults (SPEC section
// 3) with one month lasting Month. The reminder repeats are coarser than the
// defaults (every 2 months instead of 14 days, every half month instead of
// daily in the final stretch) so that the screen stays readable. Every
// duration is whole seconds, because configuration durations are.
type Schedule struct {
	Month      time.Duration // one compressed month
	Lifetime   time.Duration // 18 months
	First      time.Duration // first reminder, 12 months after issuance
	Every      time.Duration // repeat reminders, every 2 months
	Final      time.Duration // the final stretch, the last month
	FinalEvery time.Duration // reminders in the final stretch, every half month
	RekeyAfter time.Duration // 36 months
	CodeTTL    time.Duration // enrollment codes stay valid long enough for any speed
}

// NewSchedule returns the schedule for a month lasting month.
func NewSchedule(month time.Duration) (Schedule, error) {
	if month < MinMonth || month > MaxMonth {
		return Schedule{}, fmt.Errorf("%w: a month of %s; use from %s to %s", ErrSpeed, month, MinMonth, MaxMonth)
	}
	months := func(n float64) time.Duration {
		d := time.Duration(n * float64(month)).Round(time.Second)
		return max(d, time.Second)
	}
	return Schedule{
		Month:      month,
		Lifetime:   months(18),
		First:      months(12),
		Every:      months(2),
		Final:      months(1),
		FinalEvery: months(0.5),
		RekeyAfter: months(36),
		CodeTTL:    max(10*time.Minute, months(1)),
	}, nil
}

// Months converts a duration into compressed months.
func (s Schedule) Months(d time.Duration) float64 {
	return float64(d) / float64(s.Month)
}

// ConfigYAML returns the configuration file of the demo's kms: everything
// in dataDir, SMTP and the admin API on the given loopback addresses, the
// compressed policy, a P-256 issuing CA (quick to create), and warnings
// only in the log. It is a complete file that `kms serve --config` accepts.
func ConfigYAML(dataDir, smtpListen, httpListen string, s Schedule) []byte {
	sec := func(d time.Duration) string { return fmt.Sprintf("%ds", int64(d/time.Second)) }
	return fmt.Appendf(nil, `# kms demo: one month lasts %s, so a certificate lives %s.
data_dir: %q
address: %s
admin_address: %s
domains: [%s]
smtp:
  listen: %q
http:
  listen: %q
ca:
  key_type: p256
log:
  level: warn
policy:
  lifetime: %s
  reminders: {first: %s, every: %s, final: %s, final_every: %s}
  rekey_after: %s
  enrollment: {code_ttl: %s}
`, s.Month, sec(s.Lifetime), dataDir, KMSAddress, AdminAddress, Domain, smtpListen, httpListen,
		sec(s.Lifetime), sec(s.First), sec(s.Every), sec(s.Final), sec(s.FinalEvery), sec(s.RekeyAfter), sec(s.CodeTTL))
}

// The demo's mail domain and addresses.
const (
	Domain       = "example.com"
	KMSAddress   = "kms@example.com"
	AdminAddress = "postmaster@example.com"
)

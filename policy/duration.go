// Package policy holds the rules kms applies to certificates: lifetimes, the
// reminder schedule, which keys are acceptable and how enrollment codes behave.
// Everything here is pure: functions take the time they reason about as an
// argument, so tests and the daemon's compressed-time mode share one code path.
package policy

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Duration is a span of time that may include calendar months. A certificate
// lifetime of "18mo" issued on 31 January ends on 31 July of the next year,
// not 540 days later, which is what administrators expect when they write
// months. Months and the fixed part add up: "1y" is 12 months, "14d" is
// 14*24 hours.
type Duration struct {
	Months int           // calendar months, applied with time.AddDate
	Fixed  time.Duration // seconds, minutes, hours and days
}

// Months returns a Duration of n calendar months.
func Months(n int) Duration { return Duration{Months: n} }

// Days returns a Duration of n days of 24 hours.
func Days(n int) Duration { return Duration{Fixed: time.Duration(n) * 24 * time.Hour} }

// Fixed returns a Duration of exactly d.
func Fixed(d time.Duration) Duration { return Duration{Fixed: d} }

// unitOrder lists the accepted units, longest suffix first so that "mo" is
// not read as "m".
var unitOrder = []string{"mo", "y", "d", "h", "m", "s"}

// ParseDuration reads a duration such as "18mo", "14d", "90s", "1y" or a sum
// of terms such as "1y6mo" or "1d12h". A bare number is refused: the unit
// is what tells "18" months from "18" seconds.
func ParseDuration(s string) (Duration, error) {
	in := strings.TrimSpace(s)
	if in == "" {
		return Duration{}, fmt.Errorf("empty duration: use a number and a unit (s, m, h, d, mo, y), e.g. 14d")
	}
	var d Duration
	rest := in
	for rest != "" {
		i := 0
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		if i == 0 {
			return Duration{}, fmt.Errorf("duration %q: expected a number at %q", in, rest)
		}
		n, err := strconv.ParseInt(rest[:i], 10, 32)
		if err != nil {
			return Duration{}, fmt.Errorf("duration %q: number %q is too large", in, rest[:i])
		}
		rest = rest[i:]
		unit := ""
		for _, u := range unitOrder {
			if strings.HasPrefix(rest, u) {
				unit = u
				break
			}
		}
		if unit == "" {
			return Duration{}, fmt.Errorf("duration %q: unknown or missing unit after %d (use s, m, h, d, mo or y)", in, n)
		}
		rest = rest[len(unit):]
		if err := d.add(int(n), unit); err != nil {
			return Duration{}, fmt.Errorf("duration %q: %w", in, err)
		}
	}
	return d, nil
}

// maxFixed bounds the fixed part so that adding it to a time cannot overflow.
const maxFixed = 100 * 365 * 24 * time.Hour

func (d *Duration) add(n int, unit string) error {
	switch unit {
	case "y":
		d.Months += 12 * n
	case "mo":
		d.Months += n
	default:
		per := map[string]time.Duration{"d": 24 * time.Hour, "h": time.Hour, "m": time.Minute, "s": time.Second}[unit]
		if time.Duration(n) > maxFixed/per {
			return fmt.Errorf("%d%s is longer than 100 years", n, unit)
		}
		d.Fixed += time.Duration(n) * per
	}
	if d.Months > 1200 || d.Fixed > maxFixed {
		return fmt.Errorf("longer than 100 years")
	}
	return nil
}

// AddTo returns t moved forward by d: the months first, on the calendar, then
// the fixed part.
func (d Duration) AddTo(t time.Time) time.Time {
	return t.AddDate(0, d.Months, 0).Add(d.Fixed)
}

// SubFrom returns t moved back by d, the inverse of AddTo for the purpose of
// "this long before expiry".
func (d Duration) SubFrom(t time.Time) time.Time {
	return t.Add(-d.Fixed).AddDate(0, -d.Months, 0)
}

// IsZero reports whether d is empty.
func (d Duration) IsZero() bool { return d.Months == 0 && d.Fixed == 0 }

// String prints d in the syntax ParseDuration reads, e.g. "18mo" or "1d12h".
func (d Duration) String() string {
	if d.IsZero() {
		return "0s"
	}
	var b strings.Builder
	if d.Months%12 == 0 && d.Months != 0 {
		fmt.Fprintf(&b, "%dy", d.Months/12)
	} else if d.Months != 0 {
		fmt.Fprintf(&b, "%dmo", d.Months)
	}
	rest := d.Fixed
	for _, u := range []struct {
		name string
		per  time.Duration
	}{{"d", 24 * time.Hour}, {"h", time.Hour}, {"m", time.Minute}, {"s", time.Second}} {
		if n := rest / u.per; n > 0 {
			fmt.Fprintf(&b, "%d%s", n, u.name)
			rest -= n * u.per
		}
	}
	return b.String()
}

// UnmarshalText lets YAML and JSON decoders read "18mo".
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := ParseDuration(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}

// MarshalText writes d as ParseDuration reads it.
func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

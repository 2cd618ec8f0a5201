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
// months. A month that would land past the end of a shorter month stops on
// its last day: one month after 31 January is 28 (or 29) February, never
// 3 March. Months and the fixed part add up: "1y" is 12 months, "14d" is
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
			if strings.TrimLeft(rest, " \t") != rest {
				return Duration{}, fmt.Errorf("duration %q: no spaces inside a duration, write the terms together as in 1y6mo", in)
			}
			return Duration{}, fmt.Errorf("duration %q: expected a number at %q (a duration is one or more terms like 14d, no sign)", in, rest)
		}
		n, err := strconv.ParseInt(rest[:i], 10, 32)
		if err != nil {
			return Duration{}, fmt.Errorf("duration %q: number %q is too large (at most 100 years)", in, rest[:i])
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
			if strings.TrimLeft(rest, " \t") != rest {
				return Duration{}, fmt.Errorf("duration %q: no spaces inside a duration, write the unit right after the number as in 14d", in)
			}
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

// maxMonths bounds the calendar part to 100 years, like maxFixed.
const maxMonths = 1200

func (d *Duration) add(n int, unit string) error {
	switch unit {
	case "y":
		// Bound n before multiplying so that the product cannot overflow an
		// int on 32-bit platforms.
		if n > maxMonths/12 {
			return fmt.Errorf("%dy is longer than 100 years", n)
		}
		d.Months += 12 * n
	case "mo":
		if n > maxMonths {
			return fmt.Errorf("%dmo is longer than 100 years", n)
		}
		d.Months += n
	default:
		per := map[string]time.Duration{"d": 24 * time.Hour, "h": time.Hour, "m": time.Minute, "s": time.Second}[unit]
		if time.Duration(n) > maxFixed/per {
			return fmt.Errorf("%d%s is longer than 100 years", n, unit)
		}
		d.Fixed += time.Duration(n) * per
	}
	if d.Months > maxMonths || d.Fixed > maxFixed {
		return fmt.Errorf("longer than 100 years")
	}
	return nil
}

// AddTo returns t moved forward by d: the months first, on the calendar, then
// the fixed part. A day of the month that the target month does not have
// becomes that month's last day (31 January + 1mo = 28 February), so N months
// never spill into month N+1 as time.AddDate would.
func (d Duration) AddTo(t time.Time) time.Time {
	return addMonths(t, d.Months).Add(d.Fixed)
}

// SubFrom returns t moved back by d, the inverse of AddTo for the purpose of
// "this long before expiry": the fixed part first, then the months, with the
// same end-of-month rule (31 March - 1mo = 28 February).
func (d Duration) SubFrom(t time.Time) time.Time {
	return addMonths(t.Add(-d.Fixed), -d.Months)
}

// addMonths moves t by n calendar months in t's location, keeping the time of
// day and clamping the day of the month to the length of the target month.
func addMonths(t time.Time, n int) time.Time {
	if n == 0 {
		return t
	}
	y, m, day := t.Date()
	hh, mm, ss := t.Clock()
	// time.Date normalises a month outside 1..12 into the right year.
	first := time.Date(y, m+time.Month(n), 1, 0, 0, 0, 0, t.Location())
	if last := daysIn(first.Year(), first.Month()); day > last {
		day = last
	}
	return time.Date(first.Year(), first.Month(), day, hh, mm, ss, t.Nanosecond(), t.Location())
}

// daysIn returns the number of days in month m of year y.
func daysIn(y int, m time.Month) int {
	// Day 0 of the next month is the last day of this one.
	return time.Date(y, m+1, 0, 0, 0, 0, 0, time.UTC).Day()
}

// IsZero reports whether d is empty.
func (d Duration) IsZero() bool { return d.Months == 0 && d.Fixed == 0 }

// String prints d in the syntax ParseDuration reads, e.g. "18mo" or "1d12h";
// ParseDuration(d.String()) returns d for every d that ParseDuration can
// return. Values built in code that the syntax cannot express (a negative
// part, a fraction of a second) are still printed readably, with a minus
// sign or a Go-style remainder such as "1s500ms", but do not parse back:
// MarshalText refuses them.
func (d Duration) String() string {
	if d.IsZero() {
		return "0s"
	}
	var b strings.Builder
	months := d.Months
	if months < 0 {
		b.WriteByte('-')
		months = -months
	}
	if months%12 == 0 && months != 0 {
		fmt.Fprintf(&b, "%dy", months/12)
	} else if months != 0 {
		fmt.Fprintf(&b, "%dmo", months)
	}
	if d.Fixed < 0 {
		b.WriteByte('-')
	}
	rest := d.Fixed.Abs()
	for _, u := range []struct {
		name string
		per  time.Duration
	}{{"d", 24 * time.Hour}, {"h", time.Hour}, {"m", time.Minute}, {"s", time.Second}} {
		if n := rest / u.per; n > 0 {
			fmt.Fprintf(&b, "%d%s", n, u.name)
			rest -= n * u.per
		}
	}
	if rest > 0 {
		b.WriteString(rest.String())
	}
	return b.String()
}

// check reports why d cannot be written in the duration syntax, or nil.
func (d Duration) check() error {
	switch {
	case d.Months < 0 || d.Fixed < 0:
		return fmt.Errorf("duration %s is negative", d)
	case d.Months > maxMonths || d.Fixed > maxFixed:
		return fmt.Errorf("duration %s is longer than 100 years", d)
	case d.Fixed%time.Second != 0:
		return fmt.Errorf("duration %s has a fraction of a second, which the s/m/h/d/mo/y syntax cannot express", d)
	}
	return nil
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

// MarshalText writes d as ParseDuration reads it. It refuses a value that
// would not read back the same, rather than write a lossy one.
func (d Duration) MarshalText() ([]byte, error) {
	if err := d.check(); err != nil {
		return nil, err
	}
	return []byte(d.String()), nil
}

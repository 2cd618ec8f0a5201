package policy

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

const day = 24 * time.Hour

func TestParseDuration(t *testing.T) {
	good := []struct {
		in   string
		want Duration
	}{
		{"18mo", Duration{Months: 18}},
		{"14d", Duration{Fixed: 14 * day}},
		{"90s", Duration{Fixed: 90 * time.Second}},
		{"1y", Duration{Months: 12}},
		{"1y6mo", Duration{Months: 18}},
		{"1d12h", Duration{Fixed: 36 * time.Hour}},
		{"5m", Duration{Fixed: 5 * time.Minute}},
		{"1mo1m", Duration{Months: 1, Fixed: time.Minute}},
		{"2h30m15s", Duration{Fixed: 2*time.Hour + 30*time.Minute + 15*time.Second}},
		{"0s", Duration{}},
		{"007d", Duration{Fixed: 7 * day}},
		{"  14d\t", Duration{Fixed: 14 * day}}, // YAML may keep surrounding blanks
		{"100y", Duration{Months: 1200}},
		{"36500d", Duration{Fixed: 36500 * day}},
	}
	for _, tc := range good {
		got, err := ParseDuration(tc.in)
		if err != nil {
			t.Errorf("ParseDuration(%q): %v", tc.in, err)
			continue
		}
		if got != tc.want {
			t.Errorf("ParseDuration(%q) = %+v, want %+v", tc.in, got, tc.want)
		}
	}

	bad := []struct {
		in, mention string // mention: a piece the error message must contain
	}{
		{"", "empty"},
		{"   ", "empty"},
		{"18", "unit"},
		{"mo", "expected a number"},
		{"-1d", "expected a number"},
		{"+1d", "expected a number"},
		{"1x", "unknown or missing unit"},
		{"1D", "unknown or missing unit"},
		{"1.5d", "unknown or missing unit"},
		{"99999999999d", "too large"},
		{"36501d", "100 years"},
		{"101y", "100 years"},
		{"1201mo", "100 years"},
		{"100y1mo", "100 years"},
		{"1y 6mo", "no spaces"},
		{"1 d", "no spaces"},
		{"14d,", "expected a number"},
		{"1mos", "expected a number"},
		{"١d", "expected a number"}, // an Arabic-Indic digit is not a digit here
	}
	for _, tc := range bad {
		got, err := ParseDuration(tc.in)
		if err == nil {
			t.Errorf("ParseDuration(%q) = %+v, want an error", tc.in, got)
			continue
		}
		if !strings.Contains(err.Error(), tc.mention) {
			t.Errorf("ParseDuration(%q) error %q does not mention %q", tc.in, err, tc.mention)
		}
	}
}

func TestAddToMonthEnd(t *testing.T) {
	at := func(y int, m time.Month, d int) time.Time { return time.Date(y, m, d, 10, 30, 0, 0, time.UTC) }
	tests := []struct {
		from time.Time
		d    Duration
		want time.Time
	}{
		{at(2026, time.January, 31), Months(1), at(2026, time.February, 28)},
		{at(2028, time.January, 31), Months(1), at(2028, time.February, 29)}, // leap year
		{at(2026, time.January, 31), Months(18), at(2027, time.July, 31)},
		{at(2026, time.August, 31), Months(18), at(2028, time.February, 29)},
		{at(2026, time.March, 31), Months(1), at(2026, time.April, 30)},
		{at(2026, time.January, 30), Months(1), at(2026, time.February, 28)},
		{at(2026, time.January, 28), Months(1), at(2026, time.February, 28)},
		{at(2026, time.February, 28), Months(1), at(2026, time.March, 28)}, // no drift back to the 31st
		{at(2026, time.December, 15), Months(1), at(2027, time.January, 15)},
		{at(2026, time.January, 31), Duration{Months: 1, Fixed: day}, at(2026, time.March, 1)},
		{at(2026, time.January, 31), Days(14), at(2026, time.February, 14)},
		{at(2026, time.January, 31), Duration{}, at(2026, time.January, 31)},
	}
	for _, tc := range tests {
		if got := tc.d.AddTo(tc.from); !got.Equal(tc.want) {
			t.Errorf("%s.AddTo(%s) = %s, want %s", tc.d, tc.from.Format(time.DateOnly), got, tc.want)
		}
	}
}

func TestAddToKeepsLocationAndClock(t *testing.T) {
	berlin := time.FixedZone("CET", 3600)
	from := time.Date(2026, time.January, 31, 23, 59, 58, 123, berlin)
	got := Months(1).AddTo(from)
	want := time.Date(2026, time.February, 28, 23, 59, 58, 123, berlin)
	if !got.Equal(want) || got.Location() != berlin {
		t.Errorf("AddTo = %s, want %s in the same location", got, want)
	}
}

func TestSubFrom(t *testing.T) {
	at := func(y int, m time.Month, d int) time.Time { return time.Date(y, m, d, 8, 0, 0, 0, time.UTC) }
	tests := []struct {
		from time.Time
		d    Duration
		want time.Time
	}{
		{at(2027, time.July, 31), Days(7), at(2027, time.July, 24)},
		{at(2026, time.March, 31), Months(1), at(2026, time.February, 28)},
		{at(2027, time.July, 31), Months(18), at(2026, time.January, 31)},
		{at(2026, time.March, 1), Duration{Months: 1, Fixed: day}, at(2026, time.January, 28)},
	}
	for _, tc := range tests {
		if got := tc.d.SubFrom(tc.from); !got.Equal(tc.want) {
			t.Errorf("%s.SubFrom(%s) = %s, want %s", tc.d, tc.from.Format(time.DateOnly), got, tc.want)
		}
	}
}

func TestDurationString(t *testing.T) {
	tests := []struct {
		d    Duration
		want string
	}{
		{Duration{}, "0s"},
		{Months(18), "18mo"},
		{Months(12), "1y"},
		{Months(24), "2y"},
		{Days(14), "14d"},
		{Fixed(90 * time.Second), "1m30s"},
		{Duration{Months: 1, Fixed: 36 * time.Hour}, "1mo1d12h"},
		// Values only code can build: readable, marked, not parseable.
		{Fixed(1500 * time.Millisecond), "1s500ms"},
		{Fixed(-time.Hour), "-1h"},
		{Months(-3), "-3mo"},
	}
	for _, tc := range tests {
		if got := tc.d.String(); got != tc.want {
			t.Errorf("%+v.String() = %q, want %q", tc.d, got, tc.want)
		}
	}
}

func TestStringRoundTrip(t *testing.T) {
	for _, in := range []string{"18mo", "12mo", "1y6mo", "14d", "7d", "1d", "90s", "36mo", "60s", "1d1h1m1s", "0s", "100y", "36500d"} {
		d, err := ParseDuration(in)
		if err != nil {
			t.Fatalf("ParseDuration(%q): %v", in, err)
		}
		back, err := ParseDuration(d.String())
		if err != nil {
			t.Errorf("ParseDuration(%q) (String of %q): %v", d.String(), in, err)
			continue
		}
		if back != d {
			t.Errorf("%q -> %+v -> %q -> %+v: not the same", in, d, d.String(), back)
		}
	}
}

func TestDurationText(t *testing.T) {
	type doc struct {
		Lifetime Duration `json:"lifetime"`
	}
	var v doc
	if err := json.Unmarshal([]byte(`{"lifetime":"1y6mo"}`), &v); err != nil {
		t.Fatal(err)
	}
	if v.Lifetime != Months(18) {
		t.Errorf("decoded %+v, want 18 months", v.Lifetime)
	}
	out, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != `{"lifetime":"18mo"}` {
		t.Errorf("encoded %s", out)
	}
	if err := json.Unmarshal([]byte(`{"lifetime":"18"}`), &v); err == nil {
		t.Error("a bare number decoded without error")
	}
	// A value that would not read back the same is refused, not written lossily.
	for _, d := range []Duration{Fixed(1500 * time.Millisecond), Fixed(-time.Second), Months(-1), Months(1201)} {
		if b, err := d.MarshalText(); err == nil {
			t.Errorf("MarshalText(%+v) = %q, want an error", d, b)
		}
	}
}

// FuzzParseDuration checks that ParseDuration never panics and that every
// value it returns prints as text that parses back to the same value.
func FuzzParseDuration(f *testing.F) {
	for _, s := range []string{"18mo", "14d", "90s", "1y6mo", "1d12h", "0s", "", "-1d", "1y 6mo", "99999999999d", "100y", "1mo1m"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDuration(s)
		if err != nil {
			return
		}
		if err := d.check(); err != nil {
			t.Fatalf("ParseDuration(%q) returned an out-of-range value: %v", s, err)
		}
		text, err := d.MarshalText()
		if err != nil {
			t.Fatalf("MarshalText of ParseDuration(%q): %v", s, err)
		}
		back, err := ParseDuration(string(text))
		if err != nil {
			t.Fatalf("ParseDuration(%q) = %+v prints as %q, which does not parse: %v", s, d, text, err)
		}
		if back != d {
			t.Fatalf("ParseDuration(%q) = %+v prints as %q, which parses to %+v", s, d, text, back)
		}
	})
}

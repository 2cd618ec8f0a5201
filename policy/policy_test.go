package policy

import (
	"strings"
	"testing"
	"time"
)

func TestDefaultIsSpec(t *testing.T) {
	p := Default()
	if err := p.Validate(); err != nil {
		t.Fatalf("Default().Validate(): %v", err)
	}
	checks := []struct {
		name string
		got  Duration
		want string
	}{
		{"lifetime", p.Lifetime, "18mo"},
		{"reminders.first", p.Reminders.First, "1y"},
		{"reminders.every", p.Reminders.Every, "14d"},
		{"reminders.final", p.Reminders.Final, "7d"},
		{"reminders.final_every", p.Reminders.FinalEvery, "1d"},
		{"rekey_after", p.RekeyAfter, "3y"},
		{"enrollment.code_ttl", p.Enrollment.CodeTTL, "14d"},
	}
	for _, c := range checks {
		if c.got.String() != c.want {
			t.Errorf("%s = %s, want %s", c.name, c.got, c.want)
		}
	}
	if p.Enrollment.MaxAttempts != 5 {
		t.Errorf("enrollment.max_attempts = %d, want 5", p.Enrollment.MaxAttempts)
	}
	if len(p.Keys) != len(AllKeyTypes) {
		t.Errorf("keys = %v, want all of %v", p.Keys, AllKeyTypes)
	}
	// Default must hand out its own slice: a caller editing one policy's
	// keys must not change another's.
	p.Keys[0] = "changed"
	if Default().Keys[0] == "changed" || AllKeyTypes[0] == "changed" {
		t.Error("Default shares its Keys slice")
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(*Policy)
		mention string // "" means valid
	}{
		{"default", func(*Policy) {}, ""},
		{"compressed demo", func(p *Policy) {
			p.Lifetime, p.RekeyAfter = Fixed(time.Minute), Fixed(3*time.Minute)
			p.Reminders = Reminders{First: Fixed(20 * time.Second), Every: Fixed(10 * time.Second), Final: Fixed(7 * time.Second), FinalEvery: Fixed(2 * time.Second)}
			p.Enrollment.CodeTTL = Fixed(30 * time.Second)
		}, ""},
		{"no final window", func(p *Policy) { p.Reminders.Final = Duration{} }, ""},
		{"rekey never", func(p *Policy) { p.RekeyAfter = Duration{} }, ""},
		{"one key type", func(p *Policy) { p.Keys = []KeyType{P256} }, ""},
		{"zero lifetime", func(p *Policy) { p.Lifetime = Duration{} }, "lifetime"},
		{"negative lifetime", func(p *Policy) { p.Lifetime = Months(-1) }, "lifetime: -1mo is negative"},
		{"zero first", func(p *Policy) { p.Reminders.First = Duration{} }, "reminders.first"},
		{"zero every", func(p *Policy) { p.Reminders.Every = Duration{} }, "reminders.every"},
		{"zero final_every", func(p *Policy) { p.Reminders.FinalEvery = Duration{} }, "reminders.final_every"},
		{"negative final", func(p *Policy) { p.Reminders.Final = Fixed(-time.Hour) }, "reminders.final"},
		{"negative rekey_after", func(p *Policy) { p.RekeyAfter = Months(-36) }, "rekey_after"},
		{"zero code_ttl", func(p *Policy) { p.Enrollment.CodeTTL = Duration{} }, "enrollment.code_ttl"},
		{"zero max_attempts", func(p *Policy) { p.Enrollment.MaxAttempts = 0 }, "enrollment.max_attempts"},
		{"no keys", func(p *Policy) { p.Keys = nil }, "keys: at least one"},
		{"unknown key", func(p *Policy) { p.Keys = []KeyType{RSA2048, "ed25519"} }, `unknown key type "ed25519"`},
		{"first equals lifetime", func(p *Policy) { p.Reminders.First = Months(18) }, "reminders.first: 18mo must be shorter than lifetime 18mo"},
		{"first after lifetime", func(p *Policy) { p.Reminders.First = Months(24) }, "reminders.first"},
		{"final as long as lifetime", func(p *Policy) { p.Reminders.Final = Months(18) }, "reminders.final"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := Default()
			tc.edit(&p)
			err := p.Validate()
			switch {
			case tc.mention == "" && err != nil:
				t.Errorf("Validate: %v, want nil", err)
			case tc.mention != "" && err == nil:
				t.Errorf("Validate: nil, want an error about %q", tc.mention)
			case tc.mention != "" && !strings.Contains(err.Error(), tc.mention):
				t.Errorf("Validate: %q does not mention %q", err, tc.mention)
			}
		})
	}
}

func TestSetFor(t *testing.T) {
	short := Default()
	short.Lifetime = Months(6)
	short.Reminders.First = Months(4)
	keysOnly := Default()
	keysOnly.Keys = []KeyType{P384}
	s := Set{
		Default: Default(),
		Domains: map[string]Policy{"short.example": short, "Mixed.Example": keysOnly},
	}
	tests := []struct {
		domain string
		want   Policy
	}{
		{"short.example", short},
		{"SHORT.Example", short},
		{"mixed.example", keysOnly},
		{"MIXED.EXAMPLE", keysOnly},
		{"example.com", Default()},
		{"sub.short.example", Default()}, // overrides are per domain, not per subtree
		{"", Default()},
	}
	for _, tc := range tests {
		got := s.For(tc.domain)
		if got.Lifetime != tc.want.Lifetime || strings.Join(keyStrings(got.Keys), ",") != strings.Join(keyStrings(tc.want.Keys), ",") {
			t.Errorf("For(%q) = lifetime %s keys %v, want lifetime %s keys %v", tc.domain, got.Lifetime, got.Keys, tc.want.Lifetime, tc.want.Keys)
		}
	}
	if got := (Set{Default: short}).For("any.example"); got.Lifetime != short.Lifetime {
		t.Errorf("a Set without domains returned lifetime %s, want its default's %s", got.Lifetime, short.Lifetime)
	}
}

func keyStrings(ks []KeyType) []string {
	out := make([]string, len(ks))
	for i, k := range ks {
		out[i] = string(k)
	}
	return out
}

func TestNeedsRekey(t *testing.T) {
	first := time.Date(2026, time.January, 31, 9, 0, 0, 0, time.UTC)
	p := Default() // 36 months
	tests := []struct {
		name string
		now  time.Time
		want bool
	}{
		{"new key", first, false},
		{"first renewal", first.AddDate(1, 1, 0), false},
		{"a second before 36 months", time.Date(2029, time.January, 31, 8, 59, 59, 0, time.UTC), false},
		{"exactly 36 months", time.Date(2029, time.January, 31, 9, 0, 0, 0, time.UTC), true},
		{"older", time.Date(2029, time.June, 1, 0, 0, 0, 0, time.UTC), true},
	}
	for _, tc := range tests {
		if got := p.NeedsRekey(first, tc.now); got != tc.want {
			t.Errorf("%s: NeedsRekey(%s, %s) = %v, want %v", tc.name, first.Format(time.RFC3339), tc.now.Format(time.RFC3339), got, tc.want)
		}
	}
	p.RekeyAfter = Duration{}
	if p.NeedsRekey(first, first.AddDate(50, 0, 0)) {
		t.Error("rekey_after zero: NeedsRekey = true after 50 years, want never")
	}
	p.RekeyAfter = Fixed(3 * time.Minute)
	if !p.NeedsRekey(first, first.Add(3*time.Minute)) || p.NeedsRekey(first, first.Add(2*time.Minute)) {
		t.Error("rekey_after 3m: wrong answer around the 3-minute mark")
	}
}

package policy

import (
	"fmt"
	"strings"
	"time"
)

// KeyType names a public key algorithm and size that policy may accept.
type KeyType string

// The key types kms knows. SPEC section 3 accepts all of them by default.
const (
	RSA2048 KeyType = "rsa2048"
	RSA3072 KeyType = "rsa3072"
	RSA4096 KeyType = "rsa4096"
	P256    KeyType = "p256"
	P384    KeyType = "p384"
)

// AllKeyTypes lists every key type kms can certify, in order of strength.
var AllKeyTypes = []KeyType{RSA2048, RSA3072, RSA4096, P256, P384}

// Reminders is the reminder schedule: the first reminder goes out First after
// issuance, then one every Every, and inside the last Final before expiry one
// every FinalEvery.
type Reminders struct {
	First      Duration `yaml:"first" json:"first"`
	Every      Duration `yaml:"every" json:"every"`
	Final      Duration `yaml:"final" json:"final"`
	FinalEvery Duration `yaml:"final_every" json:"final_every"`
}

// Enrollment governs one-time enrollment codes.
type Enrollment struct {
	CodeTTL           Duration `yaml:"code_ttl" json:"code_ttl"`
	MaxAttempts       int      `yaml:"max_attempts" json:"max_attempts"`
	RequireEncryption bool     `yaml:"require_encryption" json:"require_encryption"`
	// MailCode puts the code into the invitation mail. Off by default: a
	// code mailed to the address it enrolls proves only control of that
	// mailbox, which is weaker than an administrator's hand-over.
	MailCode bool `yaml:"mail_code" json:"mail_code"`
}

// Policy is the complete set of rules for one mail domain.
type Policy struct {
	Lifetime   Duration   `yaml:"lifetime" json:"lifetime"`
	Reminders  Reminders  `yaml:"reminders" json:"reminders"`
	RekeyAfter Duration   `yaml:"rekey_after" json:"rekey_after"`
	Keys       []KeyType  `yaml:"keys" json:"keys"`
	Enrollment Enrollment `yaml:"enrollment" json:"enrollment"`
}

// Default returns the policy of SPEC section 3.
func Default() Policy {
	return Policy{
		Lifetime: Months(18),
		Reminders: Reminders{
			First:      Months(12),
			Every:      Days(14),
			Final:      Days(7),
			FinalEvery: Days(1),
		},
		RekeyAfter: Months(36),
		Keys:       append([]KeyType(nil), AllKeyTypes...),
		Enrollment: Enrollment{CodeTTL: Days(14), MaxAttempts: 5},
	}
}

// Validate reports the first rule that makes p unusable, naming the key as it
// is written in the configuration file. Durations set in code may have a
// fraction of a second (fast tests), but none may be negative.
func (p Policy) Validate() error {
	for _, c := range []struct {
		key      string
		d        Duration
		required bool
	}{
		{"lifetime", p.Lifetime, true},
		{"reminders.first", p.Reminders.First, true},
		{"reminders.every", p.Reminders.Every, true},
		{"reminders.final", p.Reminders.Final, false},
		{"reminders.final_every", p.Reminders.FinalEvery, true},
		{"rekey_after", p.RekeyAfter, false},
		{"enrollment.code_ttl", p.Enrollment.CodeTTL, true},
	} {
		switch {
		case c.d.Months < 0 || c.d.Fixed < 0:
			return fmt.Errorf("%s: %s is negative; write a duration such as 14d", c.key, c.d)
		case c.required && c.d.IsZero():
			return fmt.Errorf("%s: must be longer than zero; write a duration such as 14d", c.key)
		}
	}
	switch {
	case p.Enrollment.MaxAttempts < 1:
		return fmt.Errorf("enrollment.max_attempts: %d must be at least 1", p.Enrollment.MaxAttempts)
	case len(p.Keys) == 0:
		return fmt.Errorf("keys: at least one key type is needed (one of %s)", keyTypeList())
	}
	// Compare on a fixed reference date: with calendar months the order of two
	// durations can depend on the start date only by a few days, which does not
	// matter for a sanity check.
	ref := referenceTime
	end := p.Lifetime.AddTo(ref)
	if !p.Reminders.First.AddTo(ref).Before(end) {
		return fmt.Errorf("reminders.first: %s must be shorter than lifetime %s", p.Reminders.First, p.Lifetime)
	}
	if !p.Reminders.Final.AddTo(ref).Before(end) {
		return fmt.Errorf("reminders.final: %s must be shorter than lifetime %s", p.Reminders.Final, p.Lifetime)
	}
	for _, k := range p.Keys {
		if !k.Known() {
			return fmt.Errorf("keys: unknown key type %q (use %s)", k, keyTypeList())
		}
	}
	return nil
}

// Known reports whether k is one of AllKeyTypes.
func (k KeyType) Known() bool {
	for _, t := range AllKeyTypes {
		if t == k {
			return true
		}
	}
	return false
}

func keyTypeList() string {
	names := make([]string, len(AllKeyTypes))
	for i, t := range AllKeyTypes {
		names[i] = string(t)
	}
	return strings.Join(names, ", ")
}

// Set is the policy of every domain: a default and per-domain overrides that
// are complete policies already (the configuration layer merges an override
// onto the default before it builds the Set).
type Set struct {
	Default Policy
	Domains map[string]Policy
}

// For returns the policy that governs domain, compared case-insensitively
// (DNS names are), falling back to the default.
func (s Set) For(domain string) Policy {
	if p, ok := s.Domains[strings.ToLower(domain)]; ok {
		return p
	}
	// The map may have been built with mixed-case keys; a short scan still
	// finds them, and a handful of domains makes it cheap.
	for d, p := range s.Domains {
		if strings.EqualFold(d, domain) {
			return p
		}
	}
	return s.Default
}

// referenceTime is a fixed instant for comparing durations that contain months.
var referenceTime = time.Date(2001, time.January, 1, 0, 0, 0, 0, time.UTC)

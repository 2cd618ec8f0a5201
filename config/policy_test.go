package config_test

import (
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/kmsmail/kms/config"
	"github.com/kmsmail/kms/policy"
)

func TestPerDomainOverridesMergeKeyByKey(t *testing.T) {
	c, err := config.Load(filepath.Join("..", "testdata", "config", "per-domain.yaml"), nil)
	if err != nil {
		t.Fatal(err)
	}
	set := c.Policies()
	strong := []policy.KeyType{policy.RSA3072, policy.RSA4096, policy.P256, policy.P384}

	global := set.For("example.com")
	if global.Lifetime != policy.Months(18) || !slices.Equal(global.Keys, strong) {
		t.Errorf("example.com (no override) = %+v; want the global policy: 18mo, keys %v", global, strong)
	}

	lab := set.For("LAB.example.com") // Set.For is case-insensitive
	for _, ch := range []struct {
		key       string
		got, want policy.Duration
	}{
		{"lifetime", lab.Lifetime, policy.Months(3)},
		{"reminders.first", lab.Reminders.First, policy.Months(2)},
		{"reminders.every", lab.Reminders.Every, policy.Days(7)},
		{"reminders.final", lab.Reminders.Final, policy.Days(3)},
		{"reminders.final_every (inherited)", lab.Reminders.FinalEvery, policy.Days(1)},
		{"rekey_after", lab.RekeyAfter, policy.Months(6)},
		{"enrollment.code_ttl", lab.Enrollment.CodeTTL, policy.Days(2)},
	} {
		if ch.got != ch.want {
			t.Errorf("lab.example.com %s = %s, want %s", ch.key, ch.got, ch.want)
		}
	}
	if !lab.Enrollment.RequireEncryption || lab.Enrollment.MaxAttempts != 5 {
		t.Errorf("lab.example.com enrollment = %+v; want require_encryption and the inherited max_attempts 5", lab.Enrollment)
	}
	if !slices.Equal(lab.Keys, strong) {
		t.Errorf("lab.example.com keys = %v; want the global %v", lab.Keys, strong)
	}

	org := set.For("example.org")
	if org.Lifetime != policy.Months(24) || org.Reminders.First != policy.Months(18) || org.Reminders.Every != policy.Days(14) {
		t.Errorf("example.org = %+v; want lifetime 24mo, first 18mo, every 14d (inherited)", org)
	}
	if !slices.Equal(org.Keys, []policy.KeyType{policy.P256, policy.P384}) {
		t.Errorf("example.org keys = %v; a list replaces the global list whole", org.Keys)
	}

	// Policies() hands out copies: changing them does not change c.
	set.Default.Keys[0] = "changed"
	lab.Keys[0] = "changed"
	again := c.Policies()
	if again.Default.Keys[0] != policy.RSA3072 || again.For("lab.example.com").Keys[0] != policy.RSA3072 {
		t.Errorf("Policies() shares its slices with the configuration")
	}
}

func TestOverrideMergesOntoTheWholeGlobalPolicy(t *testing.T) {
	// The override comes before the global keys in the file; it must still
	// start from the global values, not from the SPEC defaults.
	c := mustLoad(t, `
domains: [example.com, example.org]
policy:
  domains:
    example.org:
      reminders: {every: 7d}
  lifetime: 24mo
  reminders: {first: 20mo}
  enrollment: {max_attempts: 3}
`, nil)
	org := c.Policies().For("example.org")
	if org.Lifetime != policy.Months(24) || org.Reminders.First != policy.Months(20) ||
		org.Reminders.Every != policy.Days(7) || org.Enrollment.MaxAttempts != 3 {
		t.Errorf("example.org = %+v; want the global 24mo/20mo/3 attempts with every 7d", org)
	}
	if got := c.Policies().For("example.com").Reminders.Every; got != policy.Days(14) {
		t.Errorf("example.com reminders.every = %s; the override leaked into the global policy", got)
	}
}

func TestCompressedTimeDemoPolicy(t *testing.T) {
	c, err := config.Load(filepath.Join("..", "testdata", "config", "demo.yaml"), nil)
	if err != nil {
		t.Fatal(err)
	}
	p := c.Policies().For("example.com")
	issued := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	if got := p.Lifetime.AddTo(issued).Sub(issued); got != 120*time.Second {
		t.Errorf("demo lifetime = %v, want 2m", got)
	}
	if p.Reminders.FinalEvery != policy.Fixed(5*time.Second) || p.Enrollment.CodeTTL != policy.Fixed(90*time.Second) {
		t.Errorf("demo policy = %+v", p)
	}
	if c.Relay.RetryFor != 30*time.Second || c.DataDir != "./kms-demo" || c.Maildir != filepath.Join("kms-demo", "mail") {
		t.Errorf("demo relay.retry_for %v, data_dir %q, maildir %q", c.Relay.RetryFor, c.DataDir, c.Maildir)
	}
}

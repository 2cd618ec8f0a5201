package config_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/kmsmail/kms/config"
	"github.com/kmsmail/kms/policy"
)

// noEnv is an empty environment.
func noEnv(string) string { return "" }

// envOf returns an environment holding exactly kv.
func envOf(kv map[string]string) func(string) string {
	return func(k string) string { return kv[k] }
}

// mustLoad loads src or fails the test.
func mustLoad(t *testing.T, src string, env func(string) string) *config.Config {
	t.Helper()
	c, err := config.LoadBytes([]byte(src), env)
	if err != nil {
		t.Fatalf("LoadBytes:\n%s\nerror: %v", src, err)
	}
	return c
}

// marshal renders c as YAML, the way to compare two configurations whole.
func marshal(t *testing.T, c *config.Config) string {
	t.Helper()
	b, err := yaml.Marshal(c)
	if err != nil {
		t.Fatalf("yaml.Marshal: %v", err)
	}
	return string(b)
}

func TestDefaultsFollowSpec(t *testing.T) {
	c, err := config.Load("", nil)
	if err != nil {
		t.Fatalf("Load without a file: %v", err)
	}
	checks := []struct {
		key       string
		got, want any
	}{
		{"data_dir", c.DataDir, "./kms-data"},
		{"address", c.Address, "kms@example.com"},
		{"admin_address", c.AdminAddress, "postmaster@example.com"},
		{"domains", strings.Join(c.Domains, ","), "example.com"},
		{"smtp.listen", c.SMTP.Listen, "127.0.0.1:2525"},
		{"smtp.hostname", c.SMTP.Hostname, "example.com"},
		{"smtp.tls.cert_file", c.SMTP.TLS.CertFile, ""},
		{"smtp.max_message_bytes", c.SMTP.MaxMessageBytes, int64(1048576)},
		{"smtp.max_connections_per_ip", c.SMTP.MaxConnectionsPerIP, 10},
		{"smtp.read_timeout", c.SMTP.ReadTimeout, 5 * time.Minute},
		{"smtp.write_timeout", c.SMTP.WriteTimeout, time.Minute},
		{"imap.addr", c.IMAP.Addr, ""},
		{"imap.mailbox", c.IMAP.Mailbox, "INBOX"},
		{"relay.addr", c.Relay.Addr, ""},
		{"relay.starttls", c.Relay.StartTLS, true},
		{"relay.retry_for", c.Relay.RetryFor, 5 * 24 * time.Hour},
		{"relay.rate", c.Relay.Rate, 10.0},
		{"maildir", c.Maildir, filepath.Join("kms-data", "mail")},
		{"http.listen", c.HTTP.Listen, "127.0.0.1:8025"},
		{"http.public_url", c.HTTP.PublicURL, ""},
		{"store.driver", c.Store.Driver, "sqlite"},
		{"store.dsn", c.Store.DSN, filepath.Join("kms-data", "kms.db")},
		{"ca.key_file", c.CA.KeyFile, filepath.Join("kms-data", "ca", "issuer.key")},
		{"ca.passphrase_file", c.CA.PassphraseFile, ""},
		{"ca.key_type", c.CA.KeyType, policy.RSA2048},
		{"log.level", c.Log.Level, "info"},
		{"log.format", c.Log.Format, "text"},
		{"base url", c.BaseURL(), "http://127.0.0.1:8025"},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %#v, want %#v", ch.key, ch.got, ch.want)
		}
	}
	set := c.Policies()
	if got, want := marshalPolicy(t, set.Default), marshalPolicy(t, policy.Default()); got != want {
		t.Errorf("default policy:\n%s\nwant SPEC section 3:\n%s", got, want)
	}
	if len(set.Domains) != 0 {
		t.Errorf("Policies().Domains = %v, want none", set.Domains)
	}
	for _, secret := range []func() ([]byte, error){c.RelayPassword, c.IMAPPassword, c.CAPassphrase, c.DBPassword} {
		if b, err := secret(); b != nil || err != nil {
			t.Errorf("a secret without file or environment = %q, %v; want nil, nil", b, err)
		}
	}
}

func marshalPolicy(t *testing.T, p policy.Policy) string {
	t.Helper()
	b, err := yaml.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// shippedConfigs lists every configuration file the repository ships.
func shippedConfigs(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join("..", "testdata", "config", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, filepath.Join("..", "kms.example.yaml"))
	// The four kinds of configuration the repository promises, plus the example.
	if len(files) < 5 {
		t.Fatalf("found only %v; expected testdata/config/*.yaml and kms.example.yaml", files)
	}
	return files
}

// deploymentEnv holds the secrets that the shipped deployment configuration
// expects in the environment.
var deploymentEnv = envOf(map[string]string{
	config.EnvRelayPassword: "relay-secret",
	config.EnvDBPassword:    "db-secret",
	config.EnvCAPassphrase:  "ca-secret",
})

func TestShippedConfigsLoad(t *testing.T) {
	for _, f := range shippedConfigs(t) {
		t.Run(filepath.Base(f), func(t *testing.T) {
			c, err := config.Load(f, deploymentEnv)
			if err != nil {
				t.Fatalf("shipped configuration does not load: %v", err)
			}
			// What Load accepted must load again, unchanged, once written
			// out: nothing is lost or reinterpreted between file and struct.
			first := marshal(t, c)
			again := mustLoad(t, first, deploymentEnv)
			if second := marshal(t, again); second != first {
				t.Errorf("round trip changed the configuration:\n%s\nbecame\n%s", first, second)
			}
		})
	}
}

func TestExampleHoldsEveryKeyAtItsDefault(t *testing.T) {
	example, err := config.Load(filepath.Join("..", "kms.example.yaml"), nil)
	if err != nil {
		t.Fatal(err)
	}
	def, err := config.Load("", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := marshal(t, example), marshal(t, def); got != want {
		t.Errorf("kms.example.yaml differs from the defaults:\n%s\nwant\n%s", got, want)
	}

	data, err := os.ReadFile(filepath.Join("..", "kms.example.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatal(err)
	}
	written := map[string]bool{}
	collectKeys(doc.Content[0], "", written)
	for _, k := range knownKeys(t) {
		if !written[k] {
			t.Errorf("key %s is missing from kms.example.yaml", k)
		}
	}
}

// collectKeys records the dotted path of every key under n.
func collectKeys(n *yaml.Node, path string, out map[string]bool) {
	if n.Kind != yaml.MappingNode {
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i].Value
		if path != "" {
			k = path + "." + k
		}
		out[k] = true
		collectKeys(n.Content[i+1], k, out)
	}
}

// knownKeys lists every key Config accepts, from the keys a full
// configuration marshals to, so that a new field cannot go undocumented.
func knownKeys(t *testing.T) []string {
	t.Helper()
	c, err := config.Load("", nil)
	if err != nil {
		t.Fatal(err)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(marshal(t, c)), &doc); err != nil {
		t.Fatal(err)
	}
	keys := map[string]bool{}
	collectKeys(doc.Content[0], "", keys)
	keys["policy.domains"] = true // nil map: marshalled as null, still a key
	var list []string
	for k := range keys {
		list = append(list, k)
	}
	if len(list) < 40 {
		t.Fatalf("only %d keys found: %v", len(list), list)
	}
	return list
}

func TestLoadFileErrors(t *testing.T) {
	dir := t.TempDir()
	_, err := config.Load(filepath.Join(dir, "absent.yaml"), nil)
	if !errors.Is(err, os.ErrNotExist) || !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), "absent.yaml") {
		t.Errorf("missing file: %v; want ErrNotExist and ErrInvalid, naming the file", err)
	}

	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, []byte("# "+strings.Repeat("x", 1<<20)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := config.Load(big, nil); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized file: %v; want a size error", err)
	}

	bad := filepath.Join(dir, "kms.yaml")
	if err := os.WriteFile(bad, []byte("data_dir: /x\nsmtp:\n  listen: localhost\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = config.Load(bad, nil)
	want := `config: smtp.listen: "localhost" is not host:port`
	if err == nil || !strings.HasPrefix(err.Error(), want) || !strings.HasSuffix(err.Error(), "("+bad+" line 3)") {
		t.Errorf("error = %v; want %q ... (%s line 3)", err, want, bad)
	}
	var ce *config.Error
	if !errors.As(err, &ce) || ce.Key != "smtp.listen" || ce.Line != 3 || ce.File != bad {
		t.Errorf("errors.As(*config.Error) = %+v; want key smtp.listen, line 3, file %s", ce, bad)
	}
}

func TestEmptyValuesMeanDefaults(t *testing.T) {
	for _, src := range []string{
		"",
		"# only a comment\n",
		"---\n",
		"~\n",
		"data_dir:\nsmtp:\nrelay: ~\npolicy:\n",
		"data_dir: \"\"\naddress: ''\nsmtp: {listen: \"\"}\nstore: {driver: \"\", dsn: \"\"}\n",
	} {
		c := mustLoad(t, src, nil)
		if got, want := marshal(t, c), marshal(t, mustLoad(t, "", nil)); got != want {
			t.Errorf("%q does not give the defaults:\n%s", src, got)
		}
	}
}

func TestDerivedDefaultsFollowDataDirAndAddress(t *testing.T) {
	c := mustLoad(t, "data_dir: /srv/kms\naddress: certs@mail.example.net\n", nil)
	for _, ch := range []struct{ key, got, want string }{
		{"maildir", c.Maildir, "/srv/kms/mail"},
		{"store.dsn", c.Store.DSN, "/srv/kms/kms.db"},
		{"ca.key_file", c.CA.KeyFile, "/srv/kms/ca/issuer.key"},
		{"smtp.hostname", c.SMTP.Hostname, "mail.example.net"},
	} {
		if ch.got != ch.want {
			t.Errorf("%s = %q, want %q", ch.key, ch.got, ch.want)
		}
	}

	// A value the file sets is kept, whatever data_dir says.
	c = mustLoad(t, "data_dir: /srv/kms\nmaildir: /var/mail/kms\nca: {key_file: /etc/kms/ca.key}\nsmtp: {hostname: mx.example.com}\n", nil)
	if c.Maildir != "/var/mail/kms" || c.CA.KeyFile != "/etc/kms/ca.key" || c.Store.DSN != "/srv/kms/kms.db" || c.SMTP.Hostname != "mx.example.com" {
		t.Errorf("explicit values overridden: maildir %q, key_file %q, dsn %q, hostname %q", c.Maildir, c.CA.KeyFile, c.Store.DSN, c.SMTP.Hostname)
	}

	// PostgreSQL gets no file-path DSN from data_dir.
	c = mustLoad(t, "store: {driver: postgres, dsn: 'host=db user=kms'}\n", nil)
	if c.Store.DSN != "host=db user=kms" {
		t.Errorf("postgres dsn = %q", c.Store.DSN)
	}
}

func TestBaseURL(t *testing.T) {
	for _, tc := range []struct{ src, want string }{
		{"", "http://127.0.0.1:8025"},
		{"http: {listen: '[::1]:9000'}", "http://[::1]:9000"},
		{"http: {public_url: 'https://pki.example.com/kms/'}", "https://pki.example.com/kms"},
		{"http: {listen: ':8025', public_url: 'http://kms.example.com:8080'}", "http://kms.example.com:8080"},
	} {
		if got := mustLoad(t, tc.src, nil).BaseURL(); got != tc.want {
			t.Errorf("%s: BaseURL() = %q, want %q", tc.src, got, tc.want)
		}
	}
}

func TestLogLevel(t *testing.T) {
	for level, want := range map[string]string{"debug": "DEBUG", "info": "INFO", "warn": "WARN", "error": "ERROR"} {
		if got := mustLoad(t, "log: {level: "+level+"}", nil).LogLevel().String(); got != want {
			t.Errorf("log.level %s: LogLevel() = %s, want %s", level, got, want)
		}
	}
}

func TestAliasesCannotMultiplyWork(t *testing.T) {
	var b strings.Builder
	b.WriteString("keys: &k [")
	for i := range 2000 {
		if i > 0 {
			b.WriteString(", ")
		}
		b.WriteString("p256")
	}
	b.WriteString("]\ndomains: [example.com]\npolicy:\n  domains:\n")
	for i := range 600 {
		fmt.Fprintf(&b, "    d%d.example: {keys: *k}\n", i)
	}
	_, err := config.LoadBytes([]byte(b.String()), nil)
	if err == nil || !strings.Contains(err.Error(), "expands through aliases to, more than") {
		t.Errorf("1.2 million values through aliases: %v; want the alias bound", err)
	}
}

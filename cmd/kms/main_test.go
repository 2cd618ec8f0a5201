package main

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsmail/kms/admin"
)

func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		says string
	}{
		{nil, "usage: kms COMMAND"},
		{[]string{"frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"user"}, "missing subcommand"},
		{[]string{"cert", "delete"}, `unknown subcommand "delete"`},
		{[]string{"user", "enroll"}, "missing EMAIL"},
		{[]string{"user", "enroll", "a@example.com", "b@example.com"}, `unexpected argument "b@example.com"`},
		{[]string{"user", "enroll", "a@example.com", "--name"}, "flag needs an argument"},
		{[]string{"user", "list", "--colour"}, "flag provided but not defined: -colour"},
		{[]string{"user", "show"}, "missing EMAIL"},
		{[]string{"user", "disable"}, "missing EMAIL"},
		{[]string{"cert", "show"}, "missing SERIAL"},
		{[]string{"cert", "revoke", "--reason", "keyCompromise"}, "missing SERIAL"},
		{[]string{"cert", "import"}, "missing FILE"},
		{[]string{"cert", "list", "extra"}, `unexpected argument "extra"`},
		{[]string{"audit", "--limit", "0"}, "--limit 0"},
		{[]string{"audit", "--limit", "many"}, "invalid value"},
		{[]string{"version", "now"}, "unexpected argument"},
		{[]string{"--config"}, "--config needs a file name"},
	} {
		r := runKMS(t, tc.args...)
		if r.code != exitUsage || !strings.Contains(r.stderr, tc.says) {
			t.Errorf("kms %v: status %d, stderr %q; want 2 and %q", tc.args, r.code, r.stderr, tc.says)
		}
		if r.stdout != "" {
			t.Errorf("kms %v printed to stdout: %q", tc.args, r.stdout)
		}
	}
	// A usage error shows how the command is used.
	if r := runKMS(t, "user", "enroll"); !strings.Contains(r.stderr, "usage: kms user enroll EMAIL [--name N]") {
		t.Errorf("usage text: %q", r.stderr)
	}
	// Asking for help is not an error.
	if r := runKMS(t, "help"); r.code != 0 || !strings.Contains(r.stdout, "kms cert import FILE...") {
		t.Errorf("kms help: %d %q", r.code, r.stdout)
	}
	if r := runKMS(t, "cert", "list", "-h"); r.code != 0 || !strings.Contains(r.stderr, "-expiring DURATION") {
		t.Errorf("kms cert list -h: %d %q", r.code, r.stderr)
	}
}

func TestVersion(t *testing.T) {
	r := runKMS(t, "version").want(t, 0)
	if !strings.HasPrefix(r.stdout, "kms ") || !strings.Contains(r.stdout, "go1.") {
		t.Errorf("version = %q", r.stdout)
	}
}

func TestReorder(t *testing.T) {
	f := newFlags("user enroll", nil).withJSON()
	f.String("name", "", "")
	ordered, err := f.reorder([]string{"a@b", "--name", "X Y", "--json", "--config=c", "--", "-odd"})
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(ordered, "|")
	if want := "--name|X Y|--json|--config=c|--|a@b|-odd"; got != want {
		t.Errorf("reorder = %s, want %s", got, want)
	}
	if _, err := f.reorder([]string{"a@b", "--name"}); err == nil {
		t.Error("a value flag without its value was accepted")
	}
}

func TestAdminURL(t *testing.T) {
	for listen, want := range map[string]string{
		"127.0.0.1:8025": "http://127.0.0.1:8025",
		"0.0.0.0:8025":   "http://127.0.0.1:8025",
		":8025":          "http://127.0.0.1:8025",
		"[::]:8025":      "http://[::1]:8025",
		"[::1]:9":        "http://[::1]:9",
		"kms.lan:8025":   "http://kms.lan:8025",
	} {
		if got := adminURL(listen); got != want {
			t.Errorf("adminURL(%q) = %q, want %q", listen, got, want)
		}
	}
}

func TestDaemonNotRunning(t *testing.T) {
	dir := t.TempDir()
	if _, err := admin.EnsureToken(filepath.Join(dir, admin.TokenFile)); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cfg := writeConfig(t, dir, addr)
	r := runKMS(t, "user", "list", "--config", cfg).want(t, exitFail)
	if !strings.Contains(r.stderr, "is `kms serve` running? tried http://"+addr) {
		t.Errorf("stderr = %q", r.stderr)
	}
}

func TestConfigProblems(t *testing.T) {
	// No token: the daemon never ran with this data_dir.
	cfg := writeConfig(t, t.TempDir(), "127.0.0.1:1")
	if r := runKMS(t, "cert", "list", "--config", cfg).want(t, exitFail); !strings.Contains(r.stderr, "no admin token") {
		t.Errorf("stderr = %q", r.stderr)
	}
	// A bad configuration names the key.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("htttp:\n  listen: x\n"), 0o600)
	if r := runKMS(t, "user", "list", "--config", bad).want(t, exitFail); !strings.Contains(r.stderr, "htttp") {
		t.Errorf("stderr = %q", r.stderr)
	}
	if r := runKMS(t, "user", "list", "--config", filepath.Join(t.TempDir(), "missing.yaml")).want(t, exitFail); !strings.Contains(r.stderr, "missing.yaml") {
		t.Errorf("stderr = %q", r.stderr)
	}
}

func TestConfigSources(t *testing.T) {
	c := newCLI(t)
	// --config before the command, and KMS_CONFIG, find the daemon too.
	runKMS(t, "--config", c.config, "user", "list").want(t, 0)
	runKMS(t, "--config="+c.config, "user", "list", "--json").want(t, 0)
	t.Setenv(envConfig, c.config)
	if r := runKMS(t, "user", "list", "--json").want(t, 0); strings.TrimSpace(r.stdout) != "[]" {
		t.Errorf("user list via KMS_CONFIG = %q", r.stdout)
	}
}

func TestWrongToken(t *testing.T) {
	c := newCLI(t)
	// Another data directory, another token: the daemon refuses it.
	other := t.TempDir()
	if _, err := admin.EnsureToken(filepath.Join(other, admin.TokenFile)); err != nil {
		t.Fatal(err)
	}
	r := runKMS(t, "user", "list", "--config", writeConfig(t, other, c.Addr)).want(t, exitFail)
	if !strings.Contains(r.stderr, "token was read from "+filepath.Join(other, admin.TokenFile)) {
		t.Errorf("stderr = %q", r.stderr)
	}
}

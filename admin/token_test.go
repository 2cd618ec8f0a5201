package admin_test

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsmail/kms/admin"
)

func TestEnsureToken(t *testing.T) {
	path := filepath.Join(t.TempDir(), "data", admin.TokenFile)
	tok, err := admin.EnsureToken(path)
	if err != nil {
		t.Fatal(err)
	}
	if b, err := hex.DecodeString(tok); err != nil || len(b) != 32 {
		t.Errorf("token %q is not 256 bits in hex", tok)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("token file mode = %04o, want 0600", fi.Mode().Perm())
	}
	// Later starts keep the token, and the CLI reads the same one.
	again, err := admin.EnsureToken(path)
	if err != nil || again != tok {
		t.Errorf("second EnsureToken = %q, %v; want the first token", again, err)
	}
	read, err := admin.ReadToken(path)
	if err != nil || read != tok {
		t.Errorf("ReadToken = %q, %v; want the token", read, err)
	}
	other, err := admin.EnsureToken(filepath.Join(t.TempDir(), admin.TokenFile))
	if err != nil || other == tok {
		t.Errorf("a second data directory got token %q (%v), want a different one", other, err)
	}
}

func TestTokenRefused(t *testing.T) {
	dir := t.TempDir()
	open := filepath.Join(dir, "open.token")
	if err := os.WriteFile(open, []byte(strings.Repeat("ab", 32)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o644); err != nil { // whatever the umask
		t.Fatal(err)
	}
	if _, err := admin.EnsureToken(open); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("EnsureToken on a world-readable file: %v, want advice to chmod 600", err)
	}

	damaged := filepath.Join(dir, "damaged.token")
	if err := os.WriteFile(damaged, []byte("short\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, f := range map[string]func(string) (string, error){"EnsureToken": admin.EnsureToken, "ReadToken": admin.ReadToken} {
		if _, err := f(damaged); err == nil || !strings.Contains(err.Error(), "damaged") {
			t.Errorf("%s on a damaged file: %v", name, err)
		}
	}

	if _, err := admin.ReadToken(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "kms serve") {
		t.Errorf("ReadToken of a missing file: %v, want a hint about kms serve", err)
	}

	if os.Geteuid() == 0 {
		t.Log("running as root, which reads any file: the permission case is not testable")
		return
	}
	private := filepath.Join(dir, "private.token")
	if err := os.WriteFile(private, []byte(strings.Repeat("ab", 32)), 0o000); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.ReadToken(private); err == nil || !strings.Contains(err.Error(), "readable by its owner only") {
		t.Errorf("ReadToken of an unreadable file: %v", err)
	}
}

func TestNewServerOptions(t *testing.T) {
	if _, err := admin.NewServer(admin.Options{}); err == nil {
		t.Error("NewServer without a service succeeded")
	}
}

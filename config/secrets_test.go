package config_test

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kmsmail/kms/config"
)

// writeSecret writes content to a 0600 file in dir and returns its path.
func writeSecret(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestSecretsFromFiles(t *testing.T) {
	dir := t.TempDir()
	relay := writeSecret(t, dir, "relay.pw", "relay secret\n")
	imap := writeSecret(t, dir, "imap.pw", "imap-secret\r\n")
	ca := writeSecret(t, dir, "ca.pass", "ca secret with trailing space \n\n")
	db := writeSecret(t, dir, "db.pw", "db-secret")
	src := `
relay: {addr: 'smtp.example.com:587', username: kms, password_file: ` + relay + `}
imap: {addr: 'imap.example.com:993', username: kms, password_file: ` + imap + `}
ca: {passphrase_file: ` + ca + `}
store: {driver: postgres, dsn: 'postgres://kms@db/kms', password_file: ` + db + `}
`
	c := mustLoad(t, src, noEnv)
	for _, tc := range []struct {
		name string
		get  func() ([]byte, error)
		want string
	}{
		{"relay", c.RelayPassword, "relay secret"},
		{"imap", c.IMAPPassword, "imap-secret"},
		{"ca", c.CAPassphrase, "ca secret with trailing space "},
		{"db", c.DBPassword, "db-secret"},
	} {
		got, err := tc.get()
		if err != nil || string(got) != tc.want {
			t.Errorf("%s secret = %q, %v; want %q (only the line ending trimmed)", tc.name, got, err, tc.want)
		}
	}
	if strings.Contains(marshal(t, c), "secret") {
		t.Errorf("a secret leaked into the configuration:\n%s", marshal(t, c))
	}

	// The file is read when the secret is needed, so a rotated password
	// takes effect and a vanished file is reported then, with key and path.
	writeSecret(t, dir, "relay.pw", "rotated\n")
	if got, err := c.RelayPassword(); err != nil || string(got) != "rotated" {
		t.Errorf("after rotation RelayPassword() = %q, %v; want \"rotated\"", got, err)
	}
	if err := os.Remove(imap); err != nil {
		t.Fatal(err)
	}
	_, err := c.IMAPPassword()
	if !errors.Is(err, fs.ErrNotExist) || !errors.Is(err, config.ErrInvalid) ||
		!strings.HasPrefix(err.Error(), "config: imap.password_file: ") || !strings.Contains(err.Error(), imap) {
		t.Errorf("IMAPPassword() with the file gone: %v; want ErrNotExist naming imap.password_file and %s", err, imap)
	}
	writeSecret(t, dir, "ca.pass", "\n")
	if _, err := c.CAPassphrase(); err == nil || !strings.Contains(err.Error(), "ca.passphrase_file") || !strings.Contains(err.Error(), "is empty") {
		t.Errorf("CAPassphrase() from an empty file: %v; want an error naming ca.passphrase_file", err)
	}
}

func TestSecretsFromEnvironment(t *testing.T) {
	env := envOf(map[string]string{
		config.EnvRelayPassword: "r",
		config.EnvIMAPPassword:  "i",
		config.EnvCAPassphrase:  "c",
		config.EnvDBPassword:    "d",
	})
	src := "relay: {addr: 'smtp.example.com:587', username: kms}\nimap: {addr: 'imap.example.com:143', username: kms}\nstore: {driver: postgres, dsn: 'host=db'}\n"
	c := mustLoad(t, src, env)
	for name, get := range map[string]func() ([]byte, error){"r": c.RelayPassword, "i": c.IMAPPassword, "c": c.CAPassphrase, "d": c.DBPassword} {
		if got, err := get(); err != nil || string(got) != name {
			t.Errorf("secret %s = %q, %v", name, got, err)
		}
	}

	// With sqlite there is no database password, whatever the environment.
	c = mustLoad(t, "", env)
	if got, err := c.DBPassword(); got != nil || err != nil {
		t.Errorf("DBPassword() with sqlite = %q, %v; want nil", got, err)
	}
	// Load with a real environment: os.Getenv is what cmd/kms passes.
	t.Setenv(config.EnvCAPassphrase, "from-os")
	c, err := config.Load("", os.Getenv)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.CAPassphrase(); err != nil || string(got) != "from-os" {
		t.Errorf("CAPassphrase() from os.Getenv = %q, %v", got, err)
	}
}

func TestTLSFilesAccepted(t *testing.T) {
	dir := t.TempDir()
	cert := writeSecret(t, dir, "kms.pem", "-----BEGIN CERTIFICATE-----\n")
	key := writeSecret(t, dir, "kms.key", "-----BEGIN PRIVATE KEY-----\n")
	c := mustLoad(t, "smtp: {tls: {cert_file: "+cert+", key_file: "+key+"}}", nil)
	if c.SMTP.TLS.CertFile != cert || c.SMTP.TLS.KeyFile != key {
		t.Errorf("tls = %+v", c.SMTP.TLS)
	}
}

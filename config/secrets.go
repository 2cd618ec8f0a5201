package config

import (
	"bytes"
	"fmt"
	"os"
)

// Secrets never sit in the YAML or in Config: the file names a file that
// holds the secret, or the secret is in an environment variable. They are
// read when asked for, so that a rotated password file takes effect at the
// next connection and a secret spends as little time in memory as possible.

// RelayPassword returns the relay password from relay.password_file or
// KMS_RELAY_PASSWORD, or nil when neither is set.
func (c *Config) RelayPassword() ([]byte, error) {
	return c.secret("relay.password_file", c.Relay.PasswordFile, EnvRelayPassword)
}

// IMAPPassword returns the IMAP password from imap.password_file or
// KMS_IMAP_PASSWORD, or nil when neither is set.
func (c *Config) IMAPPassword() ([]byte, error) {
	return c.secret("imap.password_file", c.IMAP.PasswordFile, EnvIMAPPassword)
}

// CAPassphrase returns the passphrase of the CA key from ca.passphrase_file
// or KMS_CA_PASSPHRASE, or nil when neither is set (an unencrypted key).
func (c *Config) CAPassphrase() ([]byte, error) {
	return c.secret("ca.passphrase_file", c.CA.PassphraseFile, EnvCAPassphrase)
}

// DBPassword returns the PostgreSQL password from store.password_file or
// KMS_DB_PASSWORD, or nil when neither is set (or the driver is sqlite). The
// store sets it on the parsed DSN's connection config, since store.dsn must
// not hold it.
func (c *Config) DBPassword() ([]byte, error) {
	if c.Store.Driver != "postgres" {
		return nil, nil
	}
	return c.secret("store.password_file", c.Store.PasswordFile, EnvDBPassword)
}

// secret reads the file at path, trimming the line ending an editor or
// "echo" leaves, or else the environment variable envName.
func (c *Config) secret(key, path, envName string) ([]byte, error) {
	if path == "" {
		if c.env == nil {
			return nil, nil
		}
		if v := c.env(envName); v != "" {
			return []byte(v), nil
		}
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, &Error{Key: key, Msg: fmt.Sprintf("cannot read the secret in %q: %v", path, pathErr(err)), Err: err}
	}
	b = bytes.TrimRight(b, "\r\n")
	if len(b) == 0 {
		return nil, &Error{Key: key, Msg: fmt.Sprintf("%q is empty", path)}
	}
	return b, nil
}

// checkSecret checks at start-up that a secret has exactly one source and
// that its file exists; required says that the secret must be given.
func (c *Config) checkSecret(p *problems, key, path, envName string, required bool) {
	fromEnv := c.env(envName) != ""
	switch {
	case path != "" && fromEnv:
		p.add(key, 0, nil, "is set and so is %s; give the secret one way only", envName)
	case path == "" && !fromEnv && required:
		p.add(key, 0, nil, "is empty and %s is not set; the secret is required", envName)
	}
	checkFile(p, key, path)
}

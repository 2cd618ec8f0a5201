package admin

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// TokenFile is the name of the token file in the data directory.
const TokenFile = "admin.token"

// tokenBytes is the token's entropy: 256 bits.
const tokenBytes = 32

// EnsureToken returns the admin API token kept in path, creating the file
// with a new random token, readable by its owner only, when it does not
// exist. The daemon calls it at start, so the token survives restarts and
// the CLI, run as the same user, can read it. A token file that others can
// read is refused: anyone who reads it can revoke every certificate.
func EnsureToken(path string) (string, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", fmt.Errorf("admin token: create directory for %s: %w", path, err)
	}
	buf := make([]byte, tokenBytes)
	if _, err := rand.Read(buf); err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	token := hex.EncodeToString(buf)
	// O_EXCL: two daemons starting on one data directory must not each
	// write a different token.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	switch {
	case errors.Is(err, fs.ErrExist):
		return loadToken(path, true)
	case err != nil:
		return "", fmt.Errorf("admin token: create %s: %w", path, err)
	}
	if _, err := f.WriteString(token + "\n"); err != nil {
		f.Close()
		os.Remove(path)
		return "", fmt.Errorf("admin token: write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return "", fmt.Errorf("admin token: write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return "", fmt.Errorf("admin token: write %s: %w", path, err)
	}
	return token, nil
}

// ReadToken reads the admin API token the daemon created in path, for the
// command line.
func ReadToken(path string) (string, error) {
	return loadToken(path, false)
}

// loadToken reads and checks a token file. strictMode refuses a file that
// group or others may read; the daemon checks that, the CLI need not.
func loadToken(path string, strictMode bool) (string, error) {
	data, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrPermission):
		return "", fmt.Errorf("cannot read the admin token %s: it is readable by its owner only; run this command as the user the daemon runs as (the owner of the data directory): %w", path, err)
	case errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("no admin token at %s: `kms serve` creates it on its first start; is the daemon running with this configuration (data_dir)? %w", path, err)
	case err != nil:
		return "", fmt.Errorf("cannot read the admin token %s: %w", path, err)
	}
	if strictMode {
		fi, err := os.Stat(path)
		if err != nil {
			return "", fmt.Errorf("admin token %s: %w", path, err)
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return "", fmt.Errorf("admin token %s has mode %04o, readable by others: run `chmod 600 %s` (or delete it to make a new token)", path, fi.Mode().Perm(), path)
		}
	}
	token := strings.TrimSpace(string(data))
	if len(token) < minTokenLen || strings.ContainsAny(token, " \t\r\n") {
		return "", fmt.Errorf("admin token %s is damaged (expected %d hexadecimal digits): delete it and restart `kms serve` to make a new one", path, 2*tokenBytes)
	}
	return token, nil
}

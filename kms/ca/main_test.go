package ca

import (
	"crypto"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/kmsmail/kms/internal/syncbuf"

	"github.com/kmsmail/kms/policy"
)

// Generating CA keys, RSA-4096 above all, takes seconds, so the tests share
// authorities created once per configuration in a directory that TestMain
// removes. Tests that change files on disk make their own with openCA.

var (
	fixtureDir string
	// testNow is the time the shared authorities were created at. It is the
	// real time because `openssl verify` checks validity against the clock.
	testNow = time.Now().UTC().Truncate(time.Second)
)

const (
	localBase  = "http://127.0.0.1:8025"
	publicBase = "https://pki.example.com"
	kmsAddress = "kms@example.com"
)

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "kms-ca-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fixtureDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type fixtureKey struct {
	root, issuer policy.KeyType
	base         string
}

var (
	fixtureMu sync.Mutex
	fixtures  = map[fixtureKey]*Authority{}
)

// sharedCA returns an authority with the given key types and base URL,
// creating it on first use. Callers must not change its files.
func sharedCA(tb testing.TB, root, issuer policy.KeyType, base string) *Authority {
	tb.Helper()
	fixtureMu.Lock()
	defer fixtureMu.Unlock()
	k := fixtureKey{root, issuer, base}
	if a := fixtures[k]; a != nil {
		return a
	}
	dir := filepath.Join(fixtureDir, fmt.Sprintf("%s-%s-%d", root, issuer, len(fixtures)))
	a, err := Open(Config{
		Dir: dir, KeyType: issuer, RootKeyType: root, BaseURL: base, AIA: base != localBase, KMSAddress: kmsAddress,
	}, testNow, quietLog())
	if err != nil {
		tb.Fatalf("open shared CA: %v", err)
	}
	fixtures[k] = a
	return a
}

// fastCA is the authority most tests use: a P-256 root (the root's key type
// matters to no test that uses it) and the default RSA-2048 issuing CA.
func fastCA(tb testing.TB) *Authority {
	return sharedCA(tb, policy.P256, policy.RSA2048, localBase)
}

// openCA opens an authority in dir with a P-256 root and issuing CA, the
// fastest to create, for tests that modify the files.
func openCA(t *testing.T, cfg Config, now time.Time, log *slog.Logger) (*Authority, error) {
	t.Helper()
	if cfg.RootKeyType == "" {
		cfg.RootKeyType = policy.P256
	}
	if cfg.KeyType == "" {
		cfg.KeyType = policy.P256
	}
	if cfg.BaseURL == "" {
		cfg.BaseURL = localBase
	}
	if cfg.KMSAddress == "" {
		cfg.KMSAddress = kmsAddress
	}
	if log == nil {
		log = quietLog()
	}
	return Open(cfg, now, log)
}

var (
	keysOnce sync.Once
	keys     map[policy.KeyType]crypto.Signer
)

// subscriberKeys returns one key of every type policy accepts.
func subscriberKeys(tb testing.TB) map[policy.KeyType]crypto.Signer {
	tb.Helper()
	keysOnce.Do(func() {
		keys = map[policy.KeyType]crypto.Signer{}
		for _, kt := range policy.AllKeyTypes {
			k, err := NewKey(kt)
			if err != nil {
				panic(err)
			}
			keys[kt] = k
		}
	})
	return keys
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// bufLog returns a logger that writes to a buffer the test can read.
func bufLog() (*slog.Logger, *syncBuffer) {
	b := &syncBuffer{}
	return slog.New(slog.NewTextHandler(b, nil)), b
}

type syncBuffer = syncbuf.Buffer

// issue is Issue for tests: a one-year certificate from testNow.
func issue(tb testing.TB, a *Authority, email string, pub crypto.PublicKey) []byte {
	tb.Helper()
	c, err := a.Issue(Request{Email: email, PublicKey: pub, NotBefore: testNow, NotAfter: testNow.AddDate(1, 0, 0)})
	if err != nil {
		tb.Fatalf("Issue(%s): %v", email, err)
	}
	return c.Raw
}

package kms

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmsmail/kms/clock"
	"github.com/kmsmail/kms/kms/ca"
	"github.com/kmsmail/kms/policy"
)

// t0 is the start of every test's fake clock.
var t0 = time.Date(2026, time.January, 31, 9, 0, 0, 0, time.UTC)

// testCA is one CA shared by the package's tests: making a CA is slow and
// every test can use the same one.
var (
	testCAOnce sync.Once
	testCA     *ca.Authority
	testCAErr  error
	testCADir  string
)

func sharedCA(t testing.TB, keyType policy.KeyType) *ca.Authority {
	t.Helper()
	testCAOnce.Do(func() {
		testCADir, testCAErr = os.MkdirTemp("", "kms-test-ca-")
		if testCAErr != nil {
			return
		}
		testCA, testCAErr = ca.Open(ca.Config{
			Dir: testCADir, KeyType: keyType, RootKeyType: policy.P256,
			BaseURL: "http://127.0.0.1:8025", KMSAddress: "kms@example.com",
		}, t0.Add(-time.Hour), slog.New(slog.DiscardHandler))
	})
	if testCAErr != nil {
		t.Fatalf("test CA: %v", testCAErr)
	}
	return testCA
}

func TestMain(m *testing.M) {
	code := m.Run()
	if testCADir != "" {
		os.RemoveAll(testCADir)
	}
	os.Exit(code)
}

// storeFactory opens a fresh, empty store for one test.
type storeFactory struct {
	name string
	open func(t testing.TB) *Store
}

// stores lists the databases the tests run against: always a SQLite file in
// the test's temporary directory, and PostgreSQL when KMS_TEST_POSTGRES
// names a server (e.g. postgres://postgres@127.0.0.1:5432/postgres).
func stores() []storeFactory {
	out := []storeFactory{{"sqlite", openSQLiteStore}}
	if dsn := os.Getenv("KMS_TEST_POSTGRES"); dsn != "" {
		out = append(out, storeFactory{"postgres", func(t testing.TB) *Store { return openPostgresStore(t, dsn) }})
	}
	return out
}

func openSQLiteStore(t testing.TB) *Store {
	t.Helper()
	s, err := OpenStore(context.Background(), "sqlite", filepath.Join(t.TempDir(), "kms.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// openPostgresStore creates a database of its own for the test, so tests
// never share mutable state, and drops it afterwards.
func openPostgresStore(t testing.TB, adminDSN string) *Store {
	t.Helper()
	s, err := OpenStore(context.Background(), "postgres", newPostgresDatabase(t, adminDSN))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// newPostgresDatabase creates an empty database for the test, dropped when
// the test ends, and returns its DSN.
func newPostgresDatabase(t testing.TB, adminDSN string) string {
	t.Helper()
	ctx := context.Background()
	adminDB, err := sql.Open("pgx", adminDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer adminDB.Close()
	var b [6]byte
	rand.Read(b[:])
	name := fmt.Sprintf("kms_test_%x", b)
	if _, err := adminDB.ExecContext(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create test database: %v", err)
	}
	t.Cleanup(func() {
		db, err := sql.Open("pgx", adminDSN)
		if err == nil {
			db.ExecContext(context.Background(), "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
			db.Close()
		}
	})
	return replaceDatabase(adminDSN, name)
}

// replaceDatabase swaps the database name in a postgres:// URL.
func replaceDatabase(dsn, name string) string {
	q := ""
	if i := strings.IndexByte(dsn, '?'); i >= 0 {
		dsn, q = dsn[:i], dsn[i:]
	}
	if i := strings.LastIndexByte(dsn, '/'); i > len("postgres://") {
		dsn = dsn[:i]
	}
	return dsn + "/" + name + q
}

// testPolicy is the default policy: 18 months, reminders from 12 months.
func testPolicies() policy.Set { return policy.Set{Default: policy.Default()} }

// env is one test's world: a service on a fresh store with a fake clock.
type env struct {
	t     testing.TB
	ctx   context.Context
	clock *clock.Fake
	store *Store
	svc   *Service
	ca    *ca.Authority
}

func newEnv(t testing.TB, open func(testing.TB) *Store) *env {
	t.Helper()
	clk := clock.NewFake(t0)
	authority := sharedCA(t, policy.P256)
	st := open(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	svc := New(Config{
		Store: st, Issuer: authority, CRLSigner: authority, Policies: testPolicies(),
		Domains: []string{"example.com"}, KMSAddress: "kms@example.com", AdminAddress: "postmaster@example.com",
		Clock: clk, Log: log,
	})
	return &env{t: t, ctx: context.Background(), clock: clk, store: st, svc: svc, ca: authority}
}

// newKey makes a user key; P-256 because it is fast and policy accepts it.
func newKey(t testing.TB) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// activeUser enrolls email and redeems the code, returning the certificate.
func (e *env) activeUser(email string) *Certificate {
	e.t.Helper()
	en, err := e.svc.Enroll(e.ctx, email, "", "test")
	if err != nil {
		e.t.Fatalf("enroll %s: %v", email, err)
	}
	c, err := e.svc.EnrollByCode(e.ctx, email, en.Code, newKey(e.t).Public(), Request{Actor: "test", MessageID: "<enroll@test>"})
	if err != nil {
		e.t.Fatalf("enroll by code %s: %v", email, err)
	}
	return c
}

// outbox returns the queued mail as kind→recipients.
func (e *env) outbox() map[OutboxKind][]string {
	e.t.Helper()
	rows, err := e.store.db.QueryContext(e.ctx, `SELECT kind, recipient FROM outbox ORDER BY id`)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	out := map[OutboxKind][]string{}
	for rows.Next() {
		var k, r string
		if err := rows.Scan(&k, &r); err != nil {
			e.t.Fatal(err)
		}
		out[OutboxKind(k)] = append(out[OutboxKind(k)], r)
	}
	return out
}

// count runs a COUNT(*) query.
func (e *env) count(query string, args ...any) int {
	e.t.Helper()
	var n int
	if err := e.store.db.QueryRowContext(e.ctx, query, args...).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// forEachStore runs fn once per database.
func forEachStore(t *testing.T, fn func(t *testing.T, e *env)) {
	for _, f := range stores() {
		t.Run(f.name, func(t *testing.T) { fn(t, newEnv(t, f.open)) })
	}
}

var e0ctx = context.Background()

// caRequest builds an issuance request for the CA directly.
func caRequest(email string, pub crypto.PublicKey, nb, na time.Time) ca.Request {
	return ca.Request{Email: email, PublicKey: pub, NotBefore: nb, NotAfter: na}
}

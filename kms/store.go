package kms

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	_ "modernc.org/sqlite"           // database/sql driver "sqlite", pure Go
)

//go:embed migrations
var migrations embed.FS

// Store is the SQL store of kms. One code path serves SQLite and PostgreSQL;
// what differs between them lives in dialect.
type Store struct {
	db      *sql.DB
	dialect dialect
	stmts   sync.Map // query text → *sql.Stmt, for the hot paths
	// preparing holds the queries being prepared for stmts in the
	// background (see cached.stmt); Close waits for them.
	preparing   sync.Map
	preparingWG sync.WaitGroup
	// group batches this process's write transactions on SQLite (see
	// groupCommit).
	group groupCommit
}

// dialect holds the few things that differ between the two databases. The
// queries themselves are portable: $N placeholders (SQLite accepts them),
// BIGINT millisecond times, RETURNING, partial indexes.
type dialect struct {
	name string
	// lockRow is appended to a SELECT that reads a row the transaction will
	// change. PostgreSQL needs FOR UPDATE; SQLite transactions start with
	// BEGIN IMMEDIATE (the _txlock DSN option) and so already hold the one
	// write lock.
	lockRow string
	// migrationLock serialises migrations between daemons starting at once.
	migrationLock string
	// skipLocked lets daemons sharing a PostgreSQL database claim different
	// queue rows instead of queueing behind each other's locks.
	skipLocked string
}

// param returns the placeholder for the n-th (1-based) argument of a
// statement built at run time. SQLite reads $N as a named parameter and
// resolves each name by a linear search, which makes a statement with
// thousands of them quadratic; its positional ? costs nothing.
func (d dialect) param(n int) string {
	if d.name == "sqlite" {
		return "?"
	}
	return "$" + strconv.Itoa(n)
}

var (
	sqliteDialect   = dialect{name: "sqlite"}
	postgresDialect = dialect{name: "postgres", lockRow: " FOR UPDATE", migrationLock: "SELECT pg_advisory_xact_lock(7215001)",
		skipLocked: " FOR UPDATE SKIP LOCKED"}
)

// OpenStore opens the database named by driver ("sqlite" or "postgres") and
// dsn, and applies pending migrations. For SQLite the dsn is a file path; the
// directory is created if needed.
func OpenStore(ctx context.Context, driver, dsn string) (*Store, error) {
	return OpenStoreWithPassword(ctx, driver, dsn, nil)
}

// OpenStoreWithPassword is OpenStore with a PostgreSQL password kept out of
// the DSN (it comes from store.password_file or KMS_DB_PASSWORD).
func OpenStoreWithPassword(ctx context.Context, driver, dsn string, password []byte) (*Store, error) {
	return openStore(ctx, driver, dsn, password, 0)
}

// openStore opens the store and applies the migrations up to version upTo
// (0: all of them; the tests of a migration stop before it).
func openStore(ctx context.Context, driver, dsn string, password []byte, upTo int) (*Store, error) {
	var (
		db  *sql.DB
		d   dialect
		err error
	)
	switch driver {
	case "sqlite", "":
		d = sqliteDialect
		db, err = openSQLite(dsn)
	case "postgres":
		d = postgresDialect
		var pc *pgx.ConnConfig
		pc, err = pgx.ParseConfig(dsn)
		if err == nil {
			if password != nil {
				pc.Password = string(password)
			}
			db = stdlib.OpenDB(*pc)
			db.SetMaxOpenConns(maxConns)
			db.SetMaxIdleConns(maxConns)
		}
	default:
		return nil, fmt.Errorf("store: unknown driver %q (use sqlite or postgres)", driver)
	}
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", driver, err)
	}
	s := &Store{db: db, dialect: d}
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: connect to %s: %w", driver, err)
	}
	if err := s.migrate(ctx, upTo); err != nil {
		db.Close()
		return nil, err
	}
	return s, nil
}

// maxConns bounds the store's connections, open and idle alike.
const maxConns = 8

// openSQLite opens a SQLite file with the settings kms relies on: WAL so that
// readers do not block the writer, synchronous=FULL so that a commit is on
// disk before the SMTP 250 or the admin's answer, foreign keys on, a busy
// timeout, and IMMEDIATE transactions so that a writer takes the lock at
// BEGIN instead of failing at its first write.
func openSQLite(path string) (*sql.DB, error) {
	if path == "" {
		return nil, errors.New("empty path")
	}
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
	}
	q := url.Values{}
	for _, p := range []string{"journal_mode(WAL)", "synchronous(FULL)", "foreign_keys(1)", "busy_timeout(10000)", "cache_size(-32768)"} {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	db, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
	if err != nil {
		return nil, err
	}
	// One writer at a time is SQLite's model; more connections only help readers.
	db.SetMaxOpenConns(maxConns)
	// Idle connections are kept: database/sql's default of two idle ones
	// made the workers close and reopen connections all the time under
	// load, each reopening running the pragmas, preparing every statement
	// again and starting with a cold page cache. In a kms-load profile SQL
	// parsing and pragmas were 7.5% of the daemon's CPU before this (and
	// the signer lookups being prepared), 0.6% after.
	db.SetMaxIdleConns(maxConns)
	return db, nil
}

// Close closes the prepared statements and the database.
func (s *Store) Close() error {
	s.preparingWG.Wait()
	s.stmts.Range(func(_, st any) bool {
		st.(*sql.Stmt).Close()
		return true
	})
	return s.db.Close()
}

// Driver names the database in use, for logs and metrics.
func (s *Store) Driver() string { return s.dialect.name }

// migrate applies, in order and all in one transaction, the embedded
// migrations the database has not seen, up to version upTo (0: all).
func (s *Store) migrate(ctx context.Context, upTo int) error {
	dir := "migrations/" + s.dialect.name
	entries, err := fs.ReadDir(migrations, dir)
	if err != nil {
		return fmt.Errorf("store: migrations: %w", err)
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].Name() < entries[j].Name() })
	return s.tx(ctx, func(tx *sql.Tx) error {
		if s.dialect.migrationLock != "" {
			if _, err := tx.ExecContext(ctx, s.dialect.migrationLock); err != nil {
				return err
			}
		}
		if _, err := tx.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)`); err != nil {
			return fmt.Errorf("store: schema_migrations: %w", err)
		}
		for _, e := range entries {
			version, err := strconv.Atoi(strings.SplitN(e.Name(), "_", 2)[0])
			if err != nil {
				return fmt.Errorf("store: migration file %s: name must start with a number", e.Name())
			}
			if upTo > 0 && version > upTo {
				break
			}
			var n int
			if err := tx.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations WHERE version = $1`, version).Scan(&n); err != nil {
				return err
			}
			if n > 0 {
				continue
			}
			body, err := fs.ReadFile(migrations, dir+"/"+e.Name())
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, string(body)); err != nil {
				return fmt.Errorf("store: migration %s: %w", e.Name(), err)
			}
			if _, err := tx.ExecContext(ctx, `INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)`, version, time.Now().UnixMilli()); err != nil {
				return err
			}
		}
		return nil
	})
}

// SchemaVersion returns the newest migration applied.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v sql.NullInt64
	err := s.db.QueryRowContext(ctx, `SELECT MAX(version) FROM schema_migrations`).Scan(&v)
	return int(v.Int64), err
}

// tx runs fn in one transaction, committing when fn returns nil. On
// PostgreSQL a serialization failure is retried a few times.
func (s *Store) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	if s.dialect.name == "sqlite" {
		return s.group.run(ctx, s, fn)
	}
	for attempt := 0; ; attempt++ {
		tx, err := s.db.BeginTx(ctx, nil)
		if err != nil {
			return fmt.Errorf("store: begin: %w", err)
		}
		if err := fn(tx); err != nil {
			tx.Rollback()
			if attempt < 3 && isRetryable(err) {
				continue
			}
			return err
		}
		if err := tx.Commit(); err != nil {
			if attempt < 3 && isRetryable(err) {
				continue
			}
			return fmt.Errorf("store: commit: %w", err)
		}
		return nil
	}
}

// isRetryable reports PostgreSQL serialization failures and deadlocks.
func isRetryable(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, "SQLSTATE 40001") || strings.Contains(msg, "SQLSTATE 40P01")
}

// isUniqueViolation reports a unique-constraint violation in either database.
func isUniqueViolation(err error) bool {
	if err == nil {
		return false
	}
	msg := err.Error()
	return strings.Contains(msg, "UNIQUE constraint failed") || strings.Contains(msg, "SQLSTATE 23505")
}

// prepared returns query as a statement prepared once per Store (and, by
// database/sql, once per connection). Parsing SQL is a large part of a
// short statement's cost in SQLite, and issuance runs the same few
// statements every time.
func (s *Store) prepared(ctx context.Context, query string) (*sql.Stmt, error) {
	if st, ok := s.stmts.Load(query); ok {
		return st.(*sql.Stmt), nil
	}
	st, err := s.db.PrepareContext(ctx, query)
	if err != nil {
		return nil, err
	}
	if prev, loaded := s.stmts.LoadOrStore(query, st); loaded {
		st.Close()
		return prev.(*sql.Stmt), nil
	}
	return st, nil
}

// cached is a querier that runs every query as a prepared statement,
// inside tx when tx is set.
//
// On SQLite its statements run without the caller's cancellation (see
// uncancelled).
type cached struct {
	s  *Store
	tx *sql.Tx
}

// q returns a caching querier, on tx or (tx nil) on the database.
func (s *Store) q(tx *sql.Tx) cached { return cached{s, tx} }

// uncancelled is ctx for running a statement through cached (preparing one
// on the database, which may wait for a connection, keeps ctx): on SQLite,
// ctx without its cancellation. With a context that can be cancelled, the
// SQLite driver starts a goroutine per statement to interrupt it, and
// database/sql one per result set to close it: under kms-load ~12 a
// renewal, with their wake-ups (all goroutine creations fell from ~16.7 to
// ~4.4 a renewal, 9,600 to 2,700 a second, in execution traces). cached runs the hot paths' short index
// lookups and writes, which SQLite finishes in microseconds (WAL readers
// never wait for a lock, and the group commit's writer holds the only
// write lock), and interrupting a write in the middle of a group commit
// would fail the whole batch and make it run again. A caller whose context
// ends meanwhile sees it at its next step, as if it had ended just after.
// PostgreSQL statements cross the network and keep their cancellation.
func (c cached) uncancelled(ctx context.Context) context.Context {
	if c.s.dialect.name == "sqlite" {
		return context.WithoutCancel(ctx)
	}
	return ctx
}

func (c cached) stmt(ctx context.Context, query string) (*sql.Stmt, error) {
	if c.tx == nil {
		return c.s.prepared(ctx, query)
	}
	// On the transaction's own connection nothing waits for a pool.
	ctx = c.uncancelled(ctx)
	if st, ok := c.s.stmts.Load(query); ok {
		return c.tx.StmtContext(ctx, st.(*sql.Stmt)), nil
	}
	// Preparing on the database would need a second connection while this
	// transaction holds one. With every connection held by a transaction
	// doing the same, the pool deadlocks: on PostgreSQL, eight concurrent
	// enrollments right after a start hung the daemon that way. The
	// statement is prepared on the transaction's own connection this time,
	// and for the cache in the background, once a connection is free.
	c.s.prepareLater(query)
	return c.tx.PrepareContext(ctx, query)
}

// prepareLater prepares query for the statement cache without making the
// caller wait for a connection.
func (s *Store) prepareLater(query string) {
	if _, busy := s.preparing.LoadOrStore(query, true); busy {
		return
	}
	s.preparingWG.Go(func() {
		defer s.preparing.Delete(query)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		// A failure leaves the query out of the cache; the next use in a
		// transaction tries again.
		s.prepared(ctx, query)
	})
}

// ExecContext implements querier.
func (c cached) ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error) {
	st, err := c.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	return st.ExecContext(c.uncancelled(ctx), args...)
}

// QueryContext implements querier.
func (c cached) QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error) {
	st, err := c.stmt(ctx, query)
	if err != nil {
		return nil, err
	}
	return st.QueryContext(c.uncancelled(ctx), args...)
}

// QueryRowContext implements querier. A statement that fails to prepare
// is run unprepared, so that its error reaches the caller through Scan.
func (c cached) QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row {
	st, err := c.stmt(ctx, query)
	if err != nil {
		if c.tx != nil {
			return c.tx.QueryRowContext(ctx, query, args...)
		}
		return c.s.db.QueryRowContext(ctx, query, args...)
	}
	return st.QueryRowContext(c.uncancelled(ctx), args...)
}

// exec runs one write statement as a transaction of its own, through the
// group commit on SQLite: a write outside Store.tx would wait for the write
// lock in SQLite's sleeping busy handler.
func (s *Store) exec(ctx context.Context, query string, args ...any) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		_, err := s.q(tx).ExecContext(ctx, query, args...)
		return err
	})
}

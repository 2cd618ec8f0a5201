package mail

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Maildir delivers into a Maildir (the format of qmail, read as it is by
// mutt, Dovecot and most mail clients): the message is written into tmp/,
// fsynced, renamed into new/, and new/ is fsynced, so a file in new/ is
// always complete and a crash leaves at most a stray file in tmp/.
//
// A file is named "KEY.HOST", KEY being the delivery key. Readers keep that
// name when they move a message to cur/ and only append ":2,FLAGS" (Dovecot
// also ",S=SIZE"), so Deliver can tell that a key was delivered before,
// wherever the reader has moved it, and delivers each key exactly once.
// Files are written with LF line ends, as a local delivery agent does; this
// does not disturb S/MIME signatures, which are computed over the canonical
// CRLF form that clients rebuild before verifying.
type Maildir struct {
	dir  string
	host string
	// mu makes the final check-and-rename atomic between this process's
	// workers; two daemons sharing one Maildir are not supported.
	mu sync.Mutex
	// cur caches the base names in cur/, so that a delivery does not list
	// a directory a mail reader fills with thousands of read messages.
	cur curIndex
}

// curIndex is the set of base names in cur/ as of the directory's mtime.
type curIndex struct {
	mu    sync.Mutex
	mtime time.Time
	bases map[string]bool
}

// NewMaildir opens the Maildir at dir, creating dir and its tmp/, new/ and
// cur/ subdirectories (mode 0700) as needed.
func NewMaildir(dir string) (*Maildir, error) {
	if dir == "" {
		return nil, errors.New("maildir: empty path; set `maildir` in the configuration")
	}
	for _, sub := range []string{"", "tmp", "new", "cur"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("maildir: create %s: %w", filepath.Join(dir, sub), err)
		}
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	// The Maildir convention escapes the two characters that have a meaning
	// in file names.
	host = strings.NewReplacer("/", `\057`, ":", `\072`).Replace(host)
	return &Maildir{dir: dir, host: host}, nil
}

// Dir returns the Maildir's path.
func (m *Maildir) Dir() string { return m.dir }

// Deliver writes msg into new/, with Return-Path (from) and one
// Delivered-To per recipient prepended. If a message with the same key was
// delivered before, in new/ or cur/, it does nothing and returns nil.
func (m *Maildir) Deliver(ctx context.Context, from string, to []string, msg []byte, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	base, err := m.fileName(key)
	if err != nil {
		return err
	}
	if err := checkHeaderValue(from); err != nil {
		return Permanent(fmt.Errorf("maildir: sender: %w", err))
	}
	var hdr bytes.Buffer
	fmt.Fprintf(&hdr, "Return-Path: <%s>\n", from)
	for _, rcpt := range to {
		if err := checkHeaderValue(rcpt); err != nil {
			return Permanent(fmt.Errorf("maildir: recipient: %w", err))
		}
		fmt.Fprintf(&hdr, "Delivered-To: %s\n", rcpt)
	}

	if done, err := m.delivered(base); err != nil || done {
		return err
	}
	tmp, err := m.writeTmp(base, hdr.Bytes(), bytes.ReplaceAll(msg, []byte("\r\n"), []byte("\n")))
	if err != nil {
		return err
	}
	m.mu.Lock()
	done, err := m.delivered(base)
	if err == nil && !done {
		err = os.Rename(tmp, filepath.Join(m.dir, "new", base))
	}
	m.mu.Unlock()
	if err != nil || done {
		os.Remove(tmp)
		if err != nil {
			return fmt.Errorf("maildir: move into new/: %w", err)
		}
		return nil
	}
	// The rename is durable only once the directory entry is on disk.
	if err := syncDir(filepath.Join(m.dir, "new")); err != nil {
		return fmt.Errorf("maildir: %w", err)
	}
	return nil
}

// fileName is the name a message with key gets in new/.
func (m *Maildir) fileName(key string) (string, error) {
	if key == "" || len(key) > 200 || strings.IndexFunc(key, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_')
	}) >= 0 {
		return "", Permanent(fmt.Errorf("maildir: delivery key %q is not 1-200 letters, digits, '-' or '_'", key))
	}
	return key + "." + m.host, nil
}

// delivered reports whether base is in new/, or in cur/ with the suffixes
// readers append. new/ is checked by name; cur/ has to be listed because
// the flags are part of the name there.
func (m *Maildir) delivered(base string) (bool, error) {
	if _, err := os.Lstat(filepath.Join(m.dir, "new", base)); err == nil {
		return true, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("maildir: %w", err)
	}
	return m.inCur(base)
}

// inCur reports whether cur/ holds base, with the flags readers append
// (":2,S") or not. The listing is kept while cur/'s mtime stays the same
// and is older than a second: adding an entry changes the mtime, and the
// second covers file systems whose mtime ticks coarsely.
func (m *Maildir) inCur(base string) (bool, error) {
	dir := filepath.Join(m.dir, "cur")
	fi, err := os.Stat(dir)
	if err != nil {
		return false, fmt.Errorf("maildir: %w", err)
	}
	c := &m.cur
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.bases == nil || !fi.ModTime().Equal(c.mtime) || time.Since(fi.ModTime()) < time.Second {
		names, err := readDirNames(dir)
		if err != nil {
			return false, err
		}
		c.bases = make(map[string]bool, len(names))
		for _, n := range names {
			if i := strings.IndexAny(n, ":,"); i >= 0 {
				n = n[:i]
			}
			c.bases[n] = true
		}
		c.mtime = fi.ModTime()
	}
	return c.bases[base], nil
}

// readDirNames lists a directory's entry names.
func readDirNames(dir string) ([]string, error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("maildir: %w", err)
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("maildir: list %s: %w", dir, err)
	}
	return names, nil
}

// writeTmp writes the message into a new file in tmp/ (mode 0600) and
// fsyncs it, returning its path.
func (m *Maildir) writeTmp(base string, hdr, body []byte) (string, error) {
	f, err := os.CreateTemp(filepath.Join(m.dir, "tmp"), base+".*")
	if err != nil {
		return "", fmt.Errorf("maildir: %w", err)
	}
	_, err = f.Write(hdr)
	if err == nil {
		_, err = f.Write(body)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", fmt.Errorf("maildir: write %s: %w", f.Name(), err)
	}
	return f.Name(), nil
}

// syncDir fsyncs a directory so that entries renamed into it survive a crash.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// checkHeaderValue refuses a value that would end the header line early.
func checkHeaderValue(s string) error {
	if strings.ContainsAny(s, "\r\n") {
		return fmt.Errorf("%q contains a line break", s)
	}
	return nil
}

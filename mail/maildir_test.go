package mail

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// files lists a Maildir subdirectory.
func files(t testing.TB, dir, sub string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dir, sub))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func TestMaildirDeliver(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "mail")
	md, err := NewMaildir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, sub := range []string{"", "tmp", "new", "cur"} {
		fi, err := os.Stat(filepath.Join(dir, sub))
		if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
			t.Fatalf("%s/%s: %v, mode %v; want a directory with mode 0700", dir, sub, err, fi.Mode())
		}
	}
	if err := md.Deliver(context.Background(), kmsAddr, []string{"alice@example.com"}, []byte(relayedMsg), "7-abc"); err != nil {
		t.Fatal(err)
	}
	if tmp := files(t, dir, "tmp"); len(tmp) != 0 {
		t.Errorf("tmp/ holds %q after delivery, want it empty", tmp)
	}
	names := files(t, dir, "new")
	if len(names) != 1 || !strings.HasPrefix(names[0], "7-abc.") || strings.ContainsAny(names[0], "/:") {
		t.Fatalf("new/ holds %q, want one file named 7-abc.HOST", names)
	}
	path := filepath.Join(dir, "new", names[0])
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v, mode %v; want 0600", path, err, fi.Mode())
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), "\r") {
		t.Error("the Maildir file has CRLF line ends; a local delivery writes LF")
	}
	m, err := mail.ReadMessage(strings.NewReader(string(raw)))
	if err != nil {
		t.Fatalf("the delivered file is not an RFC 5322 message: %v\n%s", err, raw)
	}
	for k, want := range map[string]string{"Return-Path": "<" + kmsAddr + ">", "Delivered-To": "alice@example.com", "Subject": "hi"} {
		if got := m.Header.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	if !strings.HasPrefix(string(raw), "Return-Path: ") {
		t.Error("Return-Path is not the first header")
	}
	body, _ := io.ReadAll(m.Body)
	if string(body) != ".a dot line\nbody\n" {
		t.Errorf("body %q, want the message's body", body)
	}
}

func TestMaildirDeliversAKeyOnce(t *testing.T) {
	dir := t.TempDir()
	md, err := NewMaildir(dir)
	if err != nil {
		t.Fatal(err)
	}
	deliver := func(key string) {
		t.Helper()
		if err := md.Deliver(context.Background(), kmsAddr, []string{"alice@example.com"}, []byte(relayedMsg), key); err != nil {
			t.Fatal(err)
		}
	}
	deliver("1-aa")
	deliver("1-aa")
	if n := len(files(t, dir, "new")); n != 1 {
		t.Fatalf("new/ holds %d files after delivering one key twice, want 1", n)
	}
	// mutt reads it: the file moves to cur/ and gains its flags.
	name := files(t, dir, "new")[0]
	if err := os.Rename(filepath.Join(dir, "new", name), filepath.Join(dir, "cur", name+":2,S")); err != nil {
		t.Fatal(err)
	}
	deliver("1-aa")
	if n, c := len(files(t, dir, "new")), len(files(t, dir, "cur")); n != 0 || c != 1 {
		t.Fatalf("new/ %d, cur/ %d files after a read message was delivered again; want 0 and 1", n, c)
	}
	// A key that merely starts like the other is another message.
	deliver("1-a")
	deliver("11-aa")
	if n := len(files(t, dir, "new")); n != 2 {
		t.Fatalf("new/ holds %d files, want 2 new messages", n)
	}
}

func TestMaildirRefusesBadInput(t *testing.T) {
	md, err := NewMaildir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ from, to, key string }{
		{kmsAddr, "alice@example.com", ""},
		{kmsAddr, "alice@example.com", "../escape"},
		{kmsAddr, "alice@example.com", "a:2,S"},
		{kmsAddr, "alice@example.com\nBcc: x@example.org", "1-aa"},
		{"kms@example.com>\r\nX: y", "alice@example.com", "1-aa"},
	} {
		err := md.Deliver(context.Background(), tc.from, []string{tc.to}, []byte(relayedMsg), tc.key)
		if !IsPermanent(err) {
			t.Errorf("Deliver(%q, %q, key %q) = %v, want a permanent error", tc.from, tc.to, tc.key, err)
		}
	}
	if n := len(files(t, md.Dir(), "new")); n != 0 {
		t.Fatalf("new/ holds %d files, want none", n)
	}
}

func TestNewMaildirReportsUnusablePath(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewMaildir(filepath.Join(file, "mail")); err == nil || !errors.Is(err, fs.ErrExist) && !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("NewMaildir under a file = %v, want an error", err)
	}
	if _, err := NewMaildir(""); err == nil {
		t.Fatal("NewMaildir(\"\") succeeded")
	}
}

// TestMaildirCurIndex: the cached listing of cur/ answers for messages a
// reader moved there (with flags), and a later move into cur/ is seen.
func TestMaildirCurIndex(t *testing.T) {
	md, err := NewMaildir(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cur := filepath.Join(md.Dir(), "cur")
	for i := 0; i < 1000; i++ {
		os.WriteFile(filepath.Join(cur, fmt.Sprintf("read%d.host:2,S", i)), nil, 0o600)
	}
	old := time.Now().Add(-time.Hour)
	os.Chtimes(cur, old, old)
	for _, c := range []struct {
		base string
		want bool
	}{{"read7.host", true}, {"read999.host", true}, {"unread.host", false}, {"read7", false}} {
		if got, err := md.inCur(c.base); err != nil || got != c.want {
			t.Fatalf("inCur(%q) = %v, %v; want %v", c.base, got, err, c.want)
		}
	}
	// A reader moves a new message in: the directory's mtime changes.
	os.WriteFile(filepath.Join(cur, "late.host:2,S"), nil, 0o600)
	if got, _ := md.inCur("late.host"); !got {
		t.Fatal("a message moved into cur/ after the listing was not seen")
	}
}

package config

import (
	"errors"
	"fmt"
	"strings"
)

// ErrInvalid is matched (errors.Is) by every error Load returns and by the
// errors of the secret accessors: the configuration, not the daemon, needs
// fixing. cmd/kms uses it to tell a bad configuration from a runtime failure.
var ErrInvalid = errors.New("invalid configuration")

// Error is one configuration problem. It names the key as written in the
// file ("smtp.listen", "policy.domains.example.org.lifetime"), the reason and,
// when known, where the key is, so that an administrator can fix the file
// without reading the source.
type Error struct {
	File string // configuration file, "" when the YAML came from memory
	Line int    // line of the key in File, 0 when the value is a default
	Key  string // dotted key, "" for a problem with the file as a whole
	Msg  string // why the value is unusable and, where useful, what to do
	Err  error  // underlying cause, if any (an *fs.PathError, a policy error)
}

// Error formats the problem as "config: KEY: MSG (FILE line N)": the key
// first, so that a log reader sees at once what to change.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("config: ")
	if e.Key != "" {
		b.WriteString(e.Key)
		b.WriteString(": ")
	} else if e.File != "" {
		b.WriteString(e.File)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	switch {
	case e.Line > 0 && e.File != "" && e.Key != "":
		fmt.Fprintf(&b, " (%s line %d)", e.File, e.Line)
	case e.Line > 0:
		fmt.Fprintf(&b, " (line %d)", e.Line)
	}
	return b.String()
}

// Unwrap returns the underlying cause, so that errors.Is(err, fs.ErrNotExist)
// works for a missing secret file.
func (e *Error) Unwrap() error { return e.Err }

// Is makes every *Error match ErrInvalid.
func (e *Error) Is(target error) bool { return target == ErrInvalid }

// maxErrors bounds how many problems one Load reports: enough to fix a file
// in one pass, few enough that a garbage file does not flood the terminal.
const maxErrors = 10

// problems collects configuration errors and remembers the line of every key
// seen in the file, so that validation (which works on decoded values) can
// still point at the line.
type problems struct {
	file  string
	lines map[string]int
	errs  []error
}

func newProblems(file string) *problems {
	return &problems{file: file, lines: make(map[string]int)}
}

// full reports whether enough errors have been collected to stop.
func (p *problems) full() bool { return len(p.errs) >= maxErrors }

// add records a problem with key at line (0: look the line up).
func (p *problems) add(key string, line int, cause error, format string, args ...any) {
	if p.full() {
		return
	}
	if line == 0 {
		line = p.lineOf(key)
	}
	p.errs = append(p.errs, &Error{File: p.file, Line: line, Key: key, Msg: fmt.Sprintf(format, args...), Err: cause})
}

// lineOf finds the line of key or, for a value that was not written in the
// file, of its nearest written parent.
func (p *problems) lineOf(key string) int {
	for k := key; k != ""; {
		if l, ok := p.lines[k]; ok {
			return l
		}
		i := strings.LastIndexByte(k, '.')
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return 0
}

// err returns the collected problems as one error, nil when there are none.
func (p *problems) err() error {
	switch len(p.errs) {
	case 0:
		return nil
	case 1:
		return p.errs[0]
	}
	return errors.Join(p.errs...)
}

package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/kmsmail/kms/admin/admintest"
)

// cliEnv is a running admin API and a configuration file that points the
// command line at it.
type cliEnv struct {
	*admintest.Env
	config string
}

func newCLI(t *testing.T) *cliEnv {
	t.Helper()
	e := admintest.New(t)
	return &cliEnv{Env: e, config: writeConfig(t, e.DataDir, e.Addr)}
}

// writeConfig writes a configuration with data_dir and http.listen.
func writeConfig(t *testing.T, dataDir, listen string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "kms.yaml")
	yaml := fmt.Sprintf("data_dir: %q\naddress: kms@example.com\ndomains: [example.com]\nhttp:\n  listen: %q\n", dataDir, listen)
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// result is what one run of the command line produced.
type result struct {
	code           int
	stdout, stderr string
}

// runKMS runs the command line with args as given.
func runKMS(t *testing.T, args ...string) result {
	t.Helper()
	var out, errb bytes.Buffer
	code := run(context.Background(), args, &out, &errb)
	return result{code, out.String(), errb.String()}
}

// kms runs the command line against the env's daemon; --config comes last,
// as administrators add flags after the operands.
func (c *cliEnv) kms(t *testing.T, args ...string) result {
	t.Helper()
	return runKMS(t, append(args, "--config", c.config)...)
}

// want checks the exit status and returns r for further checks.
func (r result) want(t *testing.T, code int) result {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit status %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, code, r.stdout, r.stderr)
	}
	return r
}

// columnGap is how tabwriter separates columns: at least two spaces.
var columnGap = regexp.MustCompile(`\S+( \S+)*`)

// rows reads an aligned table: the header's words (single spaces allowed
// inside a name) give the columns and their start offsets, and each row's
// cell is the text from its column's start to the next one's. A row whose
// text does not start at the header's offsets fails the test, so this also
// checks the alignment.
func rows(t *testing.T, out string) []map[string]string {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	heads := columnGap.FindAllStringIndex(lines[0], -1)
	var table []map[string]string
	for _, line := range lines[1:] {
		row := map[string]string{}
		for i, h := range heads {
			name := lines[0][h[0]:h[1]]
			if h[0] > 0 && h[0] <= len(line) && line[h[0]-1] != ' ' {
				t.Fatalf("column %s does not start at offset %d in %q\n%s", name, h[0], line, out)
			}
			end := len(line)
			if i+1 < len(heads) && heads[i+1][0] < end {
				end = heads[i+1][0]
			}
			if h[0] < end {
				row[name] = strings.TrimSpace(line[h[0]:end])
			}
		}
		table = append(table, row)
	}
	return table
}

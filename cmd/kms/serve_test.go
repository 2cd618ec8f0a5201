package main

import (
	"bufio"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

func TestDaemonMaxProcsRule(t *testing.T) {
	for _, c := range []struct {
		driver, env string
		want        int
		changed     bool
	}{
		{"sqlite", "", 3, true},
		{"sqlite", "2", 2, false}, // the operator's GOMAXPROCS wins
		{"postgres", "", 2, false},
	} {
		got, changed := daemonMaxProcs(c.driver, c.env, 2)
		if got != c.want || changed != c.changed {
			t.Errorf("daemonMaxProcs(%q, GOMAXPROCS=%q, 2) = %d, %v; want %d, %v", c.driver, c.env, got, changed, c.want, c.changed)
		}
	}
}

// TestServeOnSQLiteRunsOneMorePThanCPUs reads the running daemon's
// GOMAXPROCS from /metrics: setMaxProcs must have taken effect in the real
// binary, not only in the rule above.
func TestServeOnSQLiteRunsOneMorePThanCPUs(t *testing.T) {
	if os.Getenv("GOMAXPROCS") != "" {
		t.Skip("GOMAXPROCS is set, and the daemon keeps it")
	}
	d := newDaemonConfig(t, t.TempDir(), "")
	d.start()
	// The test binary runs on Go's default unless `go test -cpu` changed
	// it; the daemon started from the same environment.
	want := runtime.GOMAXPROCS(0) + 1
	if got := metricValue(t, d, "go_sched_gomaxprocs_threads"); got != want {
		t.Errorf("daemon GOMAXPROCS = %d, want %d (Go's default plus one)", got, want)
	}
}

// metricValue reads one unlabelled integer metric from the daemon's
// /metrics.
func metricValue(t *testing.T, d *daemonProc, name string) int {
	t.Helper()
	token, err := os.ReadFile(filepath.Join(d.dataDir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	req, _ := http.NewRequest(http.MethodGet, "http://"+d.httpAddr+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			n, err := strconv.Atoi(v)
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			return n
		}
	}
	t.Fatalf("/metrics has no %s", name)
	return 0
}

package admin_test

import (
	"net/http"
	"testing"

	"github.com/kmsmail/kms/admin/admintest"
)

// TestProfilerNeedsToken: /debug/pprof/ answers only with the admin token.
func TestProfilerNeedsToken(t *testing.T) {
	e := admintest.New(t)
	for _, c := range []struct {
		token string
		want  int
	}{{"", http.StatusUnauthorized}, {"wrong", http.StatusUnauthorized}, {e.Token, http.StatusOK}} {
		req, _ := http.NewRequest("GET", e.URL+"/debug/pprof/", nil)
		if c.token != "" {
			req.Header.Set("Authorization", "Bearer "+c.token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("token %q: HTTP %d, want %d", c.token, resp.StatusCode, c.want)
		}
	}
}

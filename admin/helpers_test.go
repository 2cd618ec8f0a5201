package admin_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"testing"

	"github.com/kmsmail/kms/admin"
	"github.com/kmsmail/kms/admin/admintest"
	"github.com/kmsmail/kms/kms"
)

// answer is an HTTP answer as a test sees it.
type answer struct {
	status int
	header http.Header
	body   []byte
}

// errorBody decodes a JSON error answer, failing the test if it is not one.
func (a answer) errorBody(t *testing.T) admin.ErrorBody {
	t.Helper()
	var eb admin.ErrorBody
	if err := json.Unmarshal(a.body, &eb); err != nil || eb.Error == "" || eb.Code == "" {
		t.Fatalf("answer %d is not a JSON error with a message and a code: %q (%v)", a.status, a.body, err)
	}
	if ct := a.header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("error answer Content-Type = %q, want application/json", ct)
	}
	return eb
}

// call sends one raw request; token "" sends no Authorization header.
func call(t *testing.T, e *admintest.Env, method, path, token string, body []byte) answer {
	t.Helper()
	req, err := http.NewRequest(method, e.URL+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return answer{status: resp.StatusCode, header: resp.Header, body: b}
}

// api sends an authenticated request.
func api(t *testing.T, e *admintest.Env, method, path string, body []byte) answer {
	t.Helper()
	return call(t, e, method, path, e.Token, body)
}

// wantRefusal checks that a is a JSON error with status and code.
func wantRefusal(t *testing.T, a answer, status int, code string) admin.ErrorBody {
	t.Helper()
	if a.status != status {
		t.Fatalf("status = %d, want %d; body %s", a.status, status, a.body)
	}
	eb := a.errorBody(t)
	if eb.Code != code {
		t.Errorf("code = %q, want %q (message %q)", eb.Code, code, eb.Error)
	}
	return eb
}

// snapshot captures every user and certificate, so that a test can check
// that a refused request changed nothing.
func snapshot(t *testing.T, e *admintest.Env) string {
	t.Helper()
	ctx := context.Background()
	users, err := e.Service.ListUsers(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	certs, err := e.Service.ListCerts(ctx, kms.CertFilter{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(struct {
		U []kms.User
		C []kms.Certificate
	}{users, certs})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// unchanged runs refuse and checks that the users and certificates are as
// they were before.
func unchanged(t *testing.T, e *admintest.Env, refuse func()) {
	t.Helper()
	before := snapshot(t, e)
	refuse()
	if after := snapshot(t, e); after != before {
		t.Errorf("a refused request changed the store:\nbefore %s\nafter  %s", before, after)
	}
}

// decode unmarshals a's body into v, failing on a bad body.
func decode(t *testing.T, a answer, v any) {
	t.Helper()
	if err := json.Unmarshal(a.body, v); err != nil {
		t.Fatalf("answer %d: %v in %s", a.status, err, a.body)
	}
}

// jsonBody marshals v.
func jsonBody(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

package admin_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/kmsmail/kms/admin"
	"github.com/kmsmail/kms/admin/admintest"
	"github.com/kmsmail/kms/kms"
)

func TestClientUnreachable(t *testing.T) {
	// A port that was just free: nothing listens there.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + l.Addr().String()
	l.Close()
	_, err = admin.NewClient(url, "x").ListUsers(context.Background(), "")
	if !errors.Is(err, admin.ErrUnreachable) || !strings.Contains(err.Error(), "is `kms serve` running? tried "+url) {
		t.Fatalf("unreachable daemon: %v", err)
	}
	var ae *admin.Error
	if errors.As(err, &ae) {
		t.Error("an unreachable daemon is not a refusal")
	}
}

func TestClientWrongToken(t *testing.T) {
	e := admintest.New(t)
	_, err := admin.NewClient(e.URL, strings.Repeat("f", 64)).Enroll(context.Background(), "bob@example.com", "")
	var ae *admin.Error
	if !errors.As(err, &ae) || !ae.Refused() || ae.Code != admin.CodeUnauthorized || !strings.Contains(ae.Message, "admin.token") {
		t.Fatalf("wrong token: %v", err)
	}
}

func TestClientNotKMS(t *testing.T) {
	// Something else listens where the configuration points.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/api/v1/users" {
			w.Write([]byte("<html>hello</html>"))
			return
		}
		http.Error(w, "teapot", http.StatusTeapot)
	}))
	defer srv.Close()
	c := admin.NewClient(srv.URL, "x")
	if _, err := c.ListUsers(context.Background(), ""); err == nil || !strings.Contains(err.Error(), "kms admin API") {
		t.Errorf("HTML answer: %v", err)
	}
	_, err := c.GetUser(context.Background(), "a@example.com")
	var ae *admin.Error
	if !errors.As(err, &ae) || ae.Status != http.StatusTeapot || ae.Code != "" || errors.Is(err, kms.ErrNotFound) {
		t.Errorf("non-API error answer: %#v", err)
	}
	if _, err := c.Import(context.Background(), []byte("x")); !errors.As(err, &ae) || ae.Status != http.StatusTeapot {
		t.Errorf("non-API error answer to import: %v", err)
	}
}

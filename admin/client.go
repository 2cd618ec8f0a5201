package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/kmsmail/kms/kms"
)

// ErrUnreachable reports that the daemon did not answer at all, as opposed
// to answering with a refusal or a failure.
var ErrUnreachable = errors.New("cannot reach the kms daemon")

// Error is an error answer of the admin API.
type Error struct {
	Status  int    // HTTP status
	Code    string // one of the Code constants, "" when the answer was not the API's
	Message string // the server's message: what is wrong and what to do
}

// Error returns the server's message.
func (e *Error) Error() string { return e.Message }

// Refused reports whether the daemon refused the request (a 4xx status:
// bad input, wrong state, unknown user) rather than failed to carry it out.
func (e *Error) Refused() bool { return e.Status >= 400 && e.Status < 500 }

// Is makes errors.Is(err, kms.ErrNotFound) and the other domain sentinels
// work on the client side as on the server side.
func (e *Error) Is(target error) bool {
	for _, d := range domainErrors {
		if d.code == e.Code && d.err == target {
			return true
		}
	}
	return false
}

// Client talks to the admin API of a running daemon.
type Client struct {
	base  string
	token string
	hc    *http.Client
}

// NewClient returns a client for the daemon at baseURL (http://host:port)
// that authenticates with token.
func NewClient(baseURL, token string) *Client {
	return &Client{base: strings.TrimRight(baseURL, "/"), token: token, hc: &http.Client{Timeout: 2 * time.Minute}}
}

// BaseURL returns the daemon's address as the client uses it.
func (c *Client) BaseURL() string { return c.base }

// maxAnswer bounds an answer the client reads: a listing of every
// certificate of a large installation fits.
const maxAnswer = 256 << 20

// CertQuery selects certificates for ListCerts; zero fields select all.
type CertQuery struct {
	Email    string
	State    kms.CertState
	Expiring string // a duration such as 30d: expiring within it from now
}

// Enroll enrolls or re-enrolls email and returns the one-time code.
func (c *Client) Enroll(ctx context.Context, email, name string) (*kms.Enrollment, error) {
	var out kms.Enrollment
	return &out, c.doJSON(ctx, http.MethodPost, "/api/v1/users", nil, EnrollRequest{Email: email, Name: name}, &out)
}

// ListUsers lists users, only those in state unless it is empty.
func (c *Client) ListUsers(ctx context.Context, state kms.UserState) ([]kms.User, error) {
	var out []kms.User
	return out, c.doJSON(ctx, http.MethodGet, "/api/v1/users", query("state", string(state)), nil, &out)
}

// GetUser returns a user with their certificates.
func (c *Client) GetUser(ctx context.Context, email string) (*kms.UserDetail, error) {
	var out kms.UserDetail
	return &out, c.doJSON(ctx, http.MethodGet, "/api/v1/users/"+url.PathEscape(email), nil, nil, &out)
}

// Disable disables a user, revoking their certificates for reason (an RFC
// 5280 reason name; "" means affiliationChanged).
func (c *Client) Disable(ctx context.Context, email, reason string) (*kms.User, error) {
	var out kms.User
	return &out, c.doJSON(ctx, http.MethodPost, "/api/v1/users/"+url.PathEscape(email)+"/disable", nil, ReasonRequest{Reason: reason}, &out)
}

// ListCerts lists certificates, soonest expiry first.
func (c *Client) ListCerts(ctx context.Context, q CertQuery) ([]kms.Certificate, error) {
	var out []kms.Certificate
	return out, c.doJSON(ctx, http.MethodGet, "/api/v1/certs",
		query("email", q.Email, "state", string(q.State), "expiring", q.Expiring), nil, &out)
}

// GetCert returns a certificate with its PEM; DER is filled in too.
func (c *Client) GetCert(ctx context.Context, serial string) (*CertDetail, error) {
	var out CertDetail
	if err := c.doJSON(ctx, http.MethodGet, "/api/v1/certs/"+url.PathEscape(serial), nil, nil, &out); err != nil {
		return nil, err
	}
	if b := pemDecode(out.PEM); b != nil {
		out.DER = b
	}
	return &out, nil
}

// Revoke revokes a certificate for reason (an RFC 5280 reason name; ""
// means unspecified).
func (c *Client) Revoke(ctx context.Context, serial, reason string) (*kms.Certificate, error) {
	var out kms.Certificate
	return &out, c.doJSON(ctx, http.MethodPost, "/api/v1/certs/"+url.PathEscape(serial)+"/revoke", nil, ReasonRequest{Reason: reason}, &out)
}

// Import imports the certificates of a PEM bundle or one DER certificate.
// It returns the outcome of each certificate even when it also returns an
// error because some were refused.
func (c *Client) Import(ctx context.Context, data []byte) ([]ImportResult, error) {
	status, body, err := c.do(ctx, http.MethodPost, "/api/v1/certs/import", nil, "application/octet-stream", data)
	if err != nil {
		return nil, err
	}
	var out ImportResponse
	jerr := json.Unmarshal(body, &out)
	switch {
	case status/100 == 2 && jerr != nil:
		return nil, fmt.Errorf("the daemon's answer to the import is not the expected JSON (%v): is %s the kms admin API?", jerr, c.base)
	case status/100 != 2 && (jerr != nil || out.Results == nil):
		// Refused before any certificate was looked at (bad token, body
		// too large, a bundle that does not parse).
		return nil, answerError(status, body)
	}
	if status/100 != 2 {
		return out.Results, &Error{Status: status, Code: out.Code, Message: out.Error}
	}
	return out.Results, nil
}

// Audit returns the newest audit records, for one address unless email is
// empty; limit 0 means the server's default.
func (c *Client) Audit(ctx context.Context, email string, limit int) ([]kms.AuditRecord, error) {
	l := ""
	if limit > 0 {
		l = strconv.Itoa(limit)
	}
	var out []kms.AuditRecord
	return out, c.doJSON(ctx, http.MethodGet, "/api/v1/audit", query("email", email, "limit", l), nil, &out)
}

// query builds a query string from name, value pairs, leaving out empty
// values.
func query(kv ...string) url.Values {
	q := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] != "" {
			q.Set(kv[i], kv[i+1])
		}
	}
	return q
}

// doJSON sends in as JSON (unless nil) and decodes a 2xx answer into out.
func (c *Client) doJSON(ctx context.Context, method, path string, q url.Values, in, out any) error {
	var body []byte
	if in != nil {
		var err error
		if body, err = json.Marshal(in); err != nil {
			return err
		}
	}
	status, answer, err := c.do(ctx, method, path, q, "application/json", body)
	if err != nil {
		return err
	}
	if status/100 != 2 {
		return answerError(status, answer)
	}
	if err := json.Unmarshal(answer, out); err != nil {
		return fmt.Errorf("the daemon's answer to %s %s is not the expected JSON (%v): is %s the kms admin API?", method, path, err, c.base)
	}
	return nil
}

// do sends one request and reads the answer.
func (c *Client) do(ctx context.Context, method, path string, q url.Values, contentType string, body []byte) (int, []byte, error) {
	u := c.base + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return 0, nil, fmt.Errorf("admin API address %q: %w", c.base, err)
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return 0, nil, ctx.Err()
		}
		return 0, nil, fmt.Errorf("%w: is `kms serve` running? tried %s (%v)", ErrUnreachable, c.base, err)
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return 0, nil, fmt.Errorf("reading the daemon's answer to %s %s: %w", method, path, err)
	}
	return resp.StatusCode, answer, nil
}

// answerError turns an error answer into an *Error.
func answerError(status int, body []byte) error {
	var eb ErrorBody
	if err := json.Unmarshal(body, &eb); err != nil || eb.Error == "" {
		return &Error{Status: status, Message: fmt.Sprintf("the daemon answered %d %s without an error message: is http.listen the kms admin address?",
			status, http.StatusText(status))}
	}
	return &Error{Status: status, Code: eb.Code, Message: eb.Error}
}

package admin

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/kmsmail/kms/kms"
)

// Error codes of the admin API. They are part of the API: the CLI and
// scripts branch on them, so a code never changes meaning.
const (
	CodeNotFound       = "not_found"
	CodeInvalidAddress = "invalid_address"
	CodeDomain         = "domain"
	CodeBadRequest     = "bad_request"
	CodeBadReason      = "bad_reason"
	CodeBadDuration    = "bad_duration"
	CodeBadCertificate = "bad_certificate"
	CodeTooLarge       = "too_large"
	CodeAlreadyActive  = "already_active"
	CodeUserState      = "user_state"
	CodeCertState      = "cert_state"
	CodeLapsed         = "lapsed"
	CodeConflict       = "conflict"
	CodeUnauthorized   = "unauthorized"
	CodeInternal       = "internal"
)

// domainErrors maps the domain's sentinel errors to an HTTP status and an
// API code. The order matters only for errors that wrap two sentinels,
// which kms does not produce.
var domainErrors = []struct {
	err    error
	status int
	code   string
}{
	{kms.ErrNotFound, http.StatusNotFound, CodeNotFound},
	{kms.ErrInvalidAddress, http.StatusBadRequest, CodeInvalidAddress},
	{kms.ErrDomain, http.StatusBadRequest, CodeDomain},
	{kms.ErrAlreadyActive, http.StatusConflict, CodeAlreadyActive},
	{kms.ErrUserState, http.StatusConflict, CodeUserState},
	{kms.ErrCertState, http.StatusConflict, CodeCertState},
	{kms.ErrLapsed, http.StatusConflict, CodeLapsed},
	{kms.ErrConflict, http.StatusConflict, CodeConflict},
}

// requestError is a refusal the admin layer itself decides (a bad query
// parameter, a malformed body) before the domain sees the request. Its
// message is meant for the administrator and is sent as it is.
type requestError struct {
	status int
	code   string
	msg    string
}

func (e *requestError) Error() string { return e.msg }

// badRequest returns a 400 requestError.
func badRequest(code, msg string) error {
	return &requestError{status: http.StatusBadRequest, code: code, msg: msg}
}

// ErrorBody is the JSON body of every error answer of the admin API.
type ErrorBody struct {
	Error string `json:"error"` // what is wrong and what to do
	Code  string `json:"code"`  // one of the Code constants
}

// classify returns the status, code and client-safe message for err. A
// domain refusal's message names the user or certificate and what to do, so
// it is sent as it is; anything else is an internal failure whose cause
// stays in the log.
func classify(err error) (status int, code, msg string) {
	var re *requestError
	if errors.As(err, &re) {
		return re.status, re.code, re.msg
	}
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return http.StatusRequestEntityTooLarge, CodeTooLarge,
			"request body larger than 1 MiB; send fewer certificates per request"
	}
	for _, d := range domainErrors {
		if errors.Is(err, d.err) {
			return d.status, d.code, err.Error()
		}
	}
	return http.StatusInternalServerError, CodeInternal,
		"internal error; the daemon's log has the cause"
}

// writeError answers with err as JSON, logging internal failures with their
// cause and refusals at debug level (the domain already audits them).
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status, code, msg := classify(err)
	if status >= 500 {
		s.log.Error("admin api: request failed", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "err", err)
	} else {
		s.log.Debug("admin api: request refused", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "code", code, "err", err)
	}
	writeJSON(w, status, ErrorBody{Error: msg, Code: code})
}

// writeJSON writes v as the JSON body of a status answer.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	// A write error means the client went away; there is no one to tell.
	_ = enc.Encode(v)
}

package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/kmsmail/kms/kms"
	"github.com/kmsmail/kms/policy"
)

// enroll handles POST /api/v1/users.
func (s *Server) enroll(w http.ResponseWriter, r *http.Request) error {
	var req EnrollRequest
	if err := decodeBody(r, &req, false); err != nil {
		return err
	}
	if strings.TrimSpace(req.Email) == "" {
		return badRequest(CodeInvalidAddress, `the request has no "email": name the address to enroll`)
	}
	e, err := s.opts.Users.Enroll(r.Context(), req.Email, req.Name, actor(r))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, e)
	return nil
}

// listUsers handles GET /api/v1/users[?state=].
func (s *Server) listUsers(w http.ResponseWriter, r *http.Request) error {
	state, err := userState(r.URL.Query().Get("state"))
	if err != nil {
		return err
	}
	users, err := s.opts.Users.ListUsers(r.Context(), state)
	if err != nil {
		return err
	}
	if users == nil {
		users = []kms.User{}
	}
	writeJSON(w, http.StatusOK, users)
	return nil
}

// getUser handles GET /api/v1/users/{email}.
func (s *Server) getUser(w http.ResponseWriter, r *http.Request) error {
	u, err := s.opts.Users.GetUser(r.Context(), r.PathValue("email"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, u)
	return nil
}

// disable handles POST /api/v1/users/{email}/disable.
func (s *Server) disable(w http.ResponseWriter, r *http.Request) error {
	var req ReasonRequest
	if err := decodeBody(r, &req, true); err != nil {
		return err
	}
	reason := -1 // the domain's default for a disabled user
	if req.Reason != "" {
		var err error
		if reason, err = parseReason(req.Reason); err != nil {
			return err
		}
	}
	u, err := s.opts.Users.Disable(r.Context(), r.PathValue("email"), reason, actor(r))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, u)
	return nil
}

// listCerts handles GET /api/v1/certs[?email=&state=&expiring=].
func (s *Server) listCerts(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	f := kms.CertFilter{Email: q.Get("email")}
	switch st := kms.CertState(q.Get("state")); st {
	case "", kms.CertCurrent, kms.CertSuperseded, kms.CertExpired, kms.CertRevoked:
		f.State = st
	default:
		return badRequest(CodeBadRequest, fmt.Sprintf("unknown certificate state %q: use current, superseded, expired or revoked", st))
	}
	if v := q.Get("expiring"); v != "" {
		d, err := policy.ParseDuration(v)
		if err != nil {
			return badRequest(CodeBadDuration, "expiring: "+err.Error())
		}
		// Months have no fixed length, so measure them from now.
		now := s.clock.Now()
		if f.ExpiringWithin = d.AddTo(now).Sub(now); f.ExpiringWithin <= 0 {
			return badRequest(CodeBadDuration, fmt.Sprintf("expiring %q: give a duration longer than zero, e.g. 30d", v))
		}
	}
	certs, err := s.opts.Certs.ListCerts(r.Context(), f)
	if err != nil {
		return err
	}
	if certs == nil {
		certs = []kms.Certificate{}
	}
	writeJSON(w, http.StatusOK, certs)
	return nil
}

// getCert handles GET /api/v1/certs/{serial}.
func (s *Server) getCert(w http.ResponseWriter, r *http.Request) error {
	c, err := s.opts.Certs.GetCert(r.Context(), r.PathValue("serial"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, CertDetail{Certificate: *c, PEM: certPEM(c.DER)})
	return nil
}

// revoke handles POST /api/v1/certs/{serial}/revoke.
func (s *Server) revoke(w http.ResponseWriter, r *http.Request) error {
	var req ReasonRequest
	if err := decodeBody(r, &req, true); err != nil {
		return err
	}
	reason, err := parseReason(req.Reason)
	if err != nil {
		return err
	}
	c, err := s.opts.Certs.Revoke(r.Context(), r.PathValue("serial"), reason, actor(r))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, c)
	return nil
}

// audit handles GET /api/v1/audit[?email=&limit=].
func (s *Server) audit(w http.ResponseWriter, r *http.Request) error {
	if s.opts.Audit == nil {
		return errors.New("admin: no audit log configured")
	}
	q := r.URL.Query()
	email := q.Get("email")
	if email != "" {
		var err error
		if email, err = kms.NormalizeAddress(email); err != nil {
			return err
		}
	}
	limit := 100
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10000 {
			return badRequest(CodeBadRequest, fmt.Sprintf("limit %q: give a number of records from 1 to 10000", v))
		}
		limit = n
	}
	recs, err := s.opts.Audit.Audit(r.Context(), email, limit)
	if err != nil {
		return err
	}
	if recs == nil {
		recs = []kms.AuditRecord{}
	}
	writeJSON(w, http.StatusOK, recs)
	return nil
}

// userState reads a ?state= filter.
func userState(v string) (kms.UserState, error) {
	switch st := kms.UserState(v); st {
	case "", kms.UserInvited, kms.UserActive, kms.UserLapsed, kms.UserDisabled:
		return st, nil
	}
	return "", badRequest(CodeBadRequest, fmt.Sprintf("unknown user state %q: use invited, active, lapsed or disabled", v))
}

// parseReason reads a revocation reason name.
func parseReason(name string) (int, error) {
	code, err := kms.ParseReason(name)
	if err != nil {
		return 0, badRequest(CodeBadReason, err.Error())
	}
	return code, nil
}

// decodeBody reads the JSON object in r's body into v, strictly: an unknown
// field is more likely a typo ("reson") than something to ignore. An empty
// body is accepted when every field is optional.
func decodeBody(r *http.Request, v any, emptyOK bool) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	err := dec.Decode(v)
	var tooBig *http.MaxBytesError
	switch {
	case errors.Is(err, io.EOF) && emptyOK:
		return nil
	case errors.Is(err, io.EOF):
		return badRequest(CodeBadRequest, "the request body is empty: send a JSON object")
	case errors.As(err, &tooBig):
		return err
	case err != nil:
		return badRequest(CodeBadRequest, "the request body is not the expected JSON object: "+err.Error())
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		if errors.As(err, &tooBig) {
			return err
		}
		return badRequest(CodeBadRequest, "the request body has data after the JSON object: send one object")
	}
	return nil
}

// certPEM encodes a DER certificate as PEM.
func certPEM(der []byte) string {
	if len(der) == 0 {
		return ""
	}
	return string(pemCert(der))
}

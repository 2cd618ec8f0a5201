package admin

import "github.com/kmsmail/kms/kms"

// The JSON bodies of the API beyond the kms types themselves. Server and
// Client share them, so the two cannot drift apart.

// EnrollRequest is the body of POST /api/v1/users.
type EnrollRequest struct {
	Email string `json:"email"`
	Name  string `json:"name,omitempty"`
}

// ReasonRequest is the body of the disable and revoke endpoints. Reason is
// an RFC 5280 reason name as kms.ParseReason reads it; empty means the
// endpoint's default (unspecified for revoke, affiliationChanged for
// disable).
type ReasonRequest struct {
	Reason string `json:"reason,omitempty"`
}

// CertDetail is a certificate with its PEM encoding, the answer of
// GET /api/v1/certs/{serial}.
type CertDetail struct {
	kms.Certificate
	PEM string `json:"pem"`
}

// Import outcomes of one certificate in a bundle.
const (
	ImportImported = "imported" // now tracked
	ImportSkipped  = "skipped"  // a CA certificate, as bundles often carry the chain
	ImportRefused  = "refused"  // the domain refused it; Error says why
	ImportFailed   = "failed"   // an internal failure; the daemon's log has the cause
)

// ImportResult reports one certificate of an import.
type ImportResult struct {
	Index       int              `json:"index"` // position in the bundle, from 0
	Serial      string           `json:"serial,omitempty"`
	Email       string           `json:"email,omitempty"`
	Result      string           `json:"result"` // one of the Import constants
	Certificate *kms.Certificate `json:"certificate,omitempty"`
	Error       string           `json:"error,omitempty"`
	Code        string           `json:"code,omitempty"`
}

// ImportResponse is the answer of POST /api/v1/certs/import. When any
// certificate was refused, or none was imported, the status is an error
// status and Error and Code describe the first problem, as in ErrorBody;
// Results still lists every certificate.
type ImportResponse struct {
	Results []ImportResult `json:"results"`
	Error   string         `json:"error,omitempty"`
	Code    string         `json:"code,omitempty"`
}

package kms

import "github.com/kmsmail/kms/kms/ca"

// ParseReason reads a revocation reason by its RFC 5280 name as
// administrators type it ("keyCompromise", "key_compromise", or the code);
// the empty string is "unspecified". Only the reasons the S/MIME Baseline
// Requirements allow for subscriber certificates are accepted: there is no
// certificateHold, since the BRs forbid suspension.
func ParseReason(s string) (int, error) {
	if s == "" {
		return ca.ReasonUnspecified, nil
	}
	return ca.ParseReason(s)
}

// ReasonName returns the RFC 5280 name of a reason code.
func ReasonName(code int) string { return ca.ReasonString(code) }

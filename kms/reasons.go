package kms

import (
	"fmt"
	"strings"
)

// RFC 5280 section 5.3.1 CRLReason codes that kms uses. certificateHold (6)
// is left out on purpose: the S/MIME Baseline Requirements forbid
// suspending a certificate, and removeFromCRL (8) only serves holds.
var reasonCodes = map[string]int{
	"unspecified":          0,
	"keyCompromise":        1,
	"affiliationChanged":   3,
	"superseded":           4,
	"cessationOfOperation": 5,
	"privilegeWithdrawn":   9,
}

// ParseReason reads a revocation reason by its RFC 5280 name, accepting the
// spellings administrators type: "keyCompromise", "key_compromise",
// "key-compromise", "KeyCompromise". The empty string is "unspecified".
func ParseReason(s string) (int, error) {
	if s == "" {
		return 0, nil
	}
	want := strings.ToLower(strings.NewReplacer("_", "", "-", "", " ", "").Replace(s))
	for name, code := range reasonCodes {
		if strings.ToLower(name) == want {
			return code, nil
		}
	}
	return 0, fmt.Errorf("unknown revocation reason %q (use one of %s)", s, reasonList())
}

// ReasonName returns the RFC 5280 name of a reason code.
func ReasonName(code int) string {
	for name, c := range reasonCodes {
		if c == code {
			return name
		}
	}
	return fmt.Sprintf("reason%d", code)
}

func reasonList() string {
	return "unspecified, keyCompromise, affiliationChanged, superseded, cessationOfOperation, privilegeWithdrawn"
}

package ca

import (
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"strconv"
	"strings"
	"time"
)

// ErrBadReason reports a revocation reason that is unknown or that the
// Baseline Requirements do not allow for a subscriber certificate.
var ErrBadReason = errors.New("revocation reason not allowed")

// CRLReason codes of RFC 5280 section 5.3.1.
const (
	ReasonUnspecified          = 0
	ReasonKeyCompromise        = 1
	ReasonCACompromise         = 2
	ReasonAffiliationChanged   = 3
	ReasonSuperseded           = 4
	ReasonCessationOfOperation = 5
	ReasonCertificateHold      = 6
	ReasonRemoveFromCRL        = 8
	ReasonPrivilegeWithdrawn   = 9
	ReasonAACompromise         = 10
)

// reasonNames are the RFC 5280 names, indexed by code (7 is unused).
var reasonNames = map[int]string{
	ReasonUnspecified:          "unspecified",
	ReasonKeyCompromise:        "keyCompromise",
	ReasonCACompromise:         "cACompromise",
	ReasonAffiliationChanged:   "affiliationChanged",
	ReasonSuperseded:           "superseded",
	ReasonCessationOfOperation: "cessationOfOperation",
	ReasonCertificateHold:      "certificateHold",
	ReasonRemoveFromCRL:        "removeFromCRL",
	ReasonPrivilegeWithdrawn:   "privilegeWithdrawn",
	ReasonAACompromise:         "aACompromise",
}

// subscriberReasons are the reasons the Baseline Requirements (7.2.2) allow
// on a CRL entry for a subscriber certificate. certificateHold is excluded
// because the BRs forbid suspension; cACompromise and aACompromise concern
// CAs; removeFromCRL belongs to delta CRLs, which kms does not publish.
var subscriberReasons = []int{
	ReasonUnspecified, ReasonKeyCompromise, ReasonAffiliationChanged,
	ReasonSuperseded, ReasonCessationOfOperation, ReasonPrivilegeWithdrawn,
}

func allowedReason(code int) bool {
	for _, r := range subscriberReasons {
		if r == code {
			return true
		}
	}
	return false
}

// ReasonString returns the RFC 5280 name of a CRLReason code, such as
// "keyCompromise", or "reason(7)" for a code RFC 5280 does not define.
func ReasonString(code int) string {
	if n, ok := reasonNames[code]; ok {
		return n
	}
	return fmt.Sprintf("reason(%d)", code)
}

// ParseReason reads a revocation reason allowed for a subscriber
// certificate, by RFC 5280 name in any case and with or without separators
// ("keyCompromise", "key_compromise", "key-compromise") or by code ("1").
func ParseReason(s string) (int, error) {
	code := -1
	if n, err := strconv.Atoi(strings.TrimSpace(s)); err == nil {
		code = n
	} else {
		norm := strings.NewReplacer("_", "", "-", "", " ", "").Replace(strings.ToLower(strings.TrimSpace(s)))
		for c, name := range reasonNames {
			if strings.ToLower(name) == norm {
				code = c
			}
		}
	}
	if code < 0 || !allowedReason(code) {
		return 0, fmt.Errorf("%w: %q (use one of %s)", ErrBadReason, s, reasonList())
	}
	return code, nil
}

func reasonList() string {
	names := make([]string, len(subscriberReasons))
	for i, c := range subscriberReasons {
		names[i] = reasonNames[c]
	}
	return strings.Join(names, ", ")
}

// Revoked is one entry of a CRL.
type Revoked struct {
	Serial *big.Int
	At     time.Time // when the certificate was revoked
	Reason int       // RFC 5280 CRLReason code; 0 (unspecified) is written as no reason
}

// CRL signs a complete CRL of entries with the issuing CA and returns it in
// DER. number must grow with every CRL the caller publishes (RFC 5280
// 5.2.3); the caller keeps it. The S/MIME BRs want nextUpdate at most ten
// days after thisUpdate for a CRL of subscriber certificates.
func (a *Authority) CRL(entries []Revoked, number *big.Int, thisUpdate, nextUpdate time.Time) ([]byte, error) {
	if number == nil || number.Sign() < 0 || len(number.Bytes()) > 20 {
		return nil, fmt.Errorf("CRL number %v: must be a non-negative integer of at most 20 octets", number)
	}
	if !nextUpdate.After(thisUpdate) {
		return nil, fmt.Errorf("CRL nextUpdate %s must be after thisUpdate %s", nextUpdate.Format(time.RFC3339), thisUpdate.Format(time.RFC3339))
	}
	list := make([]x509.RevocationListEntry, len(entries))
	for i, e := range entries {
		if e.Serial == nil || e.Serial.Sign() <= 0 {
			return nil, fmt.Errorf("CRL entry %d: serial %v must be a positive integer", i, e.Serial)
		}
		if !allowedReason(e.Reason) {
			return nil, fmt.Errorf("CRL entry %s: %w: %s (use one of %s)", e.Serial.Text(16), ErrBadReason, ReasonString(e.Reason), reasonList())
		}
		if e.At.After(thisUpdate) {
			return nil, fmt.Errorf("CRL entry %s: revoked at %s, after thisUpdate %s", e.Serial.Text(16), e.At.Format(time.RFC3339), thisUpdate.Format(time.RFC3339))
		}
		list[i] = x509.RevocationListEntry{SerialNumber: e.Serial, RevocationTime: e.At.UTC(), ReasonCode: e.Reason}
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number:                    number,
		ThisUpdate:                thisUpdate.UTC(),
		NextUpdate:                nextUpdate.UTC(),
		RevokedCertificateEntries: list,
	}, a.issuer, a.issuerKey)
	if err != nil {
		return nil, fmt.Errorf("sign CRL: %w", err)
	}
	return der, nil
}

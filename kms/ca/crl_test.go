package ca

import (
	"crypto/x509"
	"errors"
	"math/big"
	"testing"
	"time"
)

func TestParseReason(t *testing.T) {
	for _, c := range []struct {
		in   string
		code int
		err  bool
	}{
		{in: "keyCompromise", code: ReasonKeyCompromise},
		{in: "key_compromise", code: ReasonKeyCompromise},
		{in: "Key-Compromise", code: ReasonKeyCompromise},
		{in: " KEYCOMPROMISE ", code: ReasonKeyCompromise},
		{in: "1", code: ReasonKeyCompromise},
		{in: "unspecified", code: ReasonUnspecified},
		{in: "affiliation_changed", code: ReasonAffiliationChanged},
		{in: "superseded", code: ReasonSuperseded},
		{in: "cessation_of_operation", code: ReasonCessationOfOperation},
		{in: "privilegeWithdrawn", code: ReasonPrivilegeWithdrawn},
		{in: "9", code: ReasonPrivilegeWithdrawn},
		{in: "certificateHold", err: true},
		{in: "certificate_hold", err: true},
		{in: "cACompromise", err: true},
		{in: "aACompromise", err: true},
		{in: "removeFromCRL", err: true},
		{in: "7", err: true},
		{in: "-1", err: true},
		{in: "", err: true},
		{in: "lost", err: true},
	} {
		code, err := ParseReason(c.in)
		if c.err {
			if !errors.Is(err, ErrBadReason) {
				t.Errorf("ParseReason(%q) = %d, %v; want ErrBadReason", c.in, code, err)
			}
			continue
		}
		if err != nil || code != c.code {
			t.Errorf("ParseReason(%q) = %d, %v; want %d", c.in, code, err, c.code)
		}
	}
}

func TestReasonStringRoundTrip(t *testing.T) {
	for _, code := range subscriberReasons {
		got, err := ParseReason(ReasonString(code))
		if err != nil || got != code {
			t.Errorf("ParseReason(ReasonString(%d)) = %d, %v", code, got, err)
		}
	}
	if s := ReasonString(ReasonCertificateHold); s != "certificateHold" {
		t.Errorf("ReasonString(6) = %q", s)
	}
	if s := ReasonString(7); s != "reason(7)" {
		t.Errorf("ReasonString(7) = %q", s)
	}
}

func TestCRL(t *testing.T) {
	a := fastCA(t)
	revokedAt := testNow.Add(-time.Hour)
	entries := []Revoked{
		{Serial: big.NewInt(101), At: revokedAt, Reason: ReasonKeyCompromise},
		{Serial: big.NewInt(102), At: revokedAt, Reason: ReasonUnspecified},
		{Serial: big.NewInt(103), At: revokedAt, Reason: ReasonPrivilegeWithdrawn},
	}
	der, err := a.CRL(entries, big.NewInt(42), testNow, testNow.AddDate(0, 0, 7))
	if err != nil {
		t.Fatal(err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		t.Fatal(err)
	}
	if err := crl.CheckSignatureFrom(a.Issuer()); err != nil {
		t.Errorf("CRL signature: %v", err)
	}
	if crl.Number.Cmp(big.NewInt(42)) != 0 || !crl.ThisUpdate.Equal(testNow) || !crl.NextUpdate.Equal(testNow.AddDate(0, 0, 7)) {
		t.Errorf("CRL number %v, thisUpdate %s, nextUpdate %s", crl.Number, crl.ThisUpdate, crl.NextUpdate)
	}
	if len(crl.RevokedCertificateEntries) != len(entries) {
		t.Fatalf("CRL has %d entries, want %d", len(crl.RevokedCertificateEntries), len(entries))
	}
	for i, e := range crl.RevokedCertificateEntries {
		want := entries[i]
		if e.SerialNumber.Cmp(want.Serial) != 0 || e.ReasonCode != want.Reason || !e.RevocationTime.Equal(revokedAt) {
			t.Errorf("entry %d = serial %v reason %d at %s; want %v %d %s", i, e.SerialNumber, e.ReasonCode, e.RevocationTime, want.Serial, want.Reason, revokedAt)
		}
	}
	// RFC 5280 5.3.1: unspecified is expressed by leaving the reason out.
	for _, ext := range crl.RevokedCertificateEntries[1].Extensions {
		if ext.Id.Equal([]int{2, 5, 29, 21}) {
			t.Error("an unspecified reason was written as a reasonCode extension")
		}
	}

	empty, err := a.CRL(nil, big.NewInt(43), testNow, testNow.AddDate(0, 0, 7))
	if err != nil {
		t.Fatalf("empty CRL: %v", err)
	}
	if crl, err := x509.ParseRevocationList(empty); err != nil || len(crl.RevokedCertificateEntries) != 0 {
		t.Errorf("empty CRL: %v, %d entries", err, len(crl.RevokedCertificateEntries))
	}
}

func TestCRLRejects(t *testing.T) {
	a := fastCA(t)
	next := testNow.AddDate(0, 0, 7)
	ok := Revoked{Serial: big.NewInt(1), At: testNow}
	for _, c := range []struct {
		name    string
		entries []Revoked
		number  *big.Int
		next    time.Time
		err     error
	}{
		{name: "certificateHold", entries: []Revoked{{Serial: big.NewInt(1), At: testNow, Reason: ReasonCertificateHold}}, number: big.NewInt(1), next: next, err: ErrBadReason},
		{name: "nil serial", entries: []Revoked{{At: testNow}}, number: big.NewInt(1), next: next},
		{name: "zero serial", entries: []Revoked{{Serial: big.NewInt(0), At: testNow}}, number: big.NewInt(1), next: next},
		{name: "revoked after thisUpdate", entries: []Revoked{{Serial: big.NewInt(1), At: testNow.Add(time.Second)}}, number: big.NewInt(1), next: next},
		{name: "nil number", entries: []Revoked{ok}, next: next},
		{name: "negative number", entries: []Revoked{ok}, number: big.NewInt(-1), next: next},
		{name: "number over 20 octets", entries: []Revoked{ok}, number: new(big.Int).Lsh(big.NewInt(1), 160), next: next},
		{name: "nextUpdate not after thisUpdate", entries: []Revoked{ok}, number: big.NewInt(1), next: testNow},
	} {
		_, err := a.CRL(c.entries, c.number, testNow, c.next)
		if err == nil || c.err != nil && !errors.Is(err, c.err) {
			t.Errorf("%s: got %v, want an error (%v)", c.name, err, c.err)
		}
	}
}

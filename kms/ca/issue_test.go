package ca

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/kmsmail/kms/policy"
)

var oidSAN = asn1.ObjectIdentifier{2, 5, 29, 17}

func TestIssueProfile(t *testing.T) {
	a := fastCA(t)
	roots := x509.NewCertPool()
	roots.AddCert(a.Root())
	inter := x509.NewCertPool()
	inter.AddCert(a.Issuer())
	for kt, key := range subscriberKeys(t) {
		c, err := x509.ParseCertificate(issue(t, a, "alice@example.com", key.Public()))
		if err != nil {
			t.Fatal(err)
		}
		wantKU := x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
		if kt == policy.P256 || kt == policy.P384 {
			wantKU = x509.KeyUsageDigitalSignature | x509.KeyUsageKeyAgreement
		}
		checks := []struct {
			what string
			ok   bool
		}{
			{"key usage", c.KeyUsage == wantKU},
			{"EKU emailProtection only", len(c.ExtKeyUsage) == 1 && c.ExtKeyUsage[0] == x509.ExtKeyUsageEmailProtection && len(c.UnknownExtKeyUsage) == 0},
			{"SAN rfc822Name only", len(c.EmailAddresses) == 1 && c.EmailAddresses[0] == "alice@example.com" && len(c.DNSNames)+len(c.IPAddresses)+len(c.URIs) == 0},
			{"subject CN only", c.Subject.String() == "CN=alice@example.com"},
			{"not a CA", c.BasicConstraintsValid && !c.IsCA},
			{"strict mailbox policy", len(c.Policies) == 1 && c.Policies[0].Equal(OIDMailboxValidatedStrict)},
			{"CRL DP", len(c.CRLDistributionPoints) == 1 && c.CRLDistributionPoints[0] == localBase+"/crl"},
			{"no AIA without a public URL", len(c.IssuingCertificateURL) == 0 && len(c.OCSPServer) == 0},
			{"AKI", string(c.AuthorityKeyId) == string(a.Issuer().SubjectKeyId)},
			{"SKI", len(c.SubjectKeyId) == 20},
			{"validity", c.NotBefore.Equal(testNow) && c.NotAfter.Equal(testNow.AddDate(1, 0, 0))},
		}
		for _, ch := range checks {
			if !ch.ok {
				t.Errorf("%s: %s wrong", kt, ch.what)
			}
		}
		for _, ext := range c.Extensions {
			if ext.Id.Equal(oidSAN) && ext.Critical {
				t.Errorf("%s: SAN is critical although the subject is not empty", kt)
			}
		}
		if _, err := c.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: testNow.Add(time.Hour),
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}}); err != nil {
			t.Errorf("%s: does not verify for email protection: %v", kt, err)
		}
	}
}

// TestIssueLongAddress: an address too long for commonName leaves the
// subject empty and the SAN critical (RFC 5280 4.2.1.6).
func TestIssueLongAddress(t *testing.T) {
	email := strings.Repeat("b", 60) + "@example.com"
	c, err := x509.ParseCertificate(issue(t, fastCA(t), email, subscriberKeys(t)[policy.P256].Public()))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Subject.Names) != 0 || c.EmailAddresses[0] != email {
		t.Errorf("subject %q, SAN %v; want an empty subject and the address in the SAN", c.Subject, c.EmailAddresses)
	}
	critical := false
	for _, ext := range c.Extensions {
		critical = critical || ext.Id.Equal(oidSAN) && ext.Critical
	}
	if !critical {
		t.Error("SAN is not critical although the subject is empty")
	}
}

func TestSerials(t *testing.T) {
	a := fastCA(t)
	pub := subscriberKeys(t)[policy.P256].Public()
	seen := map[string]bool{}
	longest := 0
	for i := 0; i < 64; i++ {
		c, err := x509.ParseCertificate(issue(t, a, "alice@example.com", pub))
		if err != nil {
			t.Fatal(err)
		}
		s := c.SerialNumber
		if s.Sign() <= 0 || s.BitLen() > 128 {
			t.Errorf("serial %x: want positive, at most 128 bits", s)
		}
		if seen[s.String()] {
			t.Errorf("serial %x issued twice", s)
		}
		seen[s.String()] = true
		longest = max(longest, s.BitLen())
	}
	// 64 draws of 128 random bits all below 2^120 would happen with
	// probability 2^-512: a short longest serial means fewer random bits.
	if longest < 120 {
		t.Errorf("longest of 64 serials has %d bits; serials are not 128 random bits", longest)
	}
}

func TestIssueValidity(t *testing.T) {
	a := fastCA(t)
	pub := subscriberKeys(t)[policy.P256].Public()
	inNA, inNB := a.Issuer().NotAfter, a.Issuer().NotBefore
	for _, c := range []struct {
		name           string
		nb, na         time.Time
		wantNB, wantNA time.Time
		err            error
	}{
		{name: "inside", nb: testNow, na: testNow.AddDate(0, 18, 0), wantNB: testNow, wantNA: testNow.AddDate(0, 18, 0)},
		{name: "clamped to issuer notAfter", nb: inNA.AddDate(0, -6, 0), na: inNA.AddDate(0, 12, 0), wantNB: inNA.AddDate(0, -6, 0), wantNA: inNA},
		{name: "clamped to issuer notBefore", nb: inNB.Add(-time.Hour), na: inNB.AddDate(1, 0, 0), wantNB: inNB, wantNA: inNB.AddDate(1, 0, 0)},
		{name: "after issuer expiry", nb: inNA.Add(time.Hour), na: inNA.AddDate(1, 0, 0), err: ErrIssuerExpired},
		{name: "825 days", nb: testNow, na: testNow.Add(MaxValidity - time.Second), wantNB: testNow, wantNA: testNow.Add(MaxValidity - time.Second)},
		{name: "826 days", nb: testNow, na: testNow.Add(MaxValidity), err: ErrInvalidRequest},
		{name: "reversed", nb: testNow, na: testNow.Add(-time.Hour), err: ErrInvalidRequest},
		{name: "empty", nb: testNow, na: testNow, err: ErrInvalidRequest},
	} {
		cert, err := a.Issue(Request{Email: "alice@example.com", PublicKey: pub, NotBefore: c.nb, NotAfter: c.na})
		if c.err != nil {
			if !errors.Is(err, c.err) {
				t.Errorf("%s: got %v, want %v", c.name, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if !cert.NotBefore.Equal(c.wantNB) || !cert.NotAfter.Equal(c.wantNA) {
			t.Errorf("%s: valid %s to %s, want %s to %s", c.name, cert.NotBefore, cert.NotAfter, c.wantNB, c.wantNA)
		}
	}
}

func TestIssueRejects(t *testing.T) {
	a := fastCA(t)
	good := subscriberKeys(t)[policy.P256].Public()
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	n2048 := subscriberKeys(t)[policy.RSA2048].Public().(*rsa.PublicKey).N
	n1024 := new(big.Int).Rsh(n2048, 1024)
	for _, c := range []struct {
		name  string
		email string
		pub   any
		err   error
	}{
		{"empty address", "", good, ErrInvalidRequest},
		{"display name", "Alice <alice@example.com>", good, ErrInvalidRequest},
		{"no domain", "alice", good, ErrInvalidRequest},
		{"space", "alice @example.com", good, ErrInvalidRequest},
		{"non-ASCII", "alíce@example.com", good, ErrInvalidRequest},
		{"two addresses", "a@example.com,b@example.com", good, ErrInvalidRequest},
		{"RSA-1024", "alice@example.com", &rsa.PublicKey{N: n1024, E: 65537}, ErrUnsupportedKey},
		{"RSA even exponent", "alice@example.com", &rsa.PublicKey{N: n2048, E: 65536}, ErrUnsupportedKey},
		{"P-521", "alice@example.com", &p521.PublicKey, ErrUnsupportedKey},
		{"Ed25519", "alice@example.com", edPub, ErrUnsupportedKey},
		{"no key", "alice@example.com", nil, ErrUnsupportedKey},
	} {
		_, err := a.Issue(Request{Email: c.email, PublicKey: c.pub, NotBefore: testNow, NotAfter: testNow.AddDate(1, 0, 0)})
		if !errors.Is(err, c.err) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.err)
		}
	}
}

func TestKeyTypeOf(t *testing.T) {
	for kt, key := range subscriberKeys(t) {
		if got, err := KeyTypeOf(key.Public()); got != kt || err != nil {
			t.Errorf("KeyTypeOf(%s key) = %q, %v", kt, got, err)
		}
	}
}

package ca

import (
	"crypto/x509"
	"math/big"
	"sort"
	"strings"
	"testing"

	"github.com/kmsmail/kms/policy"
	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"
)

// registry returns the zlint lints from the given sources.
func registry(t *testing.T, sources ...lint.LintSource) lint.Registry {
	t.Helper()
	r, err := lint.GlobalRegistry().Filter(lint.FilterOptions{IncludeSources: sources})
	if err != nil {
		t.Fatalf("zlint registry: %v", err)
	}
	if len(r.Names()) == 0 {
		t.Fatalf("zlint registry for %v is empty", sources)
	}
	return r
}

// problems lists the lints that ended in Warn, Error or Fatal, and how many
// lints applied at all, so that a test can tell "clean" from "nothing ran".
func problems(rs *zlint.ResultSet) (bad []string, applied int) {
	for name, r := range rs.Results {
		switch r.Status {
		case lint.Warn, lint.Error, lint.Fatal:
			bad = append(bad, name+" ("+r.Status.String()+": "+r.Details+")")
		}
		if r.Status != lint.NA && r.Status != lint.NE {
			applied++
		}
	}
	sort.Strings(bad)
	return bad, applied
}

func lintCert(t *testing.T, r lint.Registry, der []byte, what string) int {
	t.Helper()
	c, err := zx509.ParseCertificate(der)
	if err != nil {
		t.Fatalf("%s: zcrypto cannot parse: %v", what, err)
	}
	bad, applied := problems(zlint.LintCertificateEx(c, r))
	if len(bad) > 0 {
		t.Errorf("%s: zlint found:\n  %s", what, strings.Join(bad, "\n  "))
	}
	return applied
}

// TestZlintSubscriber lints users' certificates with every S/MIME BR and
// RFC 5280 lint: each subscriber key type, RSA and ECDSA issuing CAs, a
// loopback and a public (https) base URL.
func TestZlintSubscriber(t *testing.T) {
	r := registry(t, lint.CABFSMIMEBaselineRequirements, lint.RFC5280)
	keys := subscriberKeys(t)
	for _, issuer := range []policy.KeyType{policy.RSA2048, policy.P256} {
		for _, base := range []string{localBase, publicBase} {
			a := sharedCA(t, policy.P256, issuer, base)
			t.Run(string(issuer)+"/"+base, func(t *testing.T) {
				for _, kt := range policy.AllKeyTypes {
					applied := lintCert(t, r, issue(t, a, "alice@example.com", keys[kt].Public()), "subscriber "+string(kt))
					// A profile the S/MIME lints did not recognise would pass
					// vacuously; dozens of them apply to a strict certificate.
					if applied < 30 {
						t.Errorf("subscriber %s: only %d lints applied; is the certificate recognised as S/MIME strict?", kt, applied)
					}
				}
				kms, _ := a.KMS()
				lintCert(t, r, kms.Raw, "KMS certificate")
				long := strings.Repeat("a", 60) + "@example.com"
				lintCert(t, r, issue(t, a, long, keys[policy.P256].Public()), "subscriber with a 72-character address")
			})
		}
	}
}

// TestZlintPublicAIA checks the caIssuers URL that a public URL adds.
func TestZlintPublicAIA(t *testing.T) {
	a := sharedCA(t, policy.P256, policy.P256, publicBase)
	c, err := x509.ParseCertificate(issue(t, a, "alice@example.com", subscriberKeys(t)[policy.P256].Public()))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.IssuingCertificateURL) != 1 || c.IssuingCertificateURL[0] != "http://pki.example.com/issuer.cer" {
		t.Fatalf("AIA = %v, want the public URL over http", c.IssuingCertificateURL)
	}
}

// TestZlintCA lints the CA certificates with the RFC 5280 and S/MIME BR
// lints, for the default key types (RSA-4096 root, RSA-2048 issuing CA) and
// an ECDSA issuing CA.
func TestZlintCA(t *testing.T) {
	r := registry(t, lint.RFC5280, lint.CABFSMIMEBaselineRequirements)
	for _, a := range []*Authority{
		sharedCA(t, policy.RSA4096, policy.RSA2048, localBase),
		sharedCA(t, policy.P256, policy.P256, localBase),
	} {
		lintCert(t, r, a.Root().Raw, "root "+a.Root().Subject.CommonName)
		lintCert(t, r, a.Issuer().Raw, "issuer "+a.Issuer().Subject.CommonName)
	}
}

// TestZlintCRL lints a CRL with the RFC 5280 CRL lints and the TLS Baseline
// Requirements' ones, which carry the same reason-code rules as the S/MIME
// BRs.
func TestZlintCRL(t *testing.T) {
	r := registry(t, lint.RFC5280, lint.CABFBaselineRequirements, lint.Community)
	for _, a := range []*Authority{fastCA(t), sharedCA(t, policy.P256, policy.P256, localBase)} {
		entries := []Revoked{
			{Serial: big.NewInt(0x1234), At: testNow.Add(-3600e9), Reason: ReasonKeyCompromise},
			{Serial: big.NewInt(0x5678), At: testNow.Add(-7200e9), Reason: ReasonUnspecified},
			{Serial: big.NewInt(0x9abc), At: testNow.Add(-7200e9), Reason: ReasonSuperseded},
		}
		der, err := a.CRL(entries, big.NewInt(7), testNow, testNow.AddDate(0, 0, 7))
		if err != nil {
			t.Fatal(err)
		}
		crl, err := zx509.ParseRevocationList(der)
		if err != nil {
			t.Fatalf("zcrypto cannot parse the CRL: %v", err)
		}
		bad, applied := problems(zlint.LintRevocationListEx(crl, r))
		if len(bad) > 0 {
			t.Errorf("CRL: zlint found:\n  %s", strings.Join(bad, "\n  "))
		}
		if applied == 0 {
			t.Errorf("CRL: no lint applied")
		}
	}
}

package kms

import (
	"errors"
	"testing"
)

// TestRenewWithStaleSigner: a renewal given the signer's row as
// CertForSigner read it (Request.Signer) still fails when the certificate
// was revoked, or its owner disabled, after that read; and a Signer for
// another certificate is not used in place of the one renewed.
func TestRenewWithStaleSigner(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		alice := e.activeUser("alice@example.com")
		signer, err := e.svc.CertForSigner(e.ctx, alice.DER)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.svc.Revoke(e.ctx, alice.Serial, 1, "test"); err != nil {
			t.Fatal(err)
		}
		before := e.count(`SELECT COUNT(*) FROM certificates`)
		if c, err := e.svc.Renew(e.ctx, alice.Serial, Request{Actor: "test", SignatureDigest: []byte("a"), Signer: signer}); err == nil {
			t.Fatalf("renewal with a signer revoked after the read issued %s", c.Serial)
		}

		bob := e.activeUser("bob@example.com")
		signer, err = e.svc.CertForSigner(e.ctx, bob.DER)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.svc.Disable(e.ctx, "bob@example.com", 0, "test"); err != nil {
			t.Fatal(err)
		}
		if c, err := e.svc.Renew(e.ctx, bob.Serial, Request{Actor: "test", SignatureDigest: []byte("b"), Signer: signer}); err == nil {
			t.Fatalf("renewal for a user disabled after the read issued %s", c.Serial)
		}
		if n := e.count(`SELECT COUNT(*) FROM certificates`); n != before+1 { // bob's enrollment only
			t.Fatalf("%d certificates, want %d: a refused renewal left one behind", n, before+1)
		}

		carol := e.activeUser("carol@example.com")
		dave := e.activeUser("dave@example.com")
		signer, err = e.svc.CertForSigner(e.ctx, dave.DER)
		if err != nil {
			t.Fatal(err)
		}
		c, err := e.svc.Renew(e.ctx, carol.Serial, Request{Actor: "test", SignatureDigest: []byte("c"), Signer: signer})
		if err != nil {
			t.Fatal(err)
		}
		if c.Email != "carol@example.com" {
			t.Fatalf("renewing carol's certificate with dave's as Signer issued for %s", c.Email)
		}
		// The replay of a used signature is still named a replay.
		_, err = e.svc.Renew(e.ctx, carol.Serial, Request{Actor: "test", SignatureDigest: []byte("c")})
		if !errors.Is(err, ErrReplay) {
			t.Fatalf("replay after the certificate was superseded: %v, want ErrReplay", err)
		}
	})
}

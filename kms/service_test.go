package kms

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"math/big"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kmsmail/kms/enroll"
	"github.com/kmsmail/kms/policy"
)

func TestEnrollIssueRenewRekey(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		en, err := e.svc.Enroll(e.ctx, "Alice@Example.com", "Alice", "admin")
		if err != nil {
			t.Fatal(err)
		}
		if en.Email != "alice@example.com" || !en.Expires.Equal(t0.Add(14*24*time.Hour)) {
			t.Fatalf("enrollment = %+v", en)
		}
		u, err := e.svc.GetUser(e.ctx, "alice@example.com")
		if err != nil || u.State != UserInvited || u.CodeExpires == nil {
			t.Fatalf("after enroll: %+v, %v", u, err)
		}
		key := newKey(t)
		c1, err := e.svc.EnrollByCode(e.ctx, "alice@example.com", en.Code, key.Public(), Request{Actor: "mail", MessageID: "<m1@x>"})
		if err != nil {
			t.Fatal(err)
		}
		if c1.State != CertCurrent || !c1.NotAfter.Equal(policy.Months(18).AddTo(t0)) {
			t.Fatalf("first certificate = %+v", c1)
		}
		if want := policy.Months(12).AddTo(t0); c1.NextReminderAt == nil || !c1.NextReminderAt.Equal(want) {
			t.Fatalf("first reminder at %v, want %v", c1.NextReminderAt, want)
		}
		parsed, err := x509.ParseCertificate(c1.DER)
		if err != nil || parsed.EmailAddresses[0] != "alice@example.com" {
			t.Fatalf("issued certificate: %v %v", parsed, err)
		}
		// The code is single use.
		if _, err := e.svc.EnrollByCode(e.ctx, "alice@example.com", en.Code, key.Public(), Request{}); !errors.Is(err, ErrNoCode) {
			t.Fatalf("second use of the code: %v, want ErrNoCode", err)
		}

		e.clock.Advance(13 * 30 * 24 * time.Hour)
		c2, err := e.svc.Renew(e.ctx, c1.Serial, Request{Actor: "mail", MessageID: "<m2@x>", SignatureDigest: []byte("sig-2")})
		if err != nil {
			t.Fatal(err)
		}
		old, _ := e.svc.GetCert(e.ctx, c1.Serial)
		if old.State != CertSuperseded || old.SupersededBy != c2.Serial || old.NextReminderAt != nil {
			t.Fatalf("old certificate after renewal = %+v", old)
		}
		if !c2.KeySince.Equal(t0) {
			t.Fatalf("same-key renewal must keep key_since %v, got %v", t0, c2.KeySince)
		}
		// Replay of the same signed request.
		if _, err := e.svc.Renew(e.ctx, c2.Serial, Request{SignatureDigest: []byte("sig-2")}); !errors.Is(err, ErrReplay) {
			t.Fatalf("replayed signature: %v, want ErrReplay", err)
		}
		// Renewing with the superseded certificate is refused.
		if _, err := e.svc.Renew(e.ctx, c1.Serial, Request{}); !errors.Is(err, ErrCertState) {
			t.Fatalf("renew with superseded certificate: %v, want ErrCertState", err)
		}
		newK := newKey(t)
		c3, err := e.svc.Rekey(e.ctx, c2.Serial, newK.Public(), Request{Actor: "mail"})
		if err != nil {
			t.Fatal(err)
		}
		if !c3.KeySince.Equal(e.clock.Now()) {
			t.Fatalf("rekey must restart key_since, got %v", c3.KeySince)
		}
		got := e.outbox()
		if len(got[MailCertificate]) != 3 || len(got[MailInvitation]) != 1 {
			t.Fatalf("outbox = %v, want 3 certificate replies and 1 invitation", got)
		}
		if n := e.count(`SELECT COUNT(*) FROM audit WHERE action LIKE 'issue:%'`); n != 3 {
			t.Fatalf("audit has %d issue records, want 3", n)
		}
	})
}

func TestEnrollRefusals(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		e.activeUser("bob@example.com")
		before := e.count(`SELECT COUNT(*) FROM users`)
		cases := []struct {
			addr string
			want error
		}{
			{"not an address", ErrInvalidAddress},
			{"Bob <bob@example.com>", ErrInvalidAddress},
			{"", ErrInvalidAddress},
			{"carol@other.org", ErrDomain},
			{"bob@example.com", ErrAlreadyActive},
			{"BOB@EXAMPLE.COM", ErrAlreadyActive},
		}
		for _, c := range cases {
			if _, err := e.svc.Enroll(e.ctx, c.addr, "", "admin"); !errors.Is(err, c.want) {
				t.Errorf("Enroll(%q) = %v, want %v", c.addr, err, c.want)
			}
		}
		if after := e.count(`SELECT COUNT(*) FROM users`); after != before {
			t.Fatalf("refused enrollments changed users: %d -> %d", before, after)
		}
		if n := e.count(`SELECT COUNT(*) FROM audit WHERE action = 'refuse:enroll'`); n != len(cases) {
			t.Fatalf("audit has %d refusals, want %d", n, len(cases))
		}
	})
}

func TestEnrollmentCodeRules(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		key := newKey(t).Public()
		en, err := e.svc.Enroll(e.ctx, "carol@example.com", "", "admin")
		if err != nil {
			t.Fatal(err)
		}
		wrong := "AAAAA-AAAAA-AAAAA-AAAAA-AAAAA-AA"
		for i := 0; i < 5; i++ {
			if _, err := e.svc.EnrollByCode(e.ctx, "carol@example.com", wrong, key, Request{}); err == nil {
				t.Fatal("wrong code accepted")
			}
		}
		// Five wrong tries lock the code: the right one no longer works.
		if _, err := e.svc.EnrollByCode(e.ctx, "carol@example.com", en.Code, key, Request{}); !errors.Is(err, enroll.ErrCodeLocked) {
			t.Fatalf("right code after lockout: %v, want ErrCodeLocked", err)
		}
		// Re-enrolling issues a fresh code; the old one is cancelled.
		en2, err := e.svc.Enroll(e.ctx, "carol@example.com", "", "admin")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.svc.EnrollByCode(e.ctx, "carol@example.com", en.Code, key, Request{}); err == nil {
			t.Fatal("cancelled code accepted")
		}
		// An expired code fails even when right.
		e.clock.Advance(15 * 24 * time.Hour)
		if _, err := e.svc.EnrollByCode(e.ctx, "carol@example.com", en2.Code, key, Request{}); !errors.Is(err, enroll.ErrCodeExpired) {
			t.Fatalf("expired code: %v, want ErrCodeExpired", err)
		}
		if n := e.count(`SELECT COUNT(*) FROM certificates`); n != 0 {
			t.Fatalf("%d certificates issued by refused requests", n)
		}
		// A weak key is refused and the code stays usable.
		en3, _ := e.svc.Enroll(e.ctx, "carol@example.com", "", "admin")
		weak, err := rsa.GenerateKey(rand.Reader, 1024)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.svc.EnrollByCode(e.ctx, "carol@example.com", en3.Code, weak.Public(), Request{}); err == nil {
			t.Fatal("RSA-1024 key accepted")
		}
		if _, err := e.svc.EnrollByCode(e.ctx, "carol@example.com", en3.Code, key, Request{}); err != nil {
			t.Fatalf("code after a refused weak key: %v", err)
		}
	})
}

func TestRenewalRules(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		c := e.activeUser("dave@example.com")
		// Same-key renewal becomes impossible once the key is 36 months old:
		// walk it there through renewals every 17 months.
		e.clock.Advance(17 * 30 * 24 * time.Hour)
		c2, err := e.svc.Renew(e.ctx, c.Serial, Request{})
		if err != nil {
			t.Fatal(err)
		}
		e.clock.Advance(17 * 30 * 24 * time.Hour)
		c3, err := e.svc.Renew(e.ctx, c2.Serial, Request{})
		if err != nil {
			t.Fatal(err)
		}
		e.clock.Advance(3 * 30 * 24 * time.Hour)
		if _, err := e.svc.Renew(e.ctx, c3.Serial, Request{}); !errors.Is(err, ErrRekeyRequired) {
			t.Fatalf("same-key renewal of a 37-month-old key: %v, want ErrRekeyRequired", err)
		}
		c4, err := e.svc.Rekey(e.ctx, c3.Serial, newKey(t).Public(), Request{})
		if err != nil {
			t.Fatalf("rekey: %v", err)
		}
		// Expired: lapse, not renewal.
		e.clock.Set(c4.NotAfter.Add(time.Second))
		if _, err := e.svc.Renew(e.ctx, c4.Serial, Request{}); !errors.Is(err, ErrLapsed) {
			t.Fatalf("renew expired: %v, want ErrLapsed", err)
		}
		if _, err := e.svc.Renew(e.ctx, "00ff", Request{}); !errors.Is(err, ErrNotFound) {
			t.Fatalf("renew unknown serial: %v, want ErrNotFound", err)
		}
	})
}

func TestRevokeAndDisable(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		c := e.activeUser("erin@example.com")
		if _, err := e.svc.Revoke(e.ctx, "ABCDEF0123", 1, "admin"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("revoke unknown: %v", err)
		}
		if _, err := e.svc.Revoke(e.ctx, c.Serial, 6, "admin"); err == nil {
			t.Fatal("certificateHold accepted; the S/MIME BRs forbid it")
		}
		r, err := e.svc.Revoke(e.ctx, c.Serial, 1, "admin")
		if err != nil {
			t.Fatal(err)
		}
		if r.State != CertRevoked || r.RevocationReason != "keyCompromise" {
			t.Fatalf("revoked = %+v", r)
		}
		if _, err := e.svc.Revoke(e.ctx, c.Serial, 1, "admin"); !errors.Is(err, ErrCertState) {
			t.Fatalf("second revoke: %v", err)
		}
		u, _ := e.svc.GetUser(e.ctx, "erin@example.com")
		if u.State != UserLapsed {
			t.Fatalf("user after revoking the current certificate is %s, want lapsed", u.State)
		}
		if _, err := e.svc.Renew(e.ctx, c.Serial, Request{}); !errors.Is(err, ErrCertState) {
			t.Fatalf("renew with revoked certificate: %v", err)
		}
		der, err := e.svc.CRL(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		crl, err := x509.ParseRevocationList(der)
		if err != nil {
			t.Fatal(err)
		}
		want, _ := new(big.Int).SetString(c.Serial, 16)
		if len(crl.RevokedCertificateEntries) != 1 || crl.RevokedCertificateEntries[0].SerialNumber.Cmp(want) != 0 ||
			crl.RevokedCertificateEntries[0].ReasonCode != 1 {
			t.Fatalf("CRL entries = %+v", crl.RevokedCertificateEntries)
		}
		if err := crl.CheckSignatureFrom(e.ca.Issuer()); err != nil {
			t.Fatalf("CRL signature: %v", err)
		}

		// Disable revokes what is still valid.
		f := e.activeUser("frank@example.com")
		if _, err := e.svc.Disable(e.ctx, "frank@example.com", -1, "admin"); err != nil {
			t.Fatal(err)
		}
		fc, _ := e.svc.GetCert(e.ctx, f.Serial)
		if fc.State != CertRevoked || fc.RevocationReason != "affiliationChanged" {
			t.Fatalf("disabled user's certificate = %+v", fc)
		}
		if _, err := e.svc.Disable(e.ctx, "frank@example.com", -1, "admin"); !errors.Is(err, ErrUserState) {
			t.Fatalf("disable twice: %v", err)
		}
		// Both can be re-enrolled by an administrator.
		for _, a := range []string{"erin@example.com", "frank@example.com"} {
			if _, err := e.svc.Enroll(e.ctx, a, "", "admin"); err != nil {
				t.Fatalf("re-enroll %s: %v", a, err)
			}
		}
		der2, err := e.svc.CRL(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		crl2, _ := x509.ParseRevocationList(der2)
		if crl2.Number.Cmp(crl.Number) <= 0 || len(crl2.RevokedCertificateEntries) != 2 {
			t.Fatalf("new CRL number %v (was %v), %d entries", crl2.Number, crl.Number, len(crl2.RevokedCertificateEntries))
		}
	})
}

func TestExpiryLapsesOnce(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		c := e.activeUser("gina@example.com")
		e.clock.Set(c.NotAfter.Add(-time.Second))
		if n, err := e.svc.ExpireDue(e.ctx); err != nil || n != 0 {
			t.Fatalf("before expiry: %d lapsed, %v", n, err)
		}
		e.clock.Set(c.NotAfter)
		for i := 0; i < 2; i++ {
			n, err := e.svc.ExpireDue(e.ctx)
			if err != nil {
				t.Fatal(err)
			}
			if want := 1 - i; n != want {
				t.Fatalf("pass %d lapsed %d users, want %d", i, n, want)
			}
		}
		got := e.outbox()
		if len(got[MailLapse]) != 1 || got[MailLapse][0] != "gina@example.com" ||
			len(got[MailLapseAdmin]) != 1 || got[MailLapseAdmin][0] != "postmaster@example.com" {
			t.Fatalf("lapse mail = %v", got)
		}
		u, _ := e.svc.GetUser(e.ctx, "gina@example.com")
		if u.State != UserLapsed || u.Certificates[0].State != CertExpired {
			t.Fatalf("after expiry: user %s, certificate %s", u.State, u.Certificates[0].State)
		}
		// Re-enrollment works as a first enrollment.
		en, err := e.svc.Enroll(e.ctx, "gina@example.com", "", "admin")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.svc.EnrollByCode(e.ctx, "gina@example.com", en.Code, newKey(t).Public(), Request{}); err != nil {
			t.Fatal(err)
		}
	})
}

func TestConcurrentRenewalsOneWins(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		c := e.activeUser("hal@example.com")
		const n = 8
		var (
			wg   sync.WaitGroup
			mu   sync.Mutex
			wins int
			errs []error
		)
		for i := 0; i < n; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := e.svc.Renew(e.ctx, c.Serial, Request{})
				mu.Lock()
				defer mu.Unlock()
				if err == nil {
					wins++
				} else {
					errs = append(errs, err)
				}
			}()
		}
		wg.Wait()
		if wins != 1 {
			t.Fatalf("%d concurrent renewals of one certificate succeeded, want exactly 1 (errors: %v)", wins, errs)
		}
		for _, err := range errs {
			if !errors.Is(err, ErrConflict) && !errors.Is(err, ErrCertState) {
				t.Errorf("loser's error %v is neither ErrConflict nor ErrCertState", err)
			}
		}
		if got := e.count(`SELECT COUNT(*) FROM certificates WHERE state = 'current'`); got != 1 {
			t.Fatalf("%d current certificates, want 1", got)
		}
	})
}

func TestImport(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		// A certificate from "another CA": here, the test CA issuing directly.
		cert, err := e.ca.Issue(caRequest("ivy@example.com", newKey(t).Public(), t0, t0.AddDate(1, 0, 0)))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.svc.Import(e.ctx, []byte("garbage"), "admin"); err == nil {
			t.Fatal("garbage imported")
		}
		c, err := e.svc.Import(e.ctx, cert.Raw, "admin")
		if err != nil {
			t.Fatal(err)
		}
		if !c.Imported || c.State != CertCurrent {
			t.Fatalf("imported = %+v", c)
		}
		if _, err := e.svc.Import(e.ctx, cert.Raw, "admin"); !errors.Is(err, ErrCertState) || errors.Is(err, ErrConflict) {
			t.Fatalf("second import: %v, want ErrCertState (already tracked)", err)
		}
		// Revoked, and so the user lapsed: importing it again is still refused.
		if _, err := e.svc.Revoke(e.ctx, c.Serial, 1, "admin"); err != nil {
			t.Fatal(err)
		}
		if _, err := e.svc.Import(e.ctx, cert.Raw, "admin"); !errors.Is(err, ErrCertState) {
			t.Fatalf("import of a revoked tracked certificate: %v, want ErrCertState", err)
		}
		other, _ := e.ca.Issue(caRequest("ivy@other.org", newKey(t).Public(), t0, t0.AddDate(1, 0, 0)))
		if _, err := e.svc.Import(e.ctx, other.Raw, "admin"); !errors.Is(err, ErrDomain) {
			t.Fatalf("import for a foreign domain: %v", err)
		}
		got, err := e.svc.CertForSigner(e.ctx, cert.Raw)
		if err != nil || got.Serial != c.Serial {
			t.Fatalf("CertForSigner = %+v, %v", got, err)
		}
	})
}

func TestAuditIsAppendOnly(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		e.activeUser("jo@example.com")
		if _, err := e.store.db.ExecContext(e.ctx, `UPDATE audit SET actor = 'mallory'`); err == nil {
			t.Fatal("audit rows could be updated")
		}
		if _, err := e.store.db.ExecContext(e.ctx, `DELETE FROM audit`); err == nil {
			t.Fatal("audit rows could be deleted")
		}
		recs, err := e.store.Audit(e.ctx, "jo@example.com", 10)
		if err != nil || len(recs) < 2 {
			t.Fatalf("audit for jo: %v, %v", recs, err)
		}
	})
}

func TestListingsAndExpiring(t *testing.T) {
	forEachStore(t, func(t *testing.T, e *env) {
		a := e.activeUser("kim@example.com")
		e.clock.Advance(30 * 24 * time.Hour)
		e.activeUser("lee@example.com")
		if _, err := e.svc.Enroll(e.ctx, "max@example.com", "", "admin"); err != nil {
			t.Fatal(err)
		}
		users, err := e.svc.ListUsers(e.ctx, "")
		if err != nil || len(users) != 3 {
			t.Fatalf("users = %v, %v", users, err)
		}
		invited, _ := e.svc.ListUsers(e.ctx, UserInvited)
		if len(invited) != 1 || invited[0].Email != "max@example.com" {
			t.Fatalf("invited = %v", invited)
		}
		// Move to 20 days before kim's expiry: only kim expires within 30 days.
		e.clock.Set(a.NotAfter.Add(-20 * 24 * time.Hour))
		exp, err := e.svc.ListCerts(e.ctx, CertFilter{ExpiringWithin: 30 * 24 * time.Hour})
		if err != nil || len(exp) != 1 || exp[0].Email != "kim@example.com" {
			t.Fatalf("expiring = %v, %v", exp, err)
		}
		if _, err := e.svc.GetCert(e.ctx, "zz"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("bad serial: %v", err)
		}
		spaced := ""
		for i, r := range a.Serial {
			if i > 0 && i%2 == 0 {
				spaced += ":"
			}
			spaced += string(r)
		}
		if c, err := e.svc.GetCert(e.ctx, spaced); err != nil || c.Serial != a.Serial {
			t.Fatalf("GetCert(%q) = %v, %v", spaced, c, err)
		}
	})
}

func TestStorePersistsAcrossReopen(t *testing.T) {
	path := t.TempDir() + "/kms.db"
	e := newEnv(t, func(t testing.TB) *Store {
		s, err := OpenStore(e0ctx, "sqlite", path)
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
	c := e.activeUser("ned@example.com")
	e.store.Close()
	s2, err := OpenStore(e0ctx, "sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	v, err := s2.SchemaVersion(e0ctx)
	if err != nil || v != 3 {
		t.Fatalf("schema version %d, %v", v, err)
	}
	e.svc.store = s2
	got, err := e.svc.GetCert(e0ctx, c.Serial)
	if err != nil || string(got.DER) != string(c.DER) {
		t.Fatalf("after reopen: %v, %v", got, err)
	}
}

// TestInvitationCarriesCodeOnlyByPolicy: the code goes out of band unless
// the domain's policy says to mail it (SPEC 4.4).
func TestInvitationCarriesCodeOnlyByPolicy(t *testing.T) {
	e := newEnv(t, openSQLiteStore)
	mailing := policy.Default()
	mailing.Enrollment.MailCode = true
	e.svc.policies = policy.Set{Default: policy.Default(), Domains: map[string]policy.Policy{"example.com": mailing}}
	e.svc.domains["example.org"] = true
	for addr, wantCode := range map[string]bool{"ann@example.com": true, "ben@example.org": false} {
		en, err := e.svc.Enroll(e.ctx, addr, "", "admin")
		if err != nil {
			t.Fatal(err)
		}
		var payload string
		if err := e.store.db.QueryRowContext(e.ctx, `SELECT payload FROM outbox WHERE kind = 'invitation' AND recipient = $1`, addr).Scan(&payload); err != nil {
			t.Fatal(err)
		}
		if got := strings.Contains(payload, en.Code); got != wantCode {
			t.Errorf("invitation to %s carries the code: %v, want %v (payload %s)", addr, got, wantCode, payload)
		}
	}
}

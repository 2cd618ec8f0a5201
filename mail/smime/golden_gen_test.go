package smime

import (
	"crypto/x509"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestGenerateGolden rebuilds testdata/smime: the test PKI and one sample
// message per tool and kind. It runs only with SMIME_REGEN=1 because its
// output is committed and the other tests read it back. Each sample's
// making is written to testdata/smime/README.md.
func TestGenerateGolden(t *testing.T) {
	if os.Getenv("SMIME_REGEN") == "" {
		t.Skip("set SMIME_REGEN=1 to regenerate testdata/smime (needs openssl, gpgsm, cmsutil)")
	}
	for _, tool := range []string{"openssl", "gpgsm", "cmsutil"} {
		needTool(t, tool)
	}
	if err := os.MkdirAll(pkiDir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := newTestPKI(t)
	writePEM(t, filepath.Join(pkiDir, "root.pem"), "CERTIFICATE", p.root.cert.Raw)
	writePEM(t, filepath.Join(pkiDir, "ca.pem"), "CERTIFICATE", p.ca.cert.Raw)
	writePEM(t, filepath.Join(pkiDir, "evil-root.pem"), "CERTIFICATE", p.evilRoot.cert.Raw)
	users := map[string]identity{
		"alice-rsa":          p.issue(t, "alice@example.com", "rsa", userOpts{}),
		"bob-ec":             p.issue(t, "bob@example.com", "ec", userOpts{}),
		"kms":                p.issue(t, "kms@example.com", "rsa", userOpts{}),
		"carol-expired":      p.issue(t, "carol@example.com", "rsa", userOpts{notBefore: time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC), notAfter: time.Date(2021, 1, 1, 0, 0, 0, 0, time.UTC)}),
		"mallory-unknown-ca": p.issue(t, "mallory@example.com", "rsa", userOpts{issuer: &p.evilRoot}),
	}
	for name, id := range users {
		writePEM(t, filepath.Join(pkiDir, name+".pem"), "CERTIFICATE", id.cert.Raw)
		der, err := x509.MarshalPKCS8PrivateKey(id.key)
		if err != nil {
			t.Fatal(err)
		}
		writePEM(t, filepath.Join(pkiDir, name+".key"), "PRIVATE KEY", der)
		chainFile := filepath.Join(pkiDir, name+"-chain.tmp")
		var chain []byte
		for _, c := range id.chain {
			chain = append(chain, pemCert(c)...)
		}
		writeFile(t, chainFile, chain)
		runTool(t, nil, nil, "openssl", "pkcs12", "-export", "-in", filepath.Join(pkiDir, name+".pem"),
			"-inkey", filepath.Join(pkiDir, name+".key"), "-certfile", chainFile, "-name", name,
			"-passout", "pass:test", "-out", filepath.Join(pkiDir, name+".p12"),
			// gpgsm 2.2 reads only the older PKCS#12 encryption.
			"-keypbe", "PBE-SHA1-3DES", "-certpbe", "PBE-SHA1-3DES", "-macalg", "sha1")
		os.Remove(chainFile)
		if err := os.Chmod(filepath.Join(pkiDir, name+".p12"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	g := loadGoldenPKI(t)
	gen := &generator{t: t, dir: t.TempDir(), g: g}
	gen.all()
	gen.replies()
	if err := os.WriteFile(filepath.Join(goldenDir, "README.md"), []byte(gen.readme()), 0o644); err != nil {
		t.Fatal(err)
	}
}

type generator struct {
	t     *testing.T
	dir   string
	g     *goldenPKI
	notes []string
}

func (gen *generator) pki(name string) string { return filepath.Join(pkiDir, name) }
func (gen *generator) tmp(name string) string { return filepath.Join(gen.dir, name) }

// save writes a golden sample and records how it was made.
func (gen *generator) save(name string, b []byte, how string) {
	if err := os.WriteFile(filepath.Join(goldenDir, name), b, 0o644); err != nil {
		gen.t.Fatal(err)
	}
	gen.notes = append(gen.notes, "- `"+name+"`: "+how)
}

func (gen *generator) all() {
	t := gen.t
	// The signed or encrypted entities (CRLF, as on the wire).
	crlf := func(s string) []byte { return []byte(strings.ReplaceAll(s, "\n", "\r\n")) }
	renew := writeFile(t, gen.tmp("renew.txt"), crlf("Content-Type: text/plain; charset=us-ascii\n\nPlease renew my certificate.\n"))

	// CSRs made by openssl req, with the enrollment code as challengePassword.
	cfg := writeFile(t, gen.tmp("req.cnf"), []byte("[req]\nprompt = no\ndistinguished_name = dn\nattributes = attrs\n"+
		"[dn]\nCN = Dave Example\nemailAddress = dave@example.com\n[attrs]\nchallengePassword = ENROLL-7Q2K-94XD-PL3M\n"))
	runTool(t, nil, nil, "openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", gen.tmp("dave.key"),
		"-config", cfg, "-out", gen.tmp("dave.csr"))
	runTool(t, nil, nil, "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", gen.tmp("bob2.key"), "-subj", "/CN=bob@example.com", "-out", gen.tmp("bob2.csr"), "-outform", "DER")
	davePEM, _ := os.ReadFile(gen.tmp("dave.csr"))
	if err := os.WriteFile(filepath.Join(goldenDir, "openssl-req-challenge.csr"), davePEM, 0o644); err != nil {
		t.Fatal(err)
	}
	gen.notes = append(gen.notes, "- `openssl-req-challenge.csr`: `openssl req -new -newkey rsa:2048 -nodes -config req.cnf` with `[attrs] challengePassword = ENROLL-7Q2K-94XD-PL3M` and subject CN=Dave Example, emailAddress=dave@example.com.")
	bob2DER, _ := os.ReadFile(gen.tmp("bob2.csr"))
	rekeyPEM := writeFile(t, gen.tmp("rekey-pem.txt"), crlf("Content-Type: text/plain; charset=us-ascii\n\nPlease certify this new key.\n\n"+string(davePEM)))
	rekeyP10 := writeFile(t, gen.tmp("rekey-p10.txt"), crlf("Content-Type: multipart/mixed; boundary=\"inner-b\"\n\n--inner-b\n"+
		"Content-Type: text/plain; charset=us-ascii\n\nNew key attached.\n--inner-b\n"+
		"Content-Type: application/pkcs10; name=req.p10\nContent-Transfer-Encoding: base64\nContent-Disposition: attachment; filename=req.p10\n\n"+
		wrap64(b64(bob2DER))+"--inner-b--\n"))
	davePEMBlock, _ := pemFirst(davePEM)
	enroll := writeFile(t, gen.tmp("enroll.txt"), crlf("Content-Type: multipart/mixed; boundary=\"enroll-b\"\n\n--enroll-b\n"+
		"Content-Type: text/plain; charset=us-ascii\n\nEnrollment request.\n--enroll-b\n"+
		"Content-Type: application/pkcs10; name=req.p10\nContent-Transfer-Encoding: base64\n\n"+
		wrap64(b64(davePEMBlock))+"--enroll-b--\n"))

	hdr := func(from, subject string) []string {
		return []string{"-from", from, "-to", "kms@example.com", "-subject", subject}
	}
	signer := func(name string) []string {
		return []string{"-signer", gen.pki(name + ".pem"), "-inkey", gen.pki(name + ".key"), "-certfile", gen.pki("ca.pem")}
	}
	osslSign := func(out, how string, args ...string) {
		gen.save(out, runTool(t, nil, nil, "openssl", args...), "`openssl "+strings.Join(relArgs(args), " ")+"`. "+how)
	}
	osslSign("openssl-smime-detached-rsa.eml", "Detached; openssl writes the headers and delimiters with LF and the signed part with the CRLF of its input.",
		cat([]string{"smime", "-sign", "-md", "sha256", "-in", renew}, signer("alice-rsa"), hdr("alice@example.com", "Renew"))...)
	osslSign("openssl-cms-detached-ec-crlf.eml", "Detached ECDSA, CRLF output.",
		cat([]string{"cms", "-sign", "-md", "sha256", "-crlfeol", "-in", renew}, signer("bob-ec"), hdr("bob@example.com", "Renew"))...)
	osslSign("openssl-smime-opaque-rsa.eml", "Opaque signed-data.",
		cat([]string{"smime", "-sign", "-nodetach", "-md", "sha256", "-in", renew}, signer("alice-rsa"), hdr("alice@example.com", "Renew"))...)
	osslSign("openssl-cms-opaque-stream-ec.eml", "Opaque, streamed: indefinite-length BER.",
		cat([]string{"cms", "-sign", "-nodetach", "-stream", "-md", "sha256", "-in", renew}, signer("bob-ec"), hdr("bob@example.com", "Renew"))...)
	osslSign("openssl-cms-pss-rsa.eml", "Detached RSA-PSS.",
		cat([]string{"cms", "-sign", "-md", "sha256", "-crlfeol", "-in", renew}, signer("alice-rsa"), []string{"-keyopt", "rsa_padding_mode:pss"}, hdr("alice@example.com", "Renew"))...)
	osslSign("openssl-cms-sha384-ec.eml", "Detached ECDSA with SHA-384.",
		cat([]string{"cms", "-sign", "-md", "sha384", "-crlfeol", "-in", renew}, signer("bob-ec"), hdr("bob@example.com", "Renew"))...)
	osslSign("openssl-cms-sha1-rsa.eml", "SHA-1 digest: must be refused (ErrWeakAlgorithm).",
		cat([]string{"cms", "-sign", "-md", "sha1", "-crlfeol", "-in", renew}, signer("alice-rsa"), hdr("alice@example.com", "Renew"))...)
	osslSign("openssl-rekey-pem-rsa.eml", "Signed by alice; a PEM CSR (with challengePassword) in the text/plain body.",
		cat([]string{"smime", "-sign", "-md", "sha256", "-crlfeol", "-in", rekeyPEM}, signer("alice-rsa"), hdr("alice@example.com", "New key"))...)
	osslSign("openssl-rekey-pkcs10-ec.eml", "Signed by bob; multipart/mixed with an application/pkcs10 part (EC P-256 CSR from `openssl req -newkey ec -outform DER`).",
		cat([]string{"cms", "-sign", "-md", "sha256", "-crlfeol", "-in", rekeyP10}, signer("bob-ec"), hdr("bob@example.com", "New key"))...)
	osslSign("openssl-expired-signer.eml", "Signed by carol, whose certificate expired in 2021: ErrSignerExpired at receipt.",
		cat([]string{"cms", "-sign", "-md", "sha256", "-crlfeol", "-in", renew}, signer("carol-expired"), hdr("carol@example.com", "Renew"))...)
	osslSign("openssl-unknown-ca.eml", "Signed by mallory, whose CA is not trusted: ErrUntrustedSigner.",
		cat([]string{"cms", "-sign", "-md", "sha256", "-crlfeol", "-in", renew, "-signer", gen.pki("mallory-unknown-ca.pem"), "-inkey", gen.pki("mallory-unknown-ca.key")}, hdr("mallory@example.com", "Renew"))...)
	osslSign("openssl-enroll-aes256cbc.eml", "Unsigned enrollment (application/pkcs10 with challengePassword) encrypted to kms.pem, AES-256-CBC.",
		cat([]string{"smime", "-encrypt", "-aes256", "-in", enroll}, hdr("dave@example.com", "Enroll"), []string{gen.pki("kms.pem")})...)
	osslSign("openssl-enroll-aes256gcm.eml", "As above with AES-256-GCM: AuthEnvelopedData (RFC 5083).",
		cat([]string{"cms", "-encrypt", "-aes-256-gcm", "-in", enroll}, hdr("dave@example.com", "Enroll"), []string{gen.pki("kms.pem")})...)
	signedInner := runTool(t, nil, nil, "openssl", cat([]string{"cms", "-sign", "-md", "sha256", "-crlfeol", "-in", rekeyP10}, signer("bob-ec"))...)
	signedFile := writeFile(t, gen.tmp("signed-inner.eml"), signedInner)
	osslSign("openssl-signed-then-encrypted.eml", "bob's signed rekey request (as openssl-rekey-pkcs10-ec.eml, without headers) encrypted to kms.pem with AES-256-CBC, as mail clients sign then encrypt.",
		cat([]string{"smime", "-encrypt", "-aes256", "-in", signedFile}, hdr("bob@example.com", "New key"), []string{gen.pki("kms.pem")})...)
	enrollBytes, _ := os.ReadFile(enroll)
	gen.save("plain-enroll.eml", append([]byte("From: Dave <dave@example.com>\r\nTo: kms@example.com\r\nSubject: Enroll\r\nMessage-ID: <enroll-1@example.com>\r\nMIME-Version: 1.0\r\n"), enrollBytes...),
		"Unsigned, unencrypted enrollment: headers written by hand around the enrollment entity.")

	// gpgsm writes a bare detached signature; wrap it as a mail client would.
	renewBytes, _ := os.ReadFile(renew)
	env := gpgsmHome(t, gen.g.root, []*x509.Certificate{gen.g.ca}, gen.pki("alice-rsa.p12"))
	sig := runTool(t, env, []byte("test\n"), "gpgsm", "--batch", "--pinentry-mode", "loopback", "--passphrase-fd", "0",
		"--include-certs", "-1", "-u", "alice@example.com", "--detach-sign", renew)
	gen.save("gpgsm-detached-rsa.eml", wrapDetached("From: alice@example.com\r\nTo: kms@example.com\r\nSubject: Renew\r\n", renewBytes, sig),
		"`gpgsm --import alice-rsa.p12` into a fresh GNUPGHOME trusting root.pem, then `gpgsm --detach-sign --include-certs -1 -u alice@example.com renew.txt`, wrapped in multipart/signed by the generator.")

	// NSS cmsutil.
	db := nssDB(t, gen.g.root, gen.pki("alice-rsa.p12"), gen.pki("bob-ec.p12"))
	sig = runTool(t, nil, nil, "cmsutil", "-S", "-T", "-G", "-H", "SHA256", "-N", "alice-rsa", "-d", db, "-i", renew)
	gen.save("nss-detached-rsa.eml", wrapDetached("From: alice@example.com\r\nTo: kms@example.com\r\nSubject: Renew\r\n", renewBytes, sig),
		"`cmsutil -S -T -G -H SHA256 -N alice-rsa -i renew.txt` (NSS db with alice-rsa.p12 imported by pk12util), wrapped in multipart/signed.")
	cms := runTool(t, nil, nil, "cmsutil", "-S", "-G", "-H", "SHA256", "-N", "bob-ec", "-d", db, "-i", renew)
	gen.save("nss-opaque-ec.eml", wrapOpaque("From: bob@example.com\r\nTo: kms@example.com\r\nSubject: Renew\r\n", "signed-data", cms),
		"`cmsutil -S -G -H SHA256 -N bob-ec -i renew.txt` (content included), wrapped as application/pkcs7-mime.")
}

// replies saves what Compose writes, for the engineers reading KMS mail
// and as fixtures; TestComposeInterop checks fresh ones with every tool.
func (gen *generator) replies() {
	g := gen.g
	m := Message{
		From:          mail.Address{Name: "Key Management Server", Address: "kms@example.com"},
		To:            []mail.Address{{Name: "Alice", Address: "alice@example.com"}},
		Subject:       "Your new S/MIME certificate",
		Date:          time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC),
		MessageID:     "reply-1@kms.example.com",
		InReplyTo:     []string{"req-1@mail.example.com"},
		References:    []string{"req-1@mail.example.com"},
		AutoSubmitted: "auto-replied",
		Text:          "Hello Alice,\n\nyour certificate was renewed; it is attached and valid until 1 January 2045.\n",
		Certs:         []*x509.Certificate{g.alice.cert, g.ca},
	}
	raw, err := Compose(m, g.kms.signer())
	if err != nil {
		gen.t.Fatal(err)
	}
	gen.save("kms-certificate-reply.eml", raw, "A certificate reply written by `Compose` (signed by kms, certs-only attachment with alice's certificate and the CA).")
	m.Certs, m.Subject, m.MessageID = nil, "Your S/MIME certificate expires soon", "reminder-1@kms.example.com"
	m.Text, m.AutoSubmitted, m.InReplyTo, m.References = "Reply to this message, digitally signed, to renew.\n", "auto-generated", nil, nil
	if raw, err = Compose(m, g.kms.signer()); err != nil {
		gen.t.Fatal(err)
	}
	gen.save("kms-reminder.eml", raw, "A text-only reminder written by `Compose`.")
}

func (gen *generator) readme() string {
	return "# S/MIME golden samples\n\n" +
		"Made by `SMIME_REGEN=1 go test -run TestGenerateGolden ./mail/smime/` (see mail/smime/golden_gen_test.go)\n" +
		"with OpenSSL 3, GnuPG gpgsm 2.2 and NSS cmsutil. The tests in mail/smime read them back; regenerating\n" +
		"replaces the PKI too, so commit the whole directory together.\n\n" +
		"`pki/`: a throwaway test PKI made with Go: root.pem -> ca.pem -> alice-rsa (RSA 2048), bob-ec (P-256),\n" +
		"kms (RSA, the KMS identity), carol-expired (valid 2020 to 2021); evil-root.pem -> mallory-unknown-ca.\n" +
		"Keys are PKCS#8 PEM; `.p12` files use the password `test`. Test keys only: never trust them.\n\n" +
		"The signed entity `renew.txt` is `Content-Type: text/plain` + `Please renew my certificate.` with CRLF.\n\n" +
		strings.Join(gen.notes, "\n") + "\n"
}

// relArgs shortens absolute paths in a command line for the README.
func relArgs(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		switch {
		case strings.Contains(a, string(filepath.Separator)+"pki"+string(filepath.Separator)):
			a = "pki/" + filepath.Base(a)
		case filepath.IsAbs(a):
			a = filepath.Base(a)
		}
		out[i] = a
	}
	return out
}

func cat(parts ...[]string) []string {
	var out []string
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

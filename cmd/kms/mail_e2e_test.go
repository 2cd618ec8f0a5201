package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/mail"
	"net/smtp"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// These tests drive the real daemon by mail with the OpenSSL command-line
// tools as the user's mail client: the request is made and signed by
// openssl, sent over SMTP on loopback, and the reply is read from the
// Maildir and verified by openssl.

func needOpenSSL(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed (CI installs it)")
	}
}

// sh runs a command and fails the test with its output on error.
func sh(t *testing.T, dir string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// sendMail submits msg to the daemon's SMTP listener.
func (d *daemonProc) sendMail(t *testing.T, from string, msg []byte) {
	t.Helper()
	if err := smtp.SendMail(d.smtpAddr, nil, from, []string{"kms@example.com"}, msg); err != nil {
		t.Fatalf("SMTP submission: %v", err)
	}
}

// maildirMessage is one message kms delivered.
type maildirMessage struct {
	path    string
	to      string
	subject string
	raw     []byte
}

// mailbox reads every message in the daemon's Maildir (new/ and cur/).
func (d *daemonProc) mailbox(t *testing.T) []maildirMessage {
	t.Helper()
	var out []maildirMessage
	for _, sub := range []string{"new", "cur"} {
		files, _ := filepath.Glob(filepath.Join(d.dataDir, "mail", sub, "*"))
		for _, f := range files {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			m, err := mail.ReadMessage(bytes.NewReader(raw))
			if err != nil {
				t.Fatalf("%s is not RFC 5322: %v", f, err)
			}
			out = append(out, maildirMessage{path: f, to: m.Header.Get("To"), subject: m.Header.Get("Subject"), raw: raw})
		}
	}
	return out
}

// waitMail waits until the Maildir holds n messages whose To contains to
// and whose Subject contains subject, and returns them.
func (d *daemonProc) waitMail(t *testing.T, to, subject string, n int, timeout time.Duration) []maildirMessage {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		var got []maildirMessage
		for _, m := range d.mailbox(t) {
			if strings.Contains(m.to, to) && strings.Contains(m.subject, subject) {
				got = append(got, m)
			}
		}
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			var all []string
			for _, m := range d.mailbox(t) {
				all = append(all, m.to+": "+m.subject)
			}
			t.Fatalf("waited %v for %d mail(s) to %s about %q; the Maildir has %q", timeout, n, to, subject, all)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// opensslUser is a user whose mail client is the openssl command line.
type opensslUser struct {
	t     *testing.T
	dir   string
	email string
	key   string // private key file
	cert  string // current certificate file, once issued
}

func newOpenSSLUser(t *testing.T, dir, email, keyAlg string) *opensslUser {
	u := &opensslUser{t: t, dir: dir, email: email, key: filepath.Join(dir, email+".key")}
	switch keyAlg {
	case "rsa":
		sh(t, dir, "openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", u.key)
	default:
		sh(t, dir, "openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", u.key)
	}
	return u
}

// csr makes a PEM certification request carrying code as challengePassword.
func (u *opensslUser) csr(code string) string {
	cnf := filepath.Join(u.dir, u.email+".cnf")
	os.WriteFile(cnf, []byte(fmt.Sprintf("[req]\ndistinguished_name=dn\nattributes=attr\nprompt=no\n[dn]\nCN=%s\n[attr]\nchallengePassword=%s\n", u.email, code)), 0o600)
	out := filepath.Join(u.dir, u.email+".csr")
	sh(u.t, u.dir, "openssl", "req", "-new", "-key", u.key, "-config", cnf, "-out", out)
	b, _ := os.ReadFile(out)
	return string(b)
}

// enrollmentMail is a plain message with the CSR pasted into the text.
func (u *opensslUser) enrollmentMail(code string) []byte {
	return []byte(fmt.Sprintf("From: %s\r\nTo: kms@example.com\r\nSubject: enrollment\r\nMessage-ID: <enroll-%d@example.com>\r\nDate: %s\r\n\r\nPlease certify my key.\r\n\r\n%s",
		u.email, time.Now().UnixNano(), time.Now().Format(time.RFC1123Z), strings.ReplaceAll(u.csr(code), "\n", "\r\n")))
}

// signedMail signs body with openssl smime (multipart/signed, as mail
// clients send it) with the user's current certificate.
func (u *opensslUser) signedMail(subject, body string) []byte {
	in := filepath.Join(u.dir, "body.txt")
	os.WriteFile(in, []byte(body), 0o600)
	out := filepath.Join(u.dir, "signed.eml")
	sh(u.t, u.dir, "openssl", "smime", "-sign", "-text", "-in", in, "-signer", u.cert, "-inkey", u.key,
		"-from", u.email, "-to", "kms@example.com", "-subject", subject, "-out", out)
	b, _ := os.ReadFile(out)
	// openssl writes no Message-ID; a mail client would. The outer header
	// is outside the signature.
	return append([]byte(fmt.Sprintf("Message-ID: <%s-%d@example.com>\r\n", strings.ReplaceAll(subject, " ", "-"), time.Now().UnixNano())), b...)
}

// takeCertificate verifies a certificate reply with openssl and keeps the
// certificate it carries as the user's current one.
func (u *opensslUser) takeCertificate(reply maildirMessage, chain string) string {
	t := u.t
	eml := filepath.Join(u.dir, "reply.eml")
	os.WriteFile(eml, reply.raw, 0o600)
	content := sh(t, u.dir, "openssl", "smime", "-verify", "-in", eml, "-CAfile", chain, "-purpose", "smimesign")
	if !strings.Contains(content, "smime.p7c") {
		t.Fatalf("certificate reply has no smime.p7c part:\n%s", content)
	}
	// The signature's certificate set carries the new certificate.
	signers := filepath.Join(u.dir, "certs.pem")
	sh(t, u.dir, "openssl", "smime", "-pk7out", "-in", eml, "-out", filepath.Join(u.dir, "sig.p7"))
	sh(t, u.dir, "openssl", "pkcs7", "-print_certs", "-in", filepath.Join(u.dir, "sig.p7"), "-out", signers)
	all, _ := os.ReadFile(signers)
	var mine string
	for _, block := range strings.SplitAfter(string(all), "-----END CERTIFICATE-----\n") {
		if strings.Contains(block, "subject=CN = "+u.email) || strings.Contains(block, "subject=CN="+u.email) {
			mine = block[strings.Index(block, "-----BEGIN"):]
		}
	}
	if mine == "" {
		t.Fatalf("no certificate for %s in the reply's signature:\n%s", u.email, all)
	}
	u.cert = filepath.Join(u.dir, u.email+".pem")
	os.WriteFile(u.cert, []byte(mine), 0o600)
	sh(t, u.dir, "openssl", "verify", "-CAfile", chain, "-purpose", "smimesign", u.cert)
	return mine
}

// TestMailLifecycleWithOpenSSL: enrollment by mail, renewal by a signed
// reply, a replayed renewal refused, everything kept across a restart.
func TestMailLifecycleWithOpenSSL(t *testing.T) {
	needOpenSSL(t)
	dir := t.TempDir()
	d := newDaemonConfig(t, dir, "")
	d.start()
	chain := filepath.Join(dir, "chain.pem")
	os.WriteFile(chain, fetch(t, "http://"+d.httpAddr+"/ca.pem"), 0o644)

	var en struct{ Code string }
	json.Unmarshal([]byte(d.cli("user", "enroll", "alice@example.com", "--json").want(t, 0).stdout), &en)
	alice := newOpenSSLUser(t, dir, "alice@example.com", "rsa")

	// A wrong code is refused with an explanation, and issues nothing.
	d.sendMail(t, alice.email, alice.enrollmentMail("WRONG-CODE-0000"))
	d.waitMail(t, "alice@example.com", "Not accepted", 1, 30*time.Second)

	d.sendMail(t, alice.email, alice.enrollmentMail(en.Code))
	reply := d.waitMail(t, "alice@example.com", "Your S/MIME certificate", 1, 30*time.Second)[0]
	first := alice.takeCertificate(reply, chain)

	renewal := alice.signedMail("renew please", "Please renew my certificate.\n")
	d.sendMail(t, alice.email, renewal)
	reply = d.waitMail(t, "alice@example.com", "Your renewed S/MIME certificate", 1, 30*time.Second)[0]
	second := alice.takeCertificate(reply, chain)
	if first == second {
		t.Fatal("renewal returned the same certificate")
	}
	if !bytes.Contains(reply.raw, []byte("In-Reply-To:")) || !bytes.Contains(reply.raw, []byte("Auto-Submitted: auto-replied")) {
		t.Fatal("the renewal reply lacks In-Reply-To or Auto-Submitted: auto-replied")
	}

	// The same signed request again, with a different outer header so that
	// it is not the same bytes: refused as a replay, without reply.
	replay := append([]byte("X-Resent: yes\r\n"), renewal...)
	d.sendMail(t, alice.email, replay)
	d.waitLog("replay", 30*time.Second)
	if n := len(d.waitMail(t, "alice@example.com", "renewed", 1, time.Second)); n != 1 {
		t.Fatalf("%d renewal replies after a replay, want 1", n)
	}

	// A stranger's mail gets no reply at all.
	before := len(d.mailbox(t))
	d.sendMail(t, "mallory@example.net", []byte("From: mallory@example.net\r\nTo: kms@example.com\r\nSubject: hello\r\n\r\nhi\r\n"))
	d.waitLog("unknown sender", 30*time.Second)

	if err := d.stop(syscall.SIGTERM); err != nil {
		t.Fatalf("graceful stop: %v", err)
	}
	if after := len(d.mailbox(t)); after != before {
		t.Fatalf("the stranger's mail was answered: %d -> %d messages", before, after)
	}
	d.start()
	var certs []map[string]any
	json.Unmarshal([]byte(d.cli("cert", "list", "--email", "alice@example.com", "--json").want(t, 0).stdout), &certs)
	if len(certs) != 2 {
		t.Fatalf("after restart alice has %d certificates, want 2", len(certs))
	}
}

func fetch(t *testing.T, url string) []byte {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: HTTP %d, %v", url, resp.StatusCode, err)
	}
	return b
}

// TestImportedCertificateRenews: a certificate from another CA, imported
// and trusted by ca.import_trust_file, renews by a signed message like one
// kms issued (SPEC 4.2); the renewed certificate is kms's own.
func TestImportedCertificateRenews(t *testing.T) {
	needOpenSSL(t)
	dir := t.TempDir()
	certFile, keyFile, caFile := writeForeignPKI(t, dir, "carol@example.com")
	d := newDaemonConfig(t, dir, "ca:\n  import_trust_file: "+caFile+"\n")
	d.start()
	chain := filepath.Join(dir, "chain.pem")
	os.WriteFile(chain, fetch(t, "http://"+d.httpAddr+"/ca.pem"), 0o644)
	d.cli("cert", "import", certFile).want(t, 0)
	carol := &opensslUser{t: t, dir: dir, email: "carol@example.com", key: keyFile, cert: certFile}
	d.sendMail(t, carol.email, carol.signedMail("renew", "Please renew.\n"))
	carol.takeCertificate(d.waitMail(t, carol.email, "renewed", 1, 30*time.Second)[0], chain)
	var certs []struct{ State string }
	json.Unmarshal([]byte(d.cli("cert", "list", "--email", carol.email, "--json").want(t, 0).stdout), &certs)
	if len(certs) != 2 {
		t.Fatalf("carol has %d certificates after renewing an imported one, want 2", len(certs))
	}
}

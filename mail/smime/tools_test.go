package smime

import (
	"bytes"
	"crypto/sha1"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// needTool skips the test when an interoperability tool is not installed.
// CI installs them: apt-get install -y openssl gpgsm libnss3-tools.
func needTool(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		t.Skipf("%s is not installed (apt-get install -y openssl gpgsm libnss3-tools); skipping this interoperability test", name)
	}
}

// runTool runs a command and returns its stdout, failing the test with its
// stderr when it exits non-zero.
func runTool(t testing.TB, env []string, stdin []byte, name string, args ...string) []byte {
	t.Helper()
	out, stderr, err := tryTool(env, stdin, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr)
	}
	return out
}

func tryTool(env []string, stdin []byte, name string, args ...string) (stdout, stderr []byte, err error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.Bytes(), e.Bytes(), err
}

func writeFile(t testing.TB, path string, b []byte) string {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// gpgsmHome makes a GNUPGHOME that trusts root and holds the PKCS#12
// identities given, and returns the environment to run gpgsm in it.
func gpgsmHome(t testing.TB, root *x509.Certificate, certs []*x509.Certificate, p12s ...string) []string {
	t.Helper()
	needTool(t, "gpgsm")
	home, err := os.MkdirTemp("", "gpgsm")
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"GNUPGHOME=" + home}
	t.Cleanup(func() {
		// Stop the agent gpgsm started for this home only.
		tryTool(env, nil, "gpgconf", "--kill", "gpg-agent")
		os.RemoveAll(home)
	})
	writeFile(t, filepath.Join(home, "gpgsm.conf"), []byte("disable-crl-checks\ndisable-dirmngr\n"))
	writeFile(t, filepath.Join(home, "gpg-agent.conf"), []byte("allow-loopback-pinentry\n"))
	fp := sha1.Sum(root.Raw)
	var hexfp []string
	for _, b := range fp {
		hexfp = append(hexfp, fmt.Sprintf("%02X", b))
	}
	writeFile(t, filepath.Join(home, "trustlist.txt"), []byte(strings.Join(hexfp, ":")+" S relax\n"))
	for _, c := range append([]*x509.Certificate{root}, certs...) {
		runTool(t, env, pemCert(c), "gpgsm", "--batch", "--import")
	}
	for _, p := range p12s {
		runTool(t, env, []byte("test\n"), "gpgsm", "--batch", "--pinentry-mode", "loopback", "--passphrase-fd", "0", "--import", p)
	}
	return env
}

// nssDB makes an NSS database that trusts root for email and holds the
// PKCS#12 identities given (nicknamed by the file name without .p12).
func nssDB(t testing.TB, root *x509.Certificate, p12s ...string) string {
	t.Helper()
	needTool(t, "cmsutil")
	needTool(t, "certutil")
	needTool(t, "pk12util")
	dir := t.TempDir()
	runTool(t, nil, nil, "certutil", "-N", "-d", dir, "--empty-password")
	rootFile := writeFile(t, filepath.Join(dir, "root.pem"), pemCert(root))
	runTool(t, nil, nil, "certutil", "-A", "-d", dir, "-n", "kms-test-root", "-t", "C,C,C", "-a", "-i", rootFile)
	for _, p := range p12s {
		runTool(t, nil, nil, "pk12util", "-i", p, "-d", dir, "-W", "test", "-K", "")
	}
	return dir
}

func pemCert(c *x509.Certificate) []byte {
	return []byte("-----BEGIN CERTIFICATE-----\n" + wrap64(base64.StdEncoding.EncodeToString(c.Raw)) + "-----END CERTIFICATE-----\n")
}

func wrap64(s string) string {
	var b strings.Builder
	for len(s) > 64 {
		b.WriteString(s[:64] + "\n")
		s = s[64:]
	}
	return b.String() + s + "\n"
}

// wrapDetached builds a multipart/signed message around an entity and a
// detached DER signature, as a mail client would, for tools (gpgsm,
// cmsutil) that write only the signature.
func wrapDetached(headers string, entity, sig []byte) []byte {
	var b bytes.Buffer
	b.WriteString(headers)
	b.WriteString("MIME-Version: 1.0\r\nContent-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; micalg=sha-256; boundary=\"----tool-boundary-42\"\r\n\r\n")
	b.WriteString("This is an S/MIME signed message\r\n\r\n------tool-boundary-42\r\n")
	b.Write(entity)
	b.WriteString("\r\n------tool-boundary-42\r\nContent-Type: application/pkcs7-signature; name=smime.p7s\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=smime.p7s\r\n\r\n")
	writeBase64(&b, sig)
	b.WriteString("------tool-boundary-42--\r\n")
	return b.Bytes()
}

// wrapOpaque builds an application/pkcs7-mime message around a CMS object.
func wrapOpaque(headers, smimeType string, cms []byte) []byte {
	var b bytes.Buffer
	b.WriteString(headers)
	b.WriteString("MIME-Version: 1.0\r\nContent-Type: application/pkcs7-mime; smime-type=" + smimeType + "; name=smime.p7m\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=smime.p7m\r\n\r\n")
	writeBase64(&b, cms)
	return b.Bytes()
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

// pemFirst returns the bytes of the first PEM block in b.
func pemFirst(b []byte) ([]byte, bool) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, false
	}
	return blk.Bytes, true
}

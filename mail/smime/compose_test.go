package smime

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"net/mail"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func testMessage(certs ...*x509.Certificate) Message {
	return Message{
		From:          mail.Address{Name: "Key Management Server", Address: "kms@example.com"},
		To:            []mail.Address{{Name: "Zoë Dupré", Address: "alice@example.com"}},
		Subject:       "Your new S/MIME certificate — valid until 1 September 2028",
		Date:          time.Now().UTC().Truncate(time.Second), // tools verify at the real now
		MessageID:     "reply-42@kms.example.com",
		InReplyTo:     []string{"req-1@mail.example.com"},
		References:    []string{"reminder-7@kms.example.com", "req-1@mail.example.com"},
		AutoSubmitted: "auto-replied",
		Text: "Hello,\n\nyour certificate was renewed. It is valid until 1 September 2028.\n" +
			"Trailing spaces stay:   \nNon-ASCII stays: café, naïve, 証明書.\n" +
			strings.Repeat("A very long line without breaks. ", 60) + "\n",
		Certs: certs,
	}
}

// composed is a message from Compose taken apart with this package's own
// parser, for feeding the pieces to other tools.
type composed struct {
	raw, signed, sig, p7c []byte
}

func composeAndSplit(t *testing.T, m Message, s Signer) composed {
	t.Helper()
	raw, err := Compose(m, s)
	if err != nil {
		t.Fatal(err)
	}
	checkWireForm(t, raw)
	r, err := ParseRequest(raw, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if r.Kind != KindSigned {
		t.Fatalf("Kind %v", r.Kind)
	}
	c := composed{raw: raw, signed: r.signed, sig: r.cms}
	if len(m.Certs) > 0 {
		inner, err := readEntity(r.signed, DefaultLimits())
		if err != nil {
			t.Fatal(err)
		}
		parts, err := splitMultipart(inner.body, inner.params["boundary"], 10)
		if err != nil || len(parts) != 2 {
			t.Fatalf("inner multipart: %d parts, %v", len(parts), err)
		}
		att, err := readEntity(parts[1], DefaultLimits())
		if err != nil {
			t.Fatal(err)
		}
		if att.mediaType != "application/pkcs7-mime" || att.params["smime-type"] != "certs-only" || att.params["name"] != "smime.p7c" {
			t.Fatalf("attachment is %s %v", att.mediaType, att.params)
		}
		if d := att.header.Get("Content-Disposition"); d != "attachment; filename=smime.p7c" {
			t.Errorf("Content-Disposition %q", d)
		}
		if c.p7c, err = att.decodedBody(); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// checkWireForm: CRLF only, 7-bit, lines under 998 octets.
func checkWireForm(t *testing.T, raw []byte) {
	t.Helper()
	if hasBareLF(raw) || bytes.Contains(bytes.ReplaceAll(raw, []byte("\r\n"), nil), []byte("\r")) {
		t.Error("line ends are not all CRLF")
	}
	for i, line := range bytes.Split(raw, []byte("\r\n")) {
		if len(line) >= 998 {
			t.Errorf("line %d is %d octets", i+1, len(line))
		}
		if !isASCII(line) {
			t.Errorf("line %d is not 7-bit: %q", i+1, line)
		}
	}
}

func TestComposeRoundTrip(t *testing.T) {
	g := loadGoldenPKI(t)
	m := testMessage(g.alice.cert, g.ca)
	c := composeAndSplit(t, m, g.kms.signer())
	r, err := ParseRequest(c.raw, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if r.From != "kms@example.com" || r.MessageID != m.MessageID || r.Subject != m.Subject ||
		r.AutoSubmitted != "auto-replied" || len(r.References) != 2 || r.InReplyTo[0] != "req-1@mail.example.com" {
		t.Errorf("headers read back: %+v", r)
	}
	opts := g.opts()
	opts.At = m.Date
	v, err := r.Verify(opts)
	if err != nil {
		t.Fatal(err)
	}
	if !v.Signature.Signer.Equal(g.kms.cert) || !v.Signature.SigningTime.Equal(m.Date) {
		t.Errorf("signer %s at %v", v.Signature.Signer.Subject, v.Signature.SigningTime)
	}
	// SPEC 4.3: the signature's certificate set carries the new certificate.
	found := false
	for _, cert := range v.Signature.Certificates {
		found = found || cert.Equal(g.alice.cert)
	}
	if !found {
		t.Error("the new certificate is not in the signature's certificate set")
	}
	certs, err := ParseCertsOnly(c.p7c)
	if err != nil || len(certs) != 2 || !certs[0].Equal(g.alice.cert) {
		t.Errorf("certs-only part: %d certificates, %v", len(certs), err)
	}
	// The text survives quoted-printable, trailing spaces included.
	inner, _ := readEntity(c.signed, DefaultLimits())
	parts, _ := splitMultipart(inner.body, inner.params["boundary"], 10)
	text, _ := readEntity(parts[0], DefaultLimits())
	body, err := text.decodedBody()
	if err != nil || !bytes.Equal(bytes.ReplaceAll(body, []byte("\r\n"), []byte("\n")), []byte(m.Text)) {
		t.Errorf("text read back differs: %v\n%q", err, body)
	}
}

func TestComposeRefuses(t *testing.T) {
	g := loadGoldenPKI(t)
	for name, mutate := range map[string]func(*Message){
		"no date":            func(m *Message) { m.Date = time.Time{} },
		"no message id":      func(m *Message) { m.MessageID = "" },
		"bracketed id":       func(m *Message) { m.MessageID = "<x@y>" },
		"no recipient":       func(m *Message) { m.To = nil },
		"header injection":   func(m *Message) { m.AutoSubmitted = "no\r\nBcc: evil@example.com" },
		"non-ASCII address":  func(m *Message) { m.To = []mail.Address{{Address: "zoë@example.com"}} },
		"id with line break": func(m *Message) { m.InReplyTo = []string{"a@b\r\nX: y"} },
	} {
		m := testMessage()
		mutate(&m)
		if _, err := Compose(m, g.kms.signer()); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	m := testMessage()
	m.Subject = "line\r\nBcc: evil@example.com"
	if raw, err := Compose(m, g.kms.signer()); err == nil && bytes.Contains(raw, []byte("\r\nBcc:")) {
		t.Error("a line break in the subject injected a header")
	}
}

// TestComposeInterop has every reply kind checked by OpenSSL, gpgsm and
// NSS, with RSA (the golden KMS certificate) and ECDSA signers.
func TestComposeInterop(t *testing.T) {
	needTool(t, "openssl")
	g := loadGoldenPKI(t)
	p := newTestPKI(t)
	ecKMS := p.issue(t, "kms@example.com", "ec", userOpts{})
	newUser := p.issue(t, "alice@example.com", "ec", userOpts{})
	cases := []struct {
		name   string
		signer Signer
		root   *x509.Certificate
		ca     *x509.Certificate
		certs  []*x509.Certificate
	}{
		{"rsa text only", g.kms.signer(), g.root, g.ca, nil},
		{"rsa certificate reply", g.kms.signer(), g.root, g.ca, []*x509.Certificate{g.alice.cert, g.ca}},
		{"ecdsa text only", ecKMS.signer(), p.root.cert, p.ca.cert, nil},
		{"ecdsa certificate reply", ecKMS.signer(), p.root.cert, p.ca.cert, []*x509.Certificate{newUser.cert, p.ca.cert}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := composeAndSplit(t, testMessage(tc.certs...), tc.signer)
			dir := t.TempDir()
			msg := writeFile(t, filepath.Join(dir, "msg.eml"), c.raw)
			content := writeFile(t, filepath.Join(dir, "content"), c.signed)
			sig := writeFile(t, filepath.Join(dir, "smime.p7s"), c.sig)
			root := writeFile(t, filepath.Join(dir, "root.pem"), pemCert(tc.root))

			// OpenSSL, both front ends, default purpose (S/MIME signing:
			// the KMS certificate has the emailProtection EKU).
			for _, cmd := range []string{"smime", "cms"} {
				runTool(t, nil, nil, "openssl", cmd, "-verify", "-in", msg, "-CAfile", root, "-out", filepath.Join(dir, "out-"+cmd))
				got, _ := os.ReadFile(filepath.Join(dir, "out-"+cmd))
				if len(got) == 0 {
					t.Errorf("openssl %s -verify wrote no content", cmd)
				}
			}
			// A tampered copy must fail with OpenSSL too, or the check above proves nothing.
			bad := writeFile(t, filepath.Join(dir, "bad.eml"), bytes.Replace(c.raw, []byte("renewed"), []byte("revoked"), 1))
			if _, _, err := tryTool(nil, nil, "openssl", "smime", "-verify", "-in", bad, "-CAfile", root, "-out", os.DevNull); err == nil {
				t.Error("openssl accepted a tampered message")
			}

			if len(tc.certs) > 0 {
				p7c := writeFile(t, filepath.Join(dir, "smime.p7c"), c.p7c)
				out := runTool(t, nil, nil, "openssl", "pkcs7", "-inform", "DER", "-print_certs", "-in", p7c)
				if !bytes.Contains(out, []byte("subject=CN = alice@example.com")) || bytes.Count(out, []byte("-----BEGIN CERTIFICATE-----")) != 2 {
					t.Errorf("openssl pkcs7 -print_certs:\n%s", out)
				}
			}

			{ // gpgsm reads the bare signature and content.
				env := gpgsmHome(t, tc.root, []*x509.Certificate{tc.ca})
				_, stderr, err := tryTool(env, nil, "gpgsm", "--batch", "--disable-crl-checks", "--verify", sig, content)
				if err != nil || !bytes.Contains(stderr, []byte("Good signature")) {
					t.Errorf("gpgsm --verify: %v\n%s", err, stderr)
				}
				badContent := writeFile(t, filepath.Join(dir, "bad-content"), append([]byte("X"), c.signed...))
				if _, stderr, err := tryTool(env, nil, "gpgsm", "--batch", "--disable-crl-checks", "--verify", sig, badContent); err == nil && bytes.Contains(stderr, []byte("Good signature")) {
					t.Error("gpgsm accepted altered content")
				}
			}

			db := nssDB(t, tc.root)
			runTool(t, nil, nil, "cmsutil", "-D", "-n", "-d", db, "-i", sig, "-c", content)
			badContent := writeFile(t, filepath.Join(dir, "bad-content-nss"), append([]byte("X"), c.signed...))
			if _, _, err := tryTool(nil, nil, "cmsutil", "-D", "-n", "-d", db, "-i", sig, "-c", badContent); err == nil {
				t.Error("cmsutil accepted altered content")
			}
		})
	}
}

func TestComposeRequiresMatchingKey(t *testing.T) {
	g := loadGoldenPKI(t)
	s := g.kms.signer()
	s.Key = g.alice.key
	if _, err := Compose(testMessage(), s); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("mismatched key: %v", err)
	}
	if _, err := Compose(testMessage(), Signer{}); err == nil {
		t.Error("empty Signer accepted")
	}
}

// TestWriteBase64: 76-character lines, each ending CRLF, the last one
// short, and exactly as long as base64Len says.
func TestWriteBase64(t *testing.T) {
	for _, n := range []int{0, 1, 2, 56, 57, 58, 113, 114, 115, 1000} {
		data := make([]byte, n)
		for i := range data {
			data[i] = byte(i * 7)
		}
		var b bytes.Buffer
		writeBase64(&b, data)
		enc := base64.StdEncoding.EncodeToString(data)
		var want strings.Builder
		for len(enc) > 76 {
			want.WriteString(enc[:76] + "\r\n")
			enc = enc[76:]
		}
		want.WriteString(enc + "\r\n")
		if b.String() != want.String() {
			t.Errorf("%d bytes: got %q, want %q", n, b.String(), want.String())
		}
		if b.Len() != base64Len(n) {
			t.Errorf("%d bytes: wrote %d, base64Len says %d", n, b.Len(), base64Len(n))
		}
	}
}

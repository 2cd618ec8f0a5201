package smime

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestParseRequestHeaders(t *testing.T) {
	raw := "From: \"Álvaro\" <alvaro@example.com>\r\nTo: kms@example.com\r\n" +
		"Subject: =?utf-8?q?Renouvellement_=C3=A9t=C3=A9?=\r\nMessage-ID: <abc.123@mail.example.com>\r\n" +
		"In-Reply-To: <reminder-9@kms.example.com>\r\nReferences: <a@x> <reminder-9@kms.example.com>\r\n" +
		"Auto-Submitted: Auto-Replied; owner-email=x@example.com\r\n\r\nhello\r\n"
	r, err := ParseRequest([]byte(raw), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if r.From != "alvaro@example.com" || r.MessageID != "abc.123@mail.example.com" || r.Subject != "Renouvellement été" {
		t.Errorf("From %q MessageID %q Subject %q", r.From, r.MessageID, r.Subject)
	}
	if fmt.Sprint(r.InReplyTo) != "[reminder-9@kms.example.com]" || fmt.Sprint(r.References) != "[a@x reminder-9@kms.example.com]" {
		t.Errorf("InReplyTo %v References %v", r.InReplyTo, r.References)
	}
	if r.AutoSubmitted != "auto-replied" || !r.IsAutoSubmitted() || r.Kind != KindUnsigned || r.ContentType != "text/plain" {
		t.Errorf("AutoSubmitted %q Kind %v ContentType %q", r.AutoSubmitted, r.Kind, r.ContentType)
	}
}

func TestParseRequestRefuses(t *testing.T) {
	manyParts := func(n int) string {
		var b strings.Builder
		b.WriteString("From: a@example.com\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n")
		for i := 0; i < n; i++ {
			b.WriteString("--b\r\nContent-Type: text/plain\r\n\r\nx\r\n")
		}
		b.WriteString("--b--\r\n")
		return b.String()
	}
	nested := func(depth int) string {
		var b strings.Builder
		b.WriteString("From: a@example.com\r\n")
		for i := 0; i < depth; i++ {
			fmt.Fprintf(&b, "Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n", i, i)
		}
		b.WriteString("Content-Type: text/plain\r\n\r\nx\r\n")
		for i := depth - 1; i >= 0; i-- {
			fmt.Fprintf(&b, "--b%d--\r\n", i)
		}
		return b.String()
	}
	signedMany := strings.Replace(manyParts(5000), "multipart/mixed", "multipart/signed; protocol=\"application/pkcs7-signature\"", 1)
	tests := []struct {
		name    string
		raw     string
		content bool // the error comes from UnverifiedContent
		want    error
	}{
		{name: "no From", raw: "To: kms@example.com\r\n\r\nhi\r\n", want: ErrMalformed},
		{name: "two From", raw: "From: a@example.com, b@example.com\r\n\r\nhi\r\n", want: ErrMalformed},
		{name: "bad header line", raw: "From: a@example.com\r\nno colon here\r\n\r\nhi\r\n", want: ErrMalformed},
		{name: "too large", raw: "From: a@example.com\r\n\r\n" + strings.Repeat("x", DefaultLimits().MaxMessageBytes), want: ErrLimit},
		{name: "huge header", raw: "From: a@example.com\r\nX-Junk: " + strings.Repeat("y", 70000) + "\r\n\r\nhi", want: ErrLimit},
		{name: "thousands of parts", raw: manyParts(5000), content: true, want: ErrLimit},
		{name: "thousands of parts in multipart/signed", raw: signedMany, want: ErrLimit},
		{name: "deep nesting", raw: nested(50), content: true, want: ErrLimit},
		{name: "multipart/signed with one part", raw: "From: a@example.com\r\nContent-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n", want: ErrMalformed},
		{name: "multipart/signed without boundary", raw: "From: a@example.com\r\nContent-Type: multipart/signed; protocol=\"application/pkcs7-signature\"\r\n\r\nx\r\n", want: ErrMalformed},
		{name: "signature part not base64", raw: "From: a@example.com\r\nContent-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b\r\nContent-Type: application/pkcs7-signature\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!!\r\n--b--\r\n", want: ErrMalformed},
		{name: "pkcs7-mime with garbage", raw: "From: a@example.com\r\nContent-Type: application/pkcs7-mime; name=smime.p7m\r\nContent-Transfer-Encoding: base64\r\n\r\nAAAA\r\n", want: ErrMalformed},
		{name: "bad CSR in pkcs10 part", raw: "From: a@example.com\r\nContent-Type: application/pkcs10\r\nContent-Transfer-Encoding: base64\r\n\r\nMIIBAAAA\r\n", content: true, want: ErrBadCSR},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := ParseRequest([]byte(tt.raw), Limits{})
			if tt.content {
				if err != nil {
					t.Fatalf("ParseRequest: %v", err)
				}
				_, err = r.UnverifiedContent()
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("error = %v, want %v", err, tt.want)
			}
		})
	}
	// The limits are the caller's to set.
	r, err := ParseRequest([]byte(manyParts(150)), Limits{MaxParts: 200})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.UnverifiedContent(); err != nil {
		t.Errorf("150 parts under MaxParts 200: %v", err)
	}
}

func TestVerifyTamperedAndLineEnds(t *testing.T) {
	g := loadGoldenPKI(t)
	raw := readGolden(t, "openssl-cms-detached-ec-crlf.eml")
	verify := func(b []byte) error {
		r, err := ParseRequest(b, Limits{})
		if err != nil {
			return err
		}
		_, err = r.Verify(g.opts())
		return err
	}
	if err := verify(raw); err != nil {
		t.Fatalf("untouched: %v", err)
	}
	tampered := bytes.Replace(raw, []byte("Please renew"), []byte("Please revoke"), 1)
	if err := verify(tampered); !errors.Is(err, ErrBadSignature) {
		t.Errorf("tampered content: %v, want ErrBadSignature", err)
	}
	// A store that dropped every CR: the CRLF fallback verifies it.
	if err := verify(bytes.ReplaceAll(raw, []byte("\r\n"), []byte("\n"))); err != nil {
		t.Errorf("LF-only copy: %v", err)
	}
	// But the fallback does not forgive other changes: trailing space.
	spaced := bytes.Replace(raw, []byte("certificate.\r\n"), []byte("certificate. \r\n"), 1)
	if err := verify(spaced); !errors.Is(err, ErrBadSignature) {
		t.Errorf("trailing space added: %v, want ErrBadSignature", err)
	}
}

func TestUnverifiedContentOfSignedRequest(t *testing.T) {
	for _, f := range []string{"openssl-rekey-pem-rsa.eml", "openssl-rekey-pkcs10-ec.eml"} {
		r, err := ParseRequest(readGolden(t, f), Limits{})
		if err != nil {
			t.Fatal(err)
		}
		c, err := r.UnverifiedContent()
		if err != nil || len(c.CSRs) != 1 {
			t.Errorf("%s: %v, want one CSR", f, err)
		}
	}
	r, err := ParseRequest(readGolden(t, "nss-opaque-ec.eml"), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.UnverifiedContent(); err != nil {
		t.Errorf("opaque: %v", err)
	}
}

func TestSplitMultipart(t *testing.T) {
	tests := []struct {
		name, body string
		want       []string
		err        error
	}{
		{"preamble and epilogue", "pre\r\n--b\r\none\r\n--b\r\ntwo\r\n--b--\r\nepilogue", []string{"one", "two"}, nil},
		{"LF line ends", "--b\none\n--b\ntwo\n--b--\n", []string{"one", "two"}, nil},
		{"transport padding", "--b  \r\none\r\n--b\t\r\ntwo\r\n--b-- \r\n", []string{"one", "two"}, nil},
		{"longer boundary is content", "--b\r\n--bb\r\n--b--\r\n", []string{"--bb"}, nil},
		{"mid-line is content", "--b\r\nx --b\r\n--b--", []string{"x --b"}, nil},
		{"empty part", "--b\r\n\r\n--b--", []string{""}, nil},
		{"missing close", "--b\r\none\r\n", []string{"one"}, nil},
		{"keeps CRLF inside", "--b\r\na\r\n\r\n--b--", []string{"a\r\n"}, nil},
		{"no delimiter", "just text", nil, ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parts, err := splitMultipart([]byte(tt.body), "b", 10)
			if !errors.Is(err, tt.err) || (err == nil) != (tt.err == nil) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
			var got []string
			for _, p := range parts {
				got = append(got, string(p))
			}
			if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", tt.want) {
				t.Errorf("parts = %q, want %q", got, tt.want)
			}
		})
	}
}

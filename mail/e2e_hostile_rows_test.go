package mail

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/kmsmail/kms/enroll"
)

// hostileFixture is the population the hostile requests aim at: users in
// every state a request can meet, made through the real mail path.
type hostileFixture struct {
	d *e2eDaemon
	// alice, bob: active. dave: disabled (certificates revoked). erin:
	// certificate revoked (lapsed). frank: certificate expired (lapsed).
	// gina, harry: invited. ivan: invited, code expired.
	alice, bob, dave, erin, frank, gina, harry, ivan *e2eUser
	aliceOld                                         *x509.Certificate // superseded by alice's renewal
	aliceCode                                        string            // used by her enrollment
	aliceRenewal                                     []byte            // honoured; for replays
	kmsReply                                         []byte            // the certificate reply, as delivered
}

const (
	hostileStranger      = "mallory@evil.example.net" // no user, a domain kms does not serve
	hostileLocalStranger = "mallory@example.com"      // no user, in a served domain
)

// hostileRow is one hostile or broken request and what must come of it.
type hostileRow struct {
	name string
	from string   // the envelope sender; "" is the null sender
	rcpt []string // nil: the KMS address
	msg  func(f *hostileFixture) []byte
	// smtp is the final SMTP reply: to the end of DATA, or to RCPT when no
	// recipient was accepted.
	smtp int
	// dup: the very same bytes were accepted before, so nothing new is
	// stored (the client retrying after a lost 250).
	dup bool
	// reply lists the mails that must be queued, as "kind address"; none
	// for everything else. Rejections and lapse notices go to the address
	// on record only.
	reply []string
	// why is a piece of the inbound row's outcome: the refusal took the
	// intended path and not some other.
	why string
}

// hostileFile reads a static sample from testdata/hostile.
func hostileFile(name string) func(*hostileFixture) []byte {
	return func(f *hostileFixture) []byte {
		f.d.t.Helper()
		b, err := os.ReadFile(filepath.Join("..", "testdata", "hostile", name))
		if err != nil {
			f.d.t.Fatal(err)
		}
		return b
	}
}

// hostileSignedBy is a same-key renewal from from, validly signed by u with cert
// (u's current one when nil), with extra header lines.
func hostileSignedBy(u func(*hostileFixture) *e2eUser, cert func(*hostileFixture) *x509.Certificate, from, extra string) func(*hostileFixture) []byte {
	return func(f *hostileFixture) []byte {
		user := u(f)
		c := user.cert
		if cert != nil {
			c = cert(f)
		}
		if from == "" {
			from = user.email
		}
		inner := e2eText("Please renew my certificate.")
		return e2eSigned(from, "renew", extra, inner, e2eCMS(f.d.t, inner, user.key, c, cmsOptions{at: f.d.clock.Now()}))
	}
}

// hostileAliceSignature is a multipart/signed message from alice whose
// signature part is sig(f), over a valid inner text.
func hostileAliceSignature(sig func(f *hostileFixture) []byte) func(*hostileFixture) []byte {
	return func(f *hostileFixture) []byte {
		return e2eSigned(f.alice.email, "renew", "", e2eText("Please renew my certificate."), sig(f))
	}
}

// hostileAliceSigns is a message from alice whose inner entity inner(f) she
// signs validly.
func hostileAliceSigns(inner func(f *hostileFixture) []byte) func(*hostileFixture) []byte {
	return func(f *hostileFixture) []byte {
		in := inner(f)
		return e2eSigned(f.alice.email, "rekey", "", in, e2eCMS(f.d.t, in, f.alice.key, f.alice.cert, cmsOptions{at: f.d.clock.Now()}))
	}
}

// hostileEnrollment is an unsigned enrollment request from from carrying the
// CSRs csrs(f).
func hostileEnrollment(from string, csrs func(f *hostileFixture) [][]byte) func(*hostileFixture) []byte {
	return func(f *hostileFixture) []byte {
		return e2ePlain(from, "enrollment", "", e2eCSRParts(csrs(f)...))
	}
}

// hostileCSR is a CSR for a new key of kind with code(f).
func hostileCSR(kind string, code func(f *hostileFixture) string) func(f *hostileFixture) [][]byte {
	return func(f *hostileFixture) [][]byte {
		return [][]byte{e2eCSR(f.d.t, e2eKey(f.d.t, kind), "someone", code(f))}
	}
}

func harrysCode(f *hostileFixture) string { return f.harry.code }
func ginasCode(f *hostileFixture) string  { return f.gina.code }

// hostileBadCSR is a CSR whose self-signature is broken.
func hostileBadCSR(f *hostileFixture, code string) []byte {
	der := e2eCSR(f.d.t, e2eKey(f.d.t, "p256"), "someone", code)
	der[len(der)-5] ^= 0x5a // inside the signature value
	return der
}

// hostileSized is an unsigned message from a stranger of exactly n bytes, CRLF
// line ends, no line starting with a dot.
func hostileSized(n int) func(*hostileFixture) []byte {
	return func(f *hostileFixture) []byte {
		b := []byte(e2eHeader(hostileStranger, "big", "") + "Content-Type: text/plain\r\n\r\n")
		line := strings.Repeat("x", 76) + "\r\n"
		for len(b)+len(line) <= n-8 {
			b = append(b, line...)
		}
		b = append(b, strings.Repeat("y", n-len(b)-2)+"\r\n"...)
		if len(b) != n {
			f.d.t.Fatalf("sized(%d) made %d bytes", n, len(b))
		}
		return b
	}
}

// hostileManyParts is a multipart/mixed message from alice with n empty parts.
func hostileManyParts(n int) func(*hostileFixture) []byte {
	return func(f *hostileFixture) []byte {
		var b strings.Builder
		b.WriteString("Content-Type: multipart/mixed; boundary=\"p\"\r\n\r\n")
		for range n {
			b.WriteString("--p\r\nContent-Type: text/plain\r\n\r\nx\r\n")
		}
		b.WriteString("--p--\r\n")
		return e2ePlain(f.alice.email, "many parts", "", []byte(b.String()))
	}
}

// hostileNested is a message from a stranger with multiparts nested depth deep.
func hostileNested(depth int) func(*hostileFixture) []byte {
	return func(f *hostileFixture) []byte {
		var open, closing strings.Builder
		for i := range depth {
			open.WriteString("Content-Type: multipart/mixed; boundary=\"b" + strings.Repeat("x", i%5) + strconv.Itoa(i) + "\"\r\n\r\n--b" + strings.Repeat("x", i%5) + strconv.Itoa(i) + "\r\n")
		}
		open.WriteString("Content-Type: text/plain\r\n\r\nbottom\r\n")
		for i := depth - 1; i >= 0; i-- {
			closing.WriteString("--b" + strings.Repeat("x", i%5) + strconv.Itoa(i) + "--\r\n")
		}
		return e2ePlain(hostileStranger, "nested", "", []byte(open.String()+closing.String()))
	}
}

// hostileRows is the table of TestHostileRequests: at least one row for
// every case of the issue, and more.
var hostileRows = []hostileRow{
	// Authentication: unsigned, unknown CA, revoked, expired, superseded,
	// disabled, From other than the signer.
	{name: "unsigned, from a user", from: "alice@example.com", smtp: 250,
		msg:   func(f *hostileFixture) []byte { return e2ePlain(f.alice.email, "renew", "", e2eText("Please renew.")) },
		reply: []string{"rejection alice@example.com"}, why: "no_request"},
	{name: "unsigned, from a stranger", from: hostileStranger, smtp: 250,
		msg: func(f *hostileFixture) []byte {
			return e2ePlain(hostileStranger, "renew", "", e2eText("Please renew."))
		},
		why: "dropped: unknown sender"},
	{name: "signed by an unknown CA, From the user it names", from: "alice@example.com", smtp: 250,
		msg: func(f *hostileFixture) []byte {
			key := e2eKey(f.d.t, "p256")
			cert := e2eForeignCA(f.d.t, f.alice.email, key, f.d.clock.Now())
			inner := e2eText("Please renew my certificate.")
			return e2eSigned(f.alice.email, "renew", "", inner, e2eCMS(f.d.t, inner, key, cert, cmsOptions{}))
		},
		reply: []string{"rejection alice@example.com"}, why: "no_request"},
	{name: "signed by an unknown CA, from a stranger", from: hostileStranger, smtp: 250,
		msg: func(f *hostileFixture) []byte {
			key := e2eKey(f.d.t, "p256")
			cert := e2eForeignCA(f.d.t, hostileStranger, key, f.d.clock.Now())
			inner := e2eCSRParts(e2eCSR(f.d.t, key, hostileStranger, "ABCD-EFGH-JKLM-NPQR-STVW-XYZ2"))
			return e2eSigned(hostileStranger, "enroll", "", inner, e2eCMS(f.d.t, inner, key, cert, cmsOptions{}))
		},
		why: "dropped: not a user"},
	{name: "signed by a revoked certificate", from: "erin@example.com", smtp: 250,
		msg:   hostileSignedBy(func(f *hostileFixture) *e2eUser { return f.erin }, nil, "", ""),
		reply: []string{"rejection erin@example.com"}, why: "was revoked (keyCompromise)"},
	{name: "signed by an expired certificate (lapsed user)", from: "frank@short.example.com", smtp: 250,
		msg:   hostileSignedBy(func(f *hostileFixture) *e2eUser { return f.frank }, nil, "", ""),
		reply: []string{"lapse frank@short.example.com"}, why: "lapsed"},
	{name: "lapsed user's certificate, From and Reply-To a stranger", from: hostileStranger, smtp: 250,
		msg:   hostileSignedBy(func(f *hostileFixture) *e2eUser { return f.frank }, nil, hostileStranger, "Reply-To: "+hostileStranger+"\r\n"),
		reply: []string{"lapse frank@short.example.com"}, why: "lapsed"},
	{name: "signed by a superseded certificate", from: "alice@example.com", smtp: 250,
		msg:   hostileSignedBy(func(f *hostileFixture) *e2eUser { return f.alice }, func(f *hostileFixture) *x509.Certificate { return f.aliceOld }, "", ""),
		reply: []string{"rejection alice@example.com"}, why: "is superseded"},
	{name: "signed by a disabled user's certificate", from: "dave@example.com", smtp: 250,
		msg:   hostileSignedBy(func(f *hostileFixture) *e2eUser { return f.dave }, nil, "", ""),
		reply: []string{"rejection dave@example.com"}, why: "was revoked (affiliationChanged)"},
	{name: "From another user than the signer", from: "alice@example.com", smtp: 250,
		msg:   hostileSignedBy(func(f *hostileFixture) *e2eUser { return f.bob }, nil, "alice@example.com", ""),
		reply: []string{"rejection bob@example.com"}, why: "from_mismatch"},
	{name: "From a hostileStranger, signed by a user, Reply-To a stranger", from: hostileStranger, smtp: 250,
		msg:   hostileSignedBy(func(f *hostileFixture) *e2eUser { return f.bob }, nil, hostileStranger, "Reply-To: "+hostileStranger+"\r\n"),
		reply: []string{"rejection bob@example.com"}, why: "from_mismatch"},

	// Signatures that do not hold.
	{name: "valid signature over tampered content", from: "alice@example.com", smtp: 250,
		msg: func(f *hostileFixture) []byte {
			m := hostileSignedBy(func(f *hostileFixture) *e2eUser { return f.alice }, nil, "", "")(f)
			return bytes.Replace(m, []byte("Please renew"), []byte("Please ronew"), 1)
		},
		reply: []string{"rejection alice@example.com"}, why: "content altered"},
	{name: "tampered content, Reply-To another user", from: "bob@example.com", smtp: 250,
		msg: func(f *hostileFixture) []byte {
			m := hostileSignedBy(func(f *hostileFixture) *e2eUser { return f.bob }, nil, "", "Reply-To: gina@example.com\r\n")(f)
			return bytes.Replace(m, []byte("Please renew"), []byte("Please ronew"), 1)
		},
		reply: []string{"rejection bob@example.com"}, why: "content altered"},
	{name: "SHA-1 signature", from: "alice@example.com", smtp: 250,
		msg: hostileAliceSignature(func(f *hostileFixture) []byte {
			return e2eCMS(f.d.t, e2eText("Please renew my certificate."), f.alice.key, f.alice.cert, cmsOptions{hash: crypto.SHA1})
		}),
		reply: []string{"rejection alice@example.com"}, why: "weak algorithm"},
	{name: "signer certificate left out", from: "alice@example.com", smtp: 250,
		msg: hostileAliceSignature(func(f *hostileFixture) []byte {
			return e2eCMS(f.d.t, e2eText("Please renew my certificate."), f.alice.key, f.alice.cert, cmsOptions{noCerts: true})
		}),
		reply: []string{"rejection alice@example.com"}, why: "no_request"},
	{name: "truncated CMS (a real signature cut in half)", from: "alice@example.com", smtp: 250,
		msg: hostileAliceSignature(func(f *hostileFixture) []byte {
			sig := e2eCMS(f.d.t, e2eText("Please renew my certificate."), f.alice.key, f.alice.cert, cmsOptions{})
			return sig[:len(sig)/2]
		}),
		reply: []string{"rejection alice@example.com"}, why: "unreadable: malformed input"},
	{name: "truncated CMS (static)", from: "alice@example.com", smtp: 250, msg: hostileFile("truncated-cms.eml"),
		reply: []string{"rejection alice@example.com"}, why: "unreadable: malformed input"},
	{name: "garbage CMS", from: "alice@example.com", smtp: 250, msg: hostileFile("garbage-cms.eml"),
		reply: []string{"rejection alice@example.com"}, why: "unreadable: malformed input"},
	{name: "CMS bomb: huge lengths", from: "alice@example.com", smtp: 250, msg: hostileFile("huge-length-cms.eml"),
		reply: []string{"rejection alice@example.com"}, why: "ASN.1 length of 8 octets"},
	{name: "CMS bomb: 100,000 levels of BER nesting", from: "alice@example.com", smtp: 250,
		msg:   hostileAliceSignature(func(*hostileFixture) []byte { return e2eBERBomb(100000) }),
		reply: []string{"rejection alice@example.com"}, why: "ASN.1 nesting deeper than"},
	{name: "CMS bomb: 200,000 elements", from: "alice@example.com", smtp: 250,
		msg:   hostileAliceSignature(func(*hostileFixture) []byte { return e2eBERMany(200000) }),
		reply: []string{"rejection alice@example.com"}, why: "ASN.1 elements"},
	{name: "opaque signed-data of garbage, from a stranger", from: hostileStranger, smtp: 250, msg: hostileFile("opaque-garbage.eml"),
		why: "dropped: unknown sender"},
	{name: "enveloped-data of garbage, from a stranger", from: hostileStranger, smtp: 250, msg: hostileFile("enveloped-garbage.eml"),
		why: "dropped: unknown sender mallory@evil.example.net: undecryptable"},
	{name: "opaque signed-data by a superseded certificate", from: "alice@example.com", smtp: 250,
		msg: func(f *hostileFixture) []byte {
			der := e2eCMS(f.d.t, e2eText("Please renew my certificate."), f.alice.key, f.aliceOld, cmsOptions{opaque: true})
			return e2eOpaque(f.alice.email, "renew", "", der)
		},
		reply: []string{"rejection alice@example.com"}, why: "is superseded"},

	// MIME that is too much or not MIME.
	{name: "MIME with 5,000 parts", from: "alice@example.com", smtp: 250, msg: hostileManyParts(5000),
		reply: []string{"rejection alice@example.com"}, why: "MIME parts"},
	{name: "multiparts hostileNested 60 deep", from: hostileStranger, smtp: 250, msg: hostileNested(60), why: "MIME nesting deeper than"},
	{name: "header bomb: 200 KB of folded header", from: "alice@example.com", smtp: 250,
		msg: func(f *hostileFixture) []byte {
			junk := "X-Junk: " + strings.Repeat(strings.Repeat("j", 98)+"\r\n ", 2000) + "end\r\n"
			return hostileSignedBy(func(f *hostileFixture) *e2eUser { return f.alice }, nil, "", junk)(f)
		},
		why: "header of"},
	// RFC 5321 allows 1,000 octets a line, go-smtp 2,000; the transfer is
	// refused and the connection closed.
	{name: "a header line over the SMTP line limit", from: "alice@example.com", smtp: 554,
		msg: func(f *hostileFixture) []byte {
			return hostileSignedBy(func(f *hostileFixture) *e2eUser { return f.alice }, nil, "", "X-Junk: "+strings.Repeat("j", 3000)+"\r\n")(f)
		}},
	{name: "8-bit garbage", from: hostileStranger, smtp: 250, msg: hostileFile("8bit-garbage.eml"), why: "dropped: unreadable"},
	{name: "From with two addresses", from: "alice@example.com", smtp: 250, msg: hostileFile("two-from.eml"), why: "From has 2 addresses"},
	{name: "missing From", from: "alice@example.com", smtp: 250, msg: hostileFile("no-from.eml"), why: "From has 0 addresses"},

	// Enrollment requests that must not enroll.
	{name: "CSR with a bad self-signature", from: "harry@example.com", smtp: 250,
		msg:   hostileEnrollment("harry@example.com", func(f *hostileFixture) [][]byte { return [][]byte{hostileBadCSR(f, f.harry.code)} }),
		reply: []string{"rejection harry@example.com"}, why: "self-signature does not verify"},
	{name: "base64 garbage in application/pkcs10", from: "harry@example.com", smtp: 250, msg: hostileFile("pkcs10-bad-base64.eml"),
		reply: []string{"rejection harry@example.com"}, why: "illegal base64"},
	{name: "weak key (RSA-1024) with the right code", from: "harry@example.com", smtp: 250,
		msg:   hostileEnrollment("harry@example.com", hostileCSR("rsa1024", harrysCode)),
		reply: []string{"rejection harry@example.com"}, why: "weak key"},
	{name: "P-224 key with the right code", from: "harry@example.com", smtp: 250,
		msg:   hostileEnrollment("harry@example.com", hostileCSR("p224", harrysCode)),
		reply: []string{"rejection harry@example.com"}, why: "P-224"},
	{name: "two CSRs with the right code", from: "harry@example.com", smtp: 250,
		msg: hostileEnrollment("harry@example.com", func(f *hostileFixture) [][]byte {
			return append(hostileCSR("p256", harrysCode)(f), hostileCSR("p256", harrysCode)(f)...)
		}),
		reply: []string{"rejection harry@example.com"}, why: "several_csrs"},
	{name: "wrong code", from: "harry@example.com", smtp: 250,
		msg: hostileEnrollment("harry@example.com", hostileCSR("p256", func(f *hostileFixture) string {
			code, err := enroll.NewCode()
			if err != nil {
				f.d.t.Fatal(err)
			}
			return code
		})),
		reply: []string{"rejection harry@example.com"}, why: "wrong enrollment code"},
	{name: "another invited user's code", from: "harry@example.com", smtp: 250,
		msg:   hostileEnrollment("harry@example.com", hostileCSR("p256", ginasCode)),
		reply: []string{"rejection harry@example.com"}, why: "wrong enrollment code"},
	{name: "a user's code from a non-user of the domain", from: hostileLocalStranger, smtp: 250,
		msg: hostileEnrollment(hostileLocalStranger, hostileCSR("p256", ginasCode)), why: "dropped: not a user"},
	{name: "a user's code from a domain kms does not serve", from: hostileStranger, smtp: 250,
		msg: hostileEnrollment(hostileStranger, hostileCSR("p256", ginasCode)), why: "dropped: not a user"},
	{name: "reused code", from: "alice@example.com", smtp: 250,
		msg:   hostileEnrollment("alice@example.com", hostileCSR("p256", func(f *hostileFixture) string { return f.aliceCode })),
		reply: []string{"rejection alice@example.com"}, why: "not invited"},
	{name: "expired code", from: "ivan@short.example.com", smtp: 250,
		msg:   hostileEnrollment("ivan@short.example.com", hostileCSR("p256", func(f *hostileFixture) string { return f.ivan.code })),
		reply: []string{"rejection ivan@short.example.com"}, why: "enrollment code expired"},

	// Rekey requests with a bad CSR inside a valid signature.
	{name: "rekey CSR with a bad self-signature, validly signed", from: "alice@example.com", smtp: 250,
		msg:   hostileAliceSigns(func(f *hostileFixture) []byte { return e2eCSRParts(hostileBadCSR(f, "")) }),
		reply: []string{"rejection alice@example.com"}, why: "self-signature does not verify"},
	{name: "rekey to a weak key, validly signed", from: "alice@example.com", smtp: 250,
		msg: hostileAliceSigns(func(f *hostileFixture) []byte {
			return e2eCSRParts(e2eCSR(f.d.t, e2eKey(f.d.t, "rsa1024"), "alice", ""))
		}),
		reply: []string{"rejection alice@example.com"}, why: "weak key"},

	// Replays and loops.
	{name: "replay: the same bytes again", from: "alice@example.com", smtp: 250, dup: true,
		msg: func(f *hostileFixture) []byte { return f.aliceRenewal }},
	{name: "replay: the same signed request, new outer header", from: "alice@example.com", smtp: 250,
		msg: func(f *hostileFixture) []byte { return append([]byte("X-Resent: yes\r\n"), f.aliceRenewal...) },
		why: "replay"},
	{name: "null sender, with a valid signed renewal", from: "", smtp: 250,
		msg: hostileSignedBy(func(f *hostileFixture) *e2eUser { return f.alice }, nil, "", ""), why: "null return path"},
	{name: "Auto-Submitted: auto-replied, with a valid signed renewal", from: "alice@example.com", smtp: 250,
		msg: hostileSignedBy(func(f *hostileFixture) *e2eUser { return f.alice }, nil, "", "Auto-Submitted: auto-replied\r\n"),
		why: "Auto-Submitted"},
	{name: "multipart/report DSN", from: "postmaster@mx.example.org", smtp: 250, msg: hostileFile("dsn.eml"),
		why: "report"},
	{name: "the KMS's own reply sent back", from: kmsAddr, smtp: 250,
		msg: func(f *hostileFixture) []byte { return f.kmsReply }, why: "Auto-Submitted"},
	{name: "the KMS's own reply sent back, Auto-Submitted removed", from: kmsAddr, smtp: 250,
		msg: func(f *hostileFixture) []byte {
			return bytes.Replace(f.kmsReply, []byte("Auto-Submitted: auto-replied"), []byte("X-Was-Auto: yes"), 1)
		},
		why: "unknown sender kms@example.com"},

	// The SMTP edge.
	{name: "oversized message (3 MiB)", from: "alice@example.com", smtp: 552, msg: hostileSized(3 << 20)},
	{name: "1 byte over the limit", from: hostileStranger, smtp: 552, msg: hostileSized(e2eMaxBytes + 1)},
	{name: "1 byte under the limit", from: hostileStranger, smtp: 250, msg: hostileSized(e2eMaxBytes - 1), why: "dropped: unknown sender"},
	{name: "exactly at the limit", from: hostileStranger, smtp: 250, msg: hostileSized(e2eMaxBytes), why: "dropped: unknown sender"},
	{name: "non-KMS recipient", from: "alice@example.com", rcpt: []string{"alice@example.com"}, smtp: 550,
		msg: hostileSignedBy(func(f *hostileFixture) *e2eUser { return f.alice }, nil, "", "")},
	{name: "a relay attempt to another domain", from: hostileStranger, rcpt: []string{"victim@elsewhere.example.org"}, smtp: 550,
		msg: func(f *hostileFixture) []byte { return e2ePlain(hostileStranger, "hi", "", e2eText("relay me")) }},
}

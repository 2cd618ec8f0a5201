package smime

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/smallstep/pkcs7"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// signedGolden are the samples whose CMS object is SignedData: what
// OpenSSL, gpgsm and NSS wrote, and kms's own replies.
var signedGolden = []string{
	"gpgsm-detached-rsa.eml", "nss-detached-rsa.eml", "nss-opaque-ec.eml",
	"openssl-cms-detached-ec-crlf.eml", "openssl-cms-opaque-stream-ec.eml", "openssl-cms-pss-rsa.eml",
	"openssl-cms-sha1-rsa.eml", "openssl-cms-sha384-ec.eml", "openssl-expired-signer.eml",
	"openssl-rekey-pem-rsa.eml", "openssl-rekey-pkcs10-ec.eml", "openssl-smime-detached-rsa.eml",
	"openssl-smime-opaque-rsa.eml", "openssl-unknown-ca.eml", "kms-certificate-reply.eml", "kms-reminder.eml",
}

// TestSignedDataAgreesWithLibrary parses every golden SignedData with
// parseSignedData and with the pkcs7 library it replaced, and requires the
// two to agree on everything verification uses.
func TestSignedDataAgreesWithLibrary(t *testing.T) {
	for _, name := range signedGolden {
		t.Run(name, func(t *testing.T) {
			r, err := ParseRequest(readGolden(t, name), DefaultLimits())
			if err != nil {
				t.Fatal(err)
			}
			der, _, err := toDER(r.cms)
			if err != nil {
				t.Fatal(err)
			}
			compareWithLibrary(t, der)
		})
	}
}

// compareWithLibrary fails t unless parseSignedData and pkcs7.Parse read
// der alike.
func compareWithLibrary(t *testing.T, der []byte) {
	t.Helper()
	lib, err := pkcs7.Parse(der)
	if err != nil {
		t.Fatalf("library: %v", err)
	}
	sd, err := parseSignedData(der)
	if err != nil {
		t.Fatalf("parseSignedData: %v", err)
	}
	if !bytes.Equal(sd.content, lib.Content) {
		t.Errorf("content: %d bytes, library %d", len(sd.content), len(lib.Content))
	}
	if len(sd.certificates) != len(lib.Certificates) {
		t.Fatalf("%d certificates, library %d", len(sd.certificates), len(lib.Certificates))
	}
	for i, c := range sd.certificates {
		if !bytes.Equal(c.Raw, lib.Certificates[i].Raw) {
			t.Errorf("certificate %d differs", i)
		}
	}
	if len(sd.signers) != len(lib.Signers) || len(sd.signers) != 1 {
		t.Fatalf("%d signers, library %d; want 1", len(sd.signers), len(lib.Signers))
	}
	got, want := sd.signers[0], lib.Signers[0]
	if !bytes.Equal(got.issuer, want.IssuerAndSerialNumber.IssuerName.FullBytes) ||
		got.serial.Cmp(want.IssuerAndSerialNumber.SerialNumber) != 0 {
		t.Errorf("signer identifier differs")
	}
	if !got.digestAlgorithm.Algorithm.Equal(want.DigestAlgorithm.Algorithm) ||
		!got.signatureAlgorithm.Algorithm.Equal(want.DigestEncryptionAlgorithm.Algorithm) ||
		!bytes.Equal(got.signatureAlgorithm.Parameters.FullBytes, want.DigestEncryptionAlgorithm.Parameters.FullBytes) {
		t.Errorf("algorithms %v/%v, library %v/%v", got.digestAlgorithm, got.signatureAlgorithm,
			want.DigestAlgorithm, want.DigestEncryptionAlgorithm)
	}
	if !bytes.Equal(got.signature, want.EncryptedDigest) {
		t.Errorf("signature value differs")
	}
	if got.hasSignedAttrs != (len(want.AuthenticatedAttributes) > 0) || len(got.signedAttrs) != len(want.AuthenticatedAttributes) {
		t.Fatalf("%d signed attributes, library %d", len(got.signedAttrs), len(want.AuthenticatedAttributes))
	}
	for i, a := range got.signedAttrs {
		w := want.AuthenticatedAttributes[i]
		if !a.oid.Equal(w.Type) || !bytes.Equal(a.values, w.Value.Bytes) || !bytes.Equal(a.set, w.Value.FullBytes) {
			t.Errorf("signed attribute %d (%s) differs", i, a.oid)
		}
	}
}

// TestSignerBySubjectKeyIdentifier verifies what `openssl cms -sign
// -keyid` writes: a SignerInfo naming its certificate by subject key
// identifier (RFC 5652 5.3, version 3), which the pkcs7 library could not
// read.
func TestSignerBySubjectKeyIdentifier(t *testing.T) {
	needTool(t, "openssl")
	dir := t.TempDir()
	path := func(name string) string { return filepath.Join(dir, name) }
	ext := writeFile(t, path("leaf.ext"), []byte("subjectAltName = email:erin@example.com\n"+
		"keyUsage = critical, digitalSignature\nextendedKeyUsage = emailProtection\n"+
		"subjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n"))
	runTool(t, nil, nil, "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", path("root.key"), "-subj", "/CN=SKI Test Root", "-days", "30", "-out", path("root.pem"))
	runTool(t, nil, nil, "openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
		"-keyout", path("leaf.key"), "-subj", "/CN=Erin", "-out", path("leaf.csr"))
	runTool(t, nil, nil, "openssl", "x509", "-req", "-in", path("leaf.csr"), "-CA", path("root.pem"), "-CAkey", path("root.key"),
		"-set_serial", "7", "-days", "30", "-extfile", ext, "-out", path("leaf.pem"))
	content := []byte("Content-Type: text/plain\r\n\r\nPlease renew my certificate.\r\n")
	in := writeFile(t, path("content.txt"), content)
	sig := runTool(t, nil, nil, "openssl", "cms", "-sign", "-keyid", "-binary", "-md", "sha256", "-outform", "DER",
		"-in", in, "-signer", path("leaf.pem"), "-inkey", path("leaf.key"))

	der, _, err := toDER(sig)
	if err != nil {
		t.Fatal(err)
	}
	sd, err := parseSignedData(der)
	if err != nil {
		t.Fatal(err)
	}
	if len(sd.signers) != 1 || len(sd.signers[0].subjectKeyID) == 0 || sd.signers[0].serial != nil {
		t.Fatalf("signer identified by %+v; want a subject key identifier", sd.signers)
	}

	rootPEM, err := os.ReadFile(path("root.pem"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(rootPEM)
	if blk == nil {
		t.Fatal("root.pem: no PEM block")
	}
	root, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(root)
	opts := VerifyOptions{Roots: pool, At: root.NotBefore.Add(time.Hour)}
	res, err := VerifyDetached(sig, content, opts)
	if err != nil {
		t.Fatalf("VerifyDetached: %v", err)
	}
	if !res.SignerHasAddress("erin@example.com") || res.Signer.SerialNumber.Int64() != 7 {
		t.Errorf("signer %v", res.Signer.Subject)
	}
	// The same signature over other content still fails.
	if _, err := VerifyDetached(sig, append(content, 'x'), opts); !errors.Is(err, ErrBadSignature) {
		t.Errorf("tampered content: %v, want ErrBadSignature", err)
	}
	// A subject key identifier that names no carried certificate.
	bad := bytes.Replace(der, res.Signer.SubjectKeyId, bytes.Repeat([]byte{0xee}, len(res.Signer.SubjectKeyId)), 1)
	if _, err := VerifyDetached(bad, content, opts); !errors.Is(err, ErrUntrustedSigner) {
		t.Errorf("unknown subject key identifier: %v, want ErrUntrustedSigner", err)
	}
}

// elements splits the contents of a constructed DER element into its
// elements, whole.
func elements(s cryptobyte.String) [][]byte {
	var out [][]byte
	for !s.Empty() {
		var e cryptobyte.String
		var tag cbasn1.Tag
		if !s.ReadAnyASN1Element(&e, &tag) {
			panic("malformed test input")
		}
		out = append(out, e)
	}
	return out
}

// TestSignedDataMalformed: each structural fault in an otherwise valid
// SignedData is refused as ErrMalformed (or ErrNotSigned), never a panic.
func TestSignedDataMalformed(t *testing.T) {
	r, err := ParseRequest(readGolden(t, "openssl-cms-detached-ec-crlf.eml"), DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	good, _, err := toDER(r.cms)
	if err != nil {
		t.Fatal(err)
	}
	// rebuild re-encodes good's SignedData with edit applied to the list of
	// its fields (version, digestAlgorithms, encapContentInfo,
	// certificates, signerInfos).
	rebuild := func(edit func(fields [][]byte) [][]byte) []byte {
		in := cryptobyte.String(good)
		var ci, wrapped, body cryptobyte.String
		var oid cryptobyte.String
		in.ReadASN1(&ci, cbasn1.SEQUENCE)
		ci.ReadASN1Element(&oid, cbasn1.OBJECT_IDENTIFIER)
		ci.ReadASN1(&wrapped, tagContext0)
		wrapped.ReadASN1(&body, cbasn1.SEQUENCE)
		fields := edit(elements(body))
		var b cryptobyte.Builder
		b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
			b.AddBytes(oid)
			b.AddASN1(tagContext0, func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
					for _, f := range fields {
						b.AddBytes(f)
					}
				})
			})
		})
		return b.BytesOrPanic()
	}
	if _, err := parseSignedData(rebuild(func(f [][]byte) [][]byte { return f })); err != nil {
		t.Fatalf("the unedited rebuild does not parse: %v", err)
	}
	last := func(f [][]byte) []byte { return f[len(f)-1] }
	for _, tt := range []struct {
		name string
		der  []byte
		want error
	}{
		{"empty", nil, ErrMalformed},
		{"trailing byte", append(append([]byte{}, good...), 0), ErrMalformed},
		{"truncated", good[:len(good)-1], ErrMalformed},
		{"no signerInfos", rebuild(func(f [][]byte) [][]byte { return f[:len(f)-1] }), ErrMalformed},
		{"extra field", rebuild(func(f [][]byte) [][]byte { return append(f, last(f)) }), ErrMalformed},
		{"signerInfos not a SET", rebuild(func(f [][]byte) [][]byte {
			s := append([]byte{}, last(f)...)
			s[0] = 0x30
			return append(f[:len(f)-1], s)
		}), ErrMalformed},
		{"a garbage certificate", rebuild(func(f [][]byte) [][]byte {
			var b cryptobyte.Builder
			b.AddASN1(tagContext0, func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) { b.AddASN1Int64(1) })
			})
			return append(f[:3], b.BytesOrPanic(), last(f))
		}), ErrMalformed},
		{"eContent not an OCTET STRING", rebuild(func(f [][]byte) [][]byte {
			var b cryptobyte.Builder
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1ObjectIdentifier(oidData)
				b.AddASN1(tagContext0, func(b *cryptobyte.Builder) { b.AddASN1Int64(5) })
			})
			return append(append(f[:2:2], b.BytesOrPanic()), f[3:]...)
		}), ErrMalformed},
		{"a SignerInfo without its signature", rebuild(func(f [][]byte) [][]byte {
			in := cryptobyte.String(last(f))
			var set, si cryptobyte.String
			in.ReadASN1(&set, cbasn1.SET)
			set.ReadASN1(&si, cbasn1.SEQUENCE)
			cut := []byte(si)
			var b cryptobyte.Builder
			b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
					// Drop the trailing OCTET STRING (the signature).
					fields := elements(cut)
					for _, e := range fields[:len(fields)-1] {
						b.AddBytes(e)
					}
				})
			})
			return append(f[:len(f)-1], b.BytesOrPanic())
		}), ErrMalformed},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseSignedData(tt.der)
			if !errors.Is(err, tt.want) {
				t.Errorf("err = %v, want %v", err, tt.want)
			}
			if err != nil && !strings.Contains(err.Error(), "bad ") && !strings.Contains(err.Error(), "certificate") {
				t.Errorf("error %q does not say what is wrong", err)
			}
		})
	}
}

// TestToDERFastPath: DER input comes back as it is, without a parse tree;
// BER input (streamed, or with a length in a longer form than needed) is
// converted; and both ways give what the parse tree gives.
func TestToDERFastPath(t *testing.T) {
	for _, name := range signedGolden {
		r, err := ParseRequest(readGolden(t, name), DefaultLimits())
		if err != nil {
			t.Fatal(err)
		}
		der, oid, err := toDER(r.cms)
		slow, slowOID, slowErr := toDERSlow(r.cms)
		if err != nil || slowErr != nil || !bytes.Equal(der, slow) || !oid.Equal(slowOID) {
			t.Fatalf("%s: toDER and toDERSlow differ (%v, %v)", name, err, slowErr)
		}
		same := bytes.Equal(der, r.cms)
		if fast := &der[0] == &r.cms[0]; fast != same {
			t.Errorf("%s: input is DER %v, returned without conversion %v", name, same, fast)
		}
		if name == "openssl-cms-opaque-stream-ec.eml" && same {
			t.Errorf("%s: streamed BER came back unconverted", name)
		}
	}
	// SEQUENCE { OID signedData, [0] { OCTET STRING "x" } }, the OCTET
	// STRING's length in two octets where one would do.
	oidBytes := []byte{0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02}
	long := append(append([]byte{0x30, 0x11}, oidBytes...), 0xa0, 0x04, 0x04, 0x81, 0x01, 'x')
	want := append(append([]byte{0x30, 0x10}, oidBytes...), 0xa0, 0x03, 0x04, 0x01, 'x')
	der, oid, err := toDER(long)
	if err != nil || !oid.Equal(oidSignedData) || !bytes.Equal(der, want) {
		t.Errorf("non-minimal length: %x, %v, %v; want %x", der, oid, err, want)
	}
}

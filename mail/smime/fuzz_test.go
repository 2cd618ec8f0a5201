package smime

import (
	"crypto"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The fuzz targets are seeded from the golden samples; their corpus is
// kept in testdata/fuzz. Run one with
//
//	go test -run='^$' -fuzz=FuzzParseRequest -fuzztime=2m -fuzzminimizetime=5s ./mail/smime/
//
// (a short -fuzzminimizetime keeps a single worker from spending most of
// the run minimising one new input).

var sentinels = []error{ErrNotSigned, ErrBadSignature, ErrUntrustedSigner, ErrSignerExpired, ErrWeakAlgorithm,
	ErrUnsupported, ErrMalformed, ErrLimit, ErrNotRecipient, ErrDecrypt, ErrBadCSR, ErrEncrypted}

// checkSentinel fails when err is not nil and wraps none of the sentinels:
// every outcome on bad input must be classifiable by the caller.
func checkSentinel(t *testing.T, what string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return
		}
	}
	t.Fatalf("%s: error %q wraps no sentinel", what, err)
}

func goldenMessages(f *testing.F) [][]byte {
	f.Helper()
	files, err := filepath.Glob(filepath.Join(goldenDir, "*.eml"))
	if err != nil || len(files) == 0 {
		f.Fatalf("no golden messages: %v", err)
	}
	var out [][]byte
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// goldenCMS returns the CMS objects of the golden messages.
func goldenCMS(f *testing.F) (cms [][]byte, content [][]byte) {
	for _, m := range goldenMessages(f) {
		r, err := ParseRequest(m, Limits{})
		if err != nil || r.cms == nil {
			continue
		}
		cms = append(cms, r.cms)
		content = append(content, r.signed)
	}
	return cms, content
}

func FuzzParseRequest(f *testing.F) {
	for _, m := range goldenMessages(f) {
		f.Add(m)
	}
	g := loadGoldenPKI(f)
	opts := g.opts()
	key := g.kms.key.(crypto.Decrypter)
	f.Fuzz(func(t *testing.T, raw []byte) {
		r, err := ParseRequest(raw, Limits{})
		checkSentinel(t, "ParseRequest", err)
		for depth := 0; err == nil && depth < 3; depth++ {
			_, err := r.UnverifiedContent()
			checkSentinel(t, "UnverifiedContent", err)
			_, err = r.Verify(opts)
			checkSentinel(t, "Verify", err)
			if r.Kind != KindEnveloped {
				break
			}
			r, err = r.Decrypt(g.kms.cert, key)
			checkSentinel(t, "Decrypt", err)
			if err != nil {
				break
			}
		}
	})
}

func FuzzVerify(f *testing.F) {
	cms, content := goldenCMS(f)
	for i := range cms {
		f.Add(cms[i], content[i])
	}
	opts := loadGoldenPKI(f).opts()
	f.Fuzz(func(t *testing.T, sig, content []byte) {
		_, err := VerifyDetached(sig, content, opts)
		checkSentinel(t, "VerifyDetached", err)
		_, err = VerifyOpaque(sig, opts)
		checkSentinel(t, "VerifyOpaque", err)
	})
}

func FuzzParseCMS(f *testing.F) {
	cms, _ := goldenCMS(f)
	for _, c := range cms {
		f.Add(c)
	}
	g := loadGoldenPKI(f)
	key := g.kms.key.(crypto.Decrypter)
	f.Fuzz(func(t *testing.T, in []byte) {
		der, oid, err := toDER(in)
		checkSentinel(t, "toDER", err)
		// The DER fast path and the parse tree agree.
		slow, slowOID, slowErr := toDERSlow(in)
		if (err == nil) != (slowErr == nil) || string(der) != string(slow) || !oid.Equal(slowOID) {
			t.Fatalf("toDER %x, %v, %v; toDERSlow %x, %v, %v", der, oid, err, slow, slowOID, slowErr)
		}
		if err == nil {
			// DER is a fixed point of the conversion.
			again, _, err := toDER(der)
			if err != nil || string(again) != string(der) {
				t.Fatalf("toDER is not idempotent: %v", err)
			}
		}
		_, err = ParseCertsOnly(in)
		checkSentinel(t, "ParseCertsOnly", err)
		_, err = Decrypt(in, g.kms.cert, key)
		checkSentinel(t, "Decrypt", err)
	})
}

func FuzzParseCSR(f *testing.F) {
	pemCSR := readGolden(f, "openssl-req-challenge.csr")
	der, _ := pemFirst(pemCSR)
	f.Add(der)
	f.Add(pemCSR)
	f.Add([]byte(strings.Replace(string(pemCSR), "CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST", 2)))
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := ParseCSR(in)
		checkSentinel(t, "ParseCSR", err)
		if err == nil && c.Request.CheckSignature() != nil {
			t.Fatal("ParseCSR returned a request whose signature does not verify")
		}
		_, err = csrsFromPEM(in)
		checkSentinel(t, "csrsFromPEM", err)
	})
}

// FuzzSignedData checks parseSignedData against the pkcs7 library it
// replaced: neither may panic past its guard, every refusal is classified,
// and when both read an input they agree on the content and the signer.
func FuzzSignedData(f *testing.F) {
	cms, _ := goldenCMS(f)
	for _, c := range cms {
		f.Add(c)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		der, ctype, err := toDER(in)
		if err != nil || !ctype.Equal(oidSignedData) {
			return
		}
		sd, err := parseSignedData(der)
		checkSentinel(t, "parseSignedData", err)
		lib, lerr := parseLibrary(der)
		if err != nil || lerr != nil || len(sd.signers) != 1 || len(lib.Signers) != 1 {
			return
		}
		si, li := sd.signers[0], lib.Signers[0]
		if string(sd.content) != string(lib.Content) || string(si.signature) != string(li.EncryptedDigest) ||
			(si.serial != nil && si.serial.Cmp(li.IssuerAndSerialNumber.SerialNumber) != 0) {
			t.Fatalf("parseSignedData and the library disagree on %x", der)
		}
	})
}

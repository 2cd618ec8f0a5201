package smime

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The golden test PKI lives in testdata/smime/pki (made by
// TestGenerateGolden). Its certificates are valid from 2025 to 2045, except
// carol's, which expired in 2021.
var (
	goldenDir = filepath.Join("..", "..", "testdata", "smime")
	pkiDir    = filepath.Join(goldenDir, "pki")
	// receiptTime is when the golden messages are taken to have arrived.
	receiptTime = time.Date(2027, 3, 1, 12, 0, 0, 0, time.UTC)
)

type identity struct {
	cert  *x509.Certificate
	key   crypto.Signer
	chain []*x509.Certificate // issuer first, root last
}

func (id identity) signer() Signer {
	return Signer{Key: id.key, Cert: id.cert, Chain: id.chain[:len(id.chain)-1]}
}

// testPKI is a throwaway CA: a root, an issuing CA, and users.
type testPKI struct {
	root, ca identity
	evilRoot identity // an unrelated CA, for "unknown signer"
	serial   int64
}

var (
	pkiStart = time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	pkiEnd   = time.Date(2045, 1, 1, 0, 0, 0, 0, time.UTC)
	// The CAs predate every user, carol's expired certificate included.
	caStart = time.Date(2015, 1, 1, 0, 0, 0, 0, time.UTC)
)

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	p := &testPKI{serial: 100}
	p.root = p.makeCA(t, "kms test root", nil)
	p.ca = p.makeCA(t, "kms test issuing CA", &p.root)
	p.evilRoot = p.makeCA(t, "unrelated root", nil)
	return p
}

func newKey(t testing.TB, kind string) crypto.Signer {
	t.Helper()
	var k crypto.Signer
	var err error
	switch kind {
	case "rsa":
		k, err = rsa.GenerateKey(rand.Reader, 2048)
	case "ec":
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	default:
		t.Fatalf("key kind %q", kind)
	}
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func (p *testPKI) nextSerial() *big.Int { p.serial++; return big.NewInt(p.serial) }

func (p *testPKI) makeCA(t testing.TB, name string, parent *identity) identity {
	t.Helper()
	// RSA CA keys: every interop tool (gpgsm included) verifies RSA chains.
	key := newKey(t, "rsa")
	tmpl := &x509.Certificate{
		SerialNumber:          p.nextSerial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"kms tests"}},
		NotBefore:             caStart,
		NotAfter:              pkiEnd,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	issuer, issuerKey := tmpl, key
	var chain []*x509.Certificate
	if parent != nil {
		issuer, issuerKey, chain = parent.cert, parent.key, append([]*x509.Certificate{parent.cert}, parent.chain...)
	}
	cert := mustCert(t, tmpl, issuer, key.Public(), issuerKey)
	return identity{cert: cert, key: key, chain: chain}
}

type userOpts struct {
	notBefore, notAfter time.Time
	eku                 []x509.ExtKeyUsage // nil: emailProtection
	keyUsage            x509.KeyUsage      // 0: by key type
	issuer              *identity          // nil: the issuing CA
}

// issue makes an end-entity S/MIME certificate for email.
func (p *testPKI) issue(t testing.TB, email, kind string, o userOpts) identity {
	t.Helper()
	key := newKey(t, kind)
	if o.notBefore.IsZero() {
		o.notBefore, o.notAfter = pkiStart, pkiEnd
	}
	if o.eku == nil {
		o.eku = []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}
	}
	if o.keyUsage == 0 {
		o.keyUsage = x509.KeyUsageDigitalSignature
		if kind == "rsa" {
			o.keyUsage |= x509.KeyUsageKeyEncipherment
		}
	}
	issuer := &p.ca
	if o.issuer != nil {
		issuer = o.issuer
	}
	tmpl := &x509.Certificate{
		SerialNumber:   p.nextSerial(),
		Subject:        pkix.Name{CommonName: email},
		EmailAddresses: []string{email},
		NotBefore:      o.notBefore,
		NotAfter:       o.notAfter,
		KeyUsage:       o.keyUsage,
		ExtKeyUsage:    o.eku,
	}
	cert := mustCert(t, tmpl, issuer.cert, key.Public(), issuer.key)
	return identity{cert: cert, key: key, chain: append([]*x509.Certificate{issuer.cert}, issuer.chain...)}
}

func mustCert(t testing.TB, tmpl, issuer *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) *x509.Certificate {
	t.Helper()
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (p *testPKI) roots() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.root.cert)
	return pool
}

// goldenPKI is the PKI the golden messages were made with.
type goldenPKI struct {
	root                            *x509.Certificate
	ca                              *x509.Certificate
	alice, bob, kms, carol, mallory identity
}

func loadGoldenPKI(t testing.TB) *goldenPKI {
	t.Helper()
	g := &goldenPKI{root: readCert(t, "root"), ca: readCert(t, "ca")}
	chain := []*x509.Certificate{g.ca, g.root}
	load := func(name string, chain []*x509.Certificate) identity {
		return identity{cert: readCert(t, name), key: readKey(t, name), chain: chain}
	}
	g.alice = load("alice-rsa", chain)
	g.bob = load("bob-ec", chain)
	g.kms = load("kms", chain)
	g.carol = load("carol-expired", chain)
	g.mallory = load("mallory-unknown-ca", []*x509.Certificate{readCert(t, "evil-root")})
	return g
}

func (g *goldenPKI) opts() VerifyOptions {
	pool := x509.NewCertPool()
	pool.AddCert(g.root)
	return VerifyOptions{Roots: pool, At: receiptTime}
}

func readCert(t testing.TB, name string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(pkiDir, name+".pem"))
	if err != nil {
		t.Fatalf("golden PKI missing (run TestGenerateGolden with SMIME_REGEN=1): %v", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s.pem: no PEM block", name)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func readKey(t testing.TB, name string) crypto.Signer {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(pkiDir, name+".key"))
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s.key: no PEM block", name)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k.(crypto.Signer)
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
}

package policy

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"math/big"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// testKeys generates one real key of each size once for the whole package:
// RSA generation is the slow part of these tests.
var testKeys = sync.OnceValue(func() map[string]crypto.PublicKey {
	keys := map[string]crypto.PublicKey{}
	for _, bits := range []int{1024, 2048, 3072, 4096} {
		k, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			panic(err)
		}
		keys["rsa"+itoa(bits)] = &k.PublicKey
	}
	for name, c := range map[string]elliptic.Curve{"p224": elliptic.P224(), "p256": elliptic.P256(), "p384": elliptic.P384(), "p521": elliptic.P521()} {
		k, err := ecdsa.GenerateKey(c, rand.Reader)
		if err != nil {
			panic(err)
		}
		keys[name] = &k.PublicKey
	}
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	keys["ed25519"] = pub
	return keys
})

func itoa(n int) string { return big.NewInt(int64(n)).String() }

func rsaKey(t *testing.T, name string) *rsa.PublicKey {
	t.Helper()
	return testKeys()[name].(*rsa.PublicKey)
}

func TestKeyTypeOf(t *testing.T) {
	for _, name := range []string{"rsa2048", "rsa3072", "rsa4096", "p256", "p384"} {
		got, err := KeyTypeOf(testKeys()[name])
		if err != nil || got != KeyType(name) {
			t.Errorf("KeyTypeOf(%s key) = %q, %v; want %q", name, got, err, name)
		}
	}
	refused := map[string]struct {
		key     crypto.PublicKey
		mention string
	}{
		"rsa1024":       {testKeys()["rsa1024"], "RSA key of 1024 bits"},
		"p224":          {testKeys()["p224"], "curve P-224"},
		"p521":          {testKeys()["p521"], "curve P-521"},
		"ed25519":       {testKeys()["ed25519"], "ed25519.PublicKey"},
		"nil":           {nil, "missing"},
		"nil rsa":       {(*rsa.PublicKey)(nil), "empty"},
		"nil ecdsa":     {(*ecdsa.PublicKey)(nil), "no curve"},
		"rsa by value":  {*rsaKey(t, "rsa2048"), "rsa.PublicKey"},
		"fake P-256":    {&ecdsa.PublicKey{Curve: fakeP256()}, "curve P-256"},
		"rsa 2056 bits": {&rsa.PublicKey{N: new(big.Int).Lsh(big.NewInt(1), 2055), E: 65537}, "2056 bits"},
	}
	for name, tc := range refused {
		got, err := KeyTypeOf(tc.key)
		if !errors.Is(err, ErrKeyNotAllowed) {
			t.Errorf("KeyTypeOf(%s) = %q, %v; want ErrKeyNotAllowed", name, got, err)
			continue
		}
		if !strings.Contains(err.Error(), tc.mention) || !strings.Contains(err.Error(), "p256") {
			t.Errorf("KeyTypeOf(%s): %q should name the key (%q) and what is accepted", name, err, tc.mention)
		}
	}
}

// fakeP256 is a curve that calls itself P-256 but is not crypto/elliptic's.
func fakeP256() elliptic.Curve {
	params := *elliptic.P256().Params()
	return &params
}

func TestCheckKeyAccepts(t *testing.T) {
	p := Default()
	for _, name := range []string{"rsa2048", "rsa3072", "rsa4096", "p256", "p384"} {
		if err := p.CheckKey(testKeys()[name]); err != nil {
			t.Errorf("CheckKey(%s): %v", name, err)
		}
	}
	// An odd exponent above 65537 is unusual but sound.
	k := *rsaKey(t, "rsa2048")
	k.E = 65539
	if err := p.CheckKey(&k); err != nil {
		t.Errorf("CheckKey(exponent 65539): %v", err)
	}
}

func TestCheckKeyRefuses(t *testing.T) {
	def := Default()
	ecOnly := Default()
	ecOnly.Keys = []KeyType{P256, P384}
	rsaOnly := Default()
	rsaOnly.Keys = []KeyType{RSA3072}

	n2048 := rsaKey(t, "rsa2048").N
	withE := func(e int) *rsa.PublicKey { return &rsa.PublicKey{N: n2048, E: e} }
	withN := func(n *big.Int) *rsa.PublicKey { return &rsa.PublicKey{N: n, E: 65537} }
	p256 := elliptic.P256()

	tests := []struct {
		name    string
		policy  Policy
		key     crypto.PublicKey
		want    error
		mention string
	}{
		{"RSA 1024", def, testKeys()["rsa1024"], ErrWeakKey, "1024 bits is too short"},
		{"P-224", def, testKeys()["p224"], ErrKeyNotAllowed, "P-224"},
		{"P-521", def, testKeys()["p521"], ErrKeyNotAllowed, "P-521"},
		{"Ed25519", def, testKeys()["ed25519"], ErrKeyNotAllowed, "ed25519"},
		{"nil", def, nil, ErrKeyNotAllowed, "missing"},
		{"RSA not in policy", ecOnly, testKeys()["rsa2048"], ErrKeyNotAllowed, "does not accept rsa2048 keys; use one of p256, p384"},
		{"RSA size not in policy", rsaOnly, testKeys()["rsa2048"], ErrKeyNotAllowed, "does not accept rsa2048"},
		{"ECDSA not in policy", rsaOnly, testKeys()["p256"], ErrKeyNotAllowed, "does not accept p256"},
		{"policy with no keys", Policy{}, testKeys()["p256"], ErrKeyNotAllowed, "lists no key types"},
		{"RSA 8192-bit modulus", def, withN(new(big.Int).Add(new(big.Int).Lsh(big.NewInt(1), 8191), big.NewInt(1051))), ErrKeyNotAllowed, "8192 bits"},
		{"exponent 3", def, withE(3), ErrWeakKey, "exponent 3"},
		{"exponent 1", def, withE(1), ErrWeakKey, "exponent 1"},
		{"exponent 65535", def, withE(65535), ErrWeakKey, "exponent 65535"},
		{"exponent even", def, withE(65538), ErrWeakKey, "exponent 65538"},
		{"exponent above 2^32", def, withE(1<<32 + 1), ErrWeakKey, "exponent 4294967297"},
		{"exponent negative", def, withE(-65537), ErrWeakKey, "exponent -65537"},
		{"modulus even", def, withN(new(big.Int).Add(n2048, big.NewInt(1))), ErrWeakKey, "even"},
		{"modulus divisible by 751", def, withN(multipleOf(t, 751)), ErrWeakKey, "divisible by 751"},
		{"modulus divisible by 3", def, withN(multipleOf(t, 3)), ErrWeakKey, "divisible by 3"},
		{"modulus zero", def, withN(new(big.Int)), ErrWeakKey, "no modulus"},
		{"nil RSA key", def, (*rsa.PublicKey)(nil), ErrWeakKey, "no modulus"},
		{"nil ECDSA key", def, (*ecdsa.PublicKey)(nil), ErrKeyNotAllowed, "no curve"},
		{"modulus missing", def, &rsa.PublicKey{E: 65537}, ErrWeakKey, "no modulus"},
		{"primes too close", def, withN(closePrimesModulus()), ErrWeakKey, "Fermat"},
		{"modulus a square", def, withN(squareModulus(t)), ErrWeakKey, "Fermat"},
		{"ROCA fingerprint", def, withN(rocaModulus()), ErrWeakKey, "ROCA"},
		{"ECDSA point not on the curve", def, ecPoint(p256, big.NewInt(1), big.NewInt(1)), ErrWeakKey, "not a valid point of P-256"},
		{"ECDSA point at infinity", def, ecPoint(p256, new(big.Int), new(big.Int)), ErrWeakKey, "not a valid point"},
		{"ECDSA x not reduced", def, ecPoint(p256, new(big.Int).Set(p256.Params().P), big.NewInt(1)), ErrWeakKey, "not a valid point"},
		{"ECDSA no point", def, &ecdsa.PublicKey{Curve: p256}, ErrWeakKey, "no point"},
		{"ECDSA fake P-256", def, ecPoint(fakeP256(), big.NewInt(1), big.NewInt(1)), ErrKeyNotAllowed, "curve P-256 is not accepted"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.policy.CheckKey(tc.key)
			if !errors.Is(err, tc.want) {
				t.Fatalf("CheckKey: %v, want an error wrapping %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("CheckKey: %q does not mention %q", err, tc.mention)
			}
		})
	}
}

// ecPoint builds an ECDSA public key from raw coordinates, which is the only
// way to get an invalid point past crypto/x509.
func ecPoint(c elliptic.Curve, x, y *big.Int) *ecdsa.PublicKey {
	//lint:ignore SA1019 the test needs raw coordinates to build invalid points
	return &ecdsa.PublicKey{Curve: c, X: x, Y: y}
}

// multipleOf returns a 2048-bit modulus f*p*r with p and r large primes, so
// that f is its only small factor.
func multipleOf(t *testing.T, f int64) *big.Int {
	t.Helper()
	bf := big.NewInt(f)
	for {
		p, err := rand.Prime(rand.Reader, 1024)
		if err != nil {
			t.Fatal(err)
		}
		r, err := rand.Prime(rand.Reader, 1024-bf.BitLen())
		if err != nil {
			t.Fatal(err)
		}
		if n := new(big.Int).Mul(p, r); n.Mul(n, bf).BitLen() == 2048 {
			return n
		}
	}
}

// nextPrime returns the smallest probable prime >= n, for odd n.
func nextPrime(n *big.Int) *big.Int {
	p := new(big.Int).Set(n)
	for !p.ProbablyPrime(20) {
		p.Add(p, big.NewInt(2))
	}
	return p
}

// closePrimesModulus returns p*q for 1024-bit primes p and q whose top half
// agrees: q is the first prime after p + 2^400. It is made once.
var closePrimesModulus = sync.OnceValue(func() *big.Int {
	p, err := rand.Prime(rand.Reader, 1024)
	if err != nil {
		panic(err)
	}
	q := nextPrime(new(big.Int).Add(p, new(big.Int).Lsh(big.NewInt(1), 400)))
	return new(big.Int).Mul(p, q)
})

// squareModulus returns p*p for a 1024-bit prime p: the limiting case of
// close primes, which boulder's start at floor(sqrt(n))+1 would miss.
func squareModulus(t *testing.T) *big.Int {
	t.Helper()
	p, err := rand.Prime(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	return new(big.Int).Mul(p, p)
}

// rocaModulus returns a 2048-bit modulus built the way vulnerable Infineon
// chips build theirs: each prime is k*M + (65537^a mod M), with M the product
// of the first 39 primes (the real chips use more primes for bigger keys,
// which only adds structure). It is made once.
var rocaModulus = sync.OnceValue(func() *big.Int {
	m := big.NewInt(1)
	for _, p := range primesBelow(168) {
		m.Mul(m, big.NewInt(p))
	}
	g := big.NewInt(65537)
	lo := new(big.Int).Lsh(big.NewInt(3), 1022) // 1.5 * 2^1023, so p*q has 2048 bits
	span := new(big.Int).Sub(new(big.Int).Lsh(big.NewInt(1), 1024), lo)
	span.Div(span, m)
	prime := func() *big.Int {
		for {
			a, err := rand.Int(rand.Reader, m)
			if err != nil {
				panic(err)
			}
			k, err := rand.Int(rand.Reader, span)
			if err != nil {
				panic(err)
			}
			k.Add(k, new(big.Int).Div(lo, m)).Add(k, big.NewInt(1))
			p := k.Mul(k, m).Add(k, new(big.Int).Exp(g, a, m))
			if p.BitLen() == 1024 && p.ProbablyPrime(20) {
				return p
			}
		}
	}
	return new(big.Int).Mul(prime(), prime())
})

func TestFermatFactor(t *testing.T) {
	// 5959 = 59 * 101. ceil(sqrt(5959)) = 78 and (59+101)/2 = 80, so the
	// third round (a = 80, b = 21) finds the factors and two rounds do not.
	n := big.NewInt(5959)
	if _, _, ok := fermatFactor(n, 2); ok {
		t.Error("5959 factored in 2 rounds; the third should be the first to succeed")
	}
	p, q, ok := fermatFactor(n, 3)
	if !ok || p.Int64() != 101 || q.Int64() != 59 {
		t.Errorf("fermatFactor(5959, 3) = %v, %v, %v; want 101, 59, true", p, q, ok)
	}
	if p, q, ok := fermatFactor(big.NewInt(49), 1); !ok || p.Int64() != 7 || q.Int64() != 7 {
		t.Errorf("fermatFactor(49, 1) = %v, %v, %v; want 7, 7, true", p, q, ok)
	}
	// A prime has only the trivial factorisation, which must not count.
	if p, q, ok := fermatFactor(big.NewInt(13), 100); ok {
		t.Errorf("fermatFactor(13) = %v, %v; a prime must not factor", p, q)
	}
	closeN := closePrimesModulus()
	p, q, ok = fermatFactor(closeN, fermatRounds)
	if !ok || new(big.Int).Mul(p, q).Cmp(closeN) != 0 {
		t.Errorf("close primes not factored: %v, %v, %v", p, q, ok)
	}
	for _, name := range []string{"rsa2048", "rsa3072", "rsa4096"} {
		if _, _, ok := fermatFactor(rsaKey(t, name).N, fermatRounds); ok {
			t.Errorf("a freshly generated %s key factored by Fermat's method", name)
		}
	}
}

func TestSmallPrimes(t *testing.T) {
	ps := smallPrimes()
	// 751 is the 133rd prime and the last one below BR's 752.
	if len(ps) != 133 || ps[0] != 2 || ps[len(ps)-1] != 751 {
		t.Fatalf("smallPrimes: %d primes from %d to %d, want 133 from 2 to 751", len(ps), ps[0], ps[len(ps)-1])
	}
	if f, ok := smallFactor(big.NewInt(757 * 761)); ok {
		t.Errorf("757*761 reported divisible by %d", f)
	}
	if f, ok := smallFactor(big.NewInt(743 * 761)); !ok || f != 743 {
		t.Errorf("smallFactor(743*761) = %d, %v; want 743", f, ok)
	}
}

func TestROCAFingerprint(t *testing.T) {
	n := rocaModulus()
	if n.BitLen() != 2048 {
		t.Fatalf("ROCA test modulus has %d bits, want 2048", n.BitLen())
	}
	if !rocaFingerprint(n) {
		t.Error("a ROCA-form modulus is not flagged")
	}
	for _, name := range []string{"rsa1024", "rsa2048", "rsa3072", "rsa4096"} {
		if rocaFingerprint(rsaKey(t, name).N) {
			t.Errorf("a freshly generated %s key is flagged as ROCA", name)
		}
	}
}

// TestCheckKeyOpenSSL checks keys made by an independent tool, parsed the way
// kms parses them from CSRs: OpenSSL can make an RSA key with exponent 3,
// which Go's generator cannot.
func TestCheckKeyOpenSSL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("openssl not installed")
	}
	tests := []struct {
		name string
		args []string
		want error // nil: accepted
	}{
		{"rsa2048 e=65537", []string{"-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"}, nil},
		{"rsa2048 e=3", []string{"-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-pkeyopt", "rsa_keygen_pubexp:3"}, ErrWeakKey},
		{"p384", []string{"-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"}, nil},
		{"p521", []string{"-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-521"}, ErrKeyNotAllowed},
		{"ed25519", []string{"-algorithm", "ED25519"}, ErrKeyNotAllowed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			keyFile := filepath.Join(t.TempDir(), "key.pem")
			gen := append([]string{"genpkey", "-out", keyFile}, tc.args...)
			if out, err := exec.Command("openssl", gen...).CombinedOutput(); err != nil {
				t.Fatalf("openssl %v: %v\n%s", gen, err, out)
			}
			out, err := exec.Command("openssl", "pkey", "-in", keyFile, "-pubout").Output()
			if err != nil {
				t.Fatalf("openssl pkey -pubout: %v", err)
			}
			block, _ := pem.Decode(out)
			if block == nil {
				t.Fatalf("no PEM in openssl output %q", out)
			}
			pub, err := x509.ParsePKIXPublicKey(block.Bytes)
			if err != nil {
				t.Fatalf("parse public key: %v", err)
			}
			err = Default().CheckKey(pub)
			if tc.want == nil && err != nil {
				t.Errorf("CheckKey: %v, want nil", err)
			}
			if tc.want != nil && !errors.Is(err, tc.want) {
				t.Errorf("CheckKey: %v, want an error wrapping %v", err, tc.want)
			}
		})
	}
}

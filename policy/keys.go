package policy

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"fmt"
	"slices"
	"time"
)

// ErrKeyNotAllowed means a public key is of a type or size that kms, or the
// domain's policy, does not certify. The user has to generate a key of an
// accepted type.
var ErrKeyNotAllowed = errors.New("key type not allowed")

// ErrWeakKey means a public key is of an accepted type but is broken or
// easily broken (too short, bad exponent, factorable modulus, invalid curve
// point). The user has to generate a new key, preferably with other software
// or hardware.
var ErrWeakKey = errors.New("weak key")

// KeyTypeOf names the KeyType of pub: an *rsa.PublicKey of exactly 2048, 3072
// or 4096 bits, or an *ecdsa.PublicKey on P-256 or P-384. Any other key,
// including other RSA sizes and curves, is refused with an error that wraps
// ErrKeyNotAllowed and says what the key is. KeyTypeOf does not check the
// key's strength; CheckKey does.
func KeyTypeOf(pub crypto.PublicKey) (KeyType, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if k == nil || k.N == nil {
			return "", fmt.Errorf("%w: the RSA public key is empty; send a CSR with a %s key", ErrKeyNotAllowed, keyTypeList())
		}
		switch bits := k.N.BitLen(); bits {
		case 2048:
			return RSA2048, nil
		case 3072:
			return RSA3072, nil
		case 4096:
			return RSA4096, nil
		default:
			return "", fmt.Errorf("%w: an RSA key of %d bits is not accepted; use RSA of 2048, 3072 or 4096 bits or ECDSA P-256 or P-384 (%s)",
				ErrKeyNotAllowed, bits, keyTypeList())
		}
	case *ecdsa.PublicKey:
		if k == nil || k.Curve == nil {
			return "", fmt.Errorf("%w: the ECDSA public key has no curve; send a CSR with a %s key", ErrKeyNotAllowed, keyTypeList())
		}
		// Compare the curve values themselves, not their names: a home-made
		// curve can call itself "P-256".
		switch k.Curve {
		case elliptic.P256():
			return P256, nil
		case elliptic.P384():
			return P384, nil
		default:
			return "", fmt.Errorf("%w: an ECDSA key on curve %s is not accepted; use P-256 or P-384, or RSA of 2048, 3072 or 4096 bits (%s)",
				ErrKeyNotAllowed, curveName(k.Curve), keyTypeList())
		}
	default:
		return "", fmt.Errorf("%w: a %s key is not accepted; use RSA of 2048, 3072 or 4096 bits or ECDSA P-256 or P-384 (%s)",
			ErrKeyNotAllowed, describeKey(pub), keyTypeList())
	}
}

// CheckKey decides whether p lets kms certify pub. The key must be of a type
// kms certifies and listed in p.Keys (otherwise the error wraps
// ErrKeyNotAllowed), and sound (otherwise it wraps ErrWeakKey). An RSA key
// under 2048 bits is reported as weak rather than merely not allowed.
// Soundness is checked before the policy's list so that a broken key is
// reported as broken whatever the domain accepts.
//
// For RSA the checks follow the CA/Browser Forum Baseline Requirements
// (section 6.1.6) and Let's Encrypt's boulder: at least 2048 bits; an odd
// public exponent from 65537 up to 2^32; an odd modulus with no prime factor
// below 752; a modulus that Fermat's method cannot factor in a few rounds
// (primes generated too close together); and no ROCA fingerprint
// (CVE-2017-15361, keys made by vulnerable Infineon smart cards, which are
// common for S/MIME). For ECDSA the point must be a valid point of P-256 or
// P-384 other than the point at infinity.
func (p Policy) CheckKey(pub crypto.PublicKey) error {
	if k, ok := pub.(*rsa.PublicKey); ok {
		if err := checkRSASize(k); err != nil {
			return err
		}
	}
	// Refuse other sizes and curves before any arithmetic, so that an
	// oversized modulus costs nothing.
	kt, err := KeyTypeOf(pub)
	if err != nil {
		return err
	}
	switch k := pub.(type) {
	case *rsa.PublicKey:
		err = checkRSA(k)
	case *ecdsa.PublicKey:
		err = checkECDSA(k)
	}
	if err != nil {
		return err
	}
	if !slices.Contains(p.Keys, kt) {
		return fmt.Errorf("%w: this domain's policy does not accept %s keys; use one of %s", ErrKeyNotAllowed, kt, joinKeyTypes(p.Keys))
	}
	return nil
}

// NeedsRekey reports whether a key first certified at keyFirstCertified is
// too old at now to be certified again: true from the moment it is
// RekeyAfter old (SPEC: "rekey required once the key is 36 months old").
// A zero RekeyAfter means keys never have to change.
func (p Policy) NeedsRekey(keyFirstCertified, now time.Time) bool {
	if p.RekeyAfter.IsZero() {
		return false
	}
	return !now.Before(p.RekeyAfter.AddTo(keyFirstCertified))
}

// checkRSASize reports a missing or too short modulus, wrapping ErrWeakKey.
func checkRSASize(k *rsa.PublicKey) error {
	if k == nil || k.N == nil || k.N.Sign() <= 0 {
		return fmt.Errorf("%w: the RSA public key has no modulus; generate a new key", ErrWeakKey)
	}
	if bits := k.N.BitLen(); bits < 2048 {
		return fmt.Errorf("%w: an RSA key of %d bits is too short to be safe; generate an RSA key of at least 2048 bits or an ECDSA P-256 key", ErrWeakKey, bits)
	}
	return nil
}

// checkRSA reports why k, whose size KeyTypeOf accepted, is not a sound RSA
// key, wrapping ErrWeakKey.
func checkRSA(k *rsa.PublicKey) error {
	// BR 6.1.6: an odd exponent of at least 3, and SHOULD be 2^16+1 or more.
	// Small exponents invite attacks on badly padded messages, and software
	// that picks a huge one is broken; every sane generator uses 65537.
	if k.E%2 == 0 || k.E < 65537 || int64(k.E) > 1<<32 {
		return fmt.Errorf("%w: the RSA public exponent %d is unsafe (it must be odd and between 65537 and 2^32); generate a new key with the usual exponent 65537", ErrWeakKey, k.E)
	}
	if k.N.Bit(0) == 0 {
		return fmt.Errorf("%w: the RSA modulus is even, so it is not a product of two large primes; generate a new key", ErrWeakKey)
	}
	if f, ok := smallFactor(k.N); ok {
		return fmt.Errorf("%w: the RSA modulus is divisible by %d, so it is not a product of two large primes; generate a new key", ErrWeakKey, f)
	}
	if _, _, ok := fermatFactor(k.N, fermatRounds); ok {
		return fmt.Errorf("%w: the RSA modulus factors at once by Fermat's method because its two primes are too close together; generate a new key with other software", ErrWeakKey)
	}
	if rocaFingerprint(k.N) {
		return fmt.Errorf("%w: the RSA key has the fingerprint of keys made by vulnerable Infineon chips (ROCA, CVE-2017-15361) and can be factored; update the token's firmware or use other hardware, then generate a new key", ErrWeakKey)
	}
	return nil
}

// checkECDSA reports why k, whose curve KeyTypeOf accepted, is not a sound
// point of that curve, wrapping ErrWeakKey.
func checkECDSA(k *ecdsa.PublicKey) error {
	// ECDH panics on missing coordinates, so look at them first. Reading the
	// fields is the only way to tell; nothing here modifies them.
	//lint:ignore SA1019 read-only nil check that keeps ECDH from panicking
	if k.X == nil || k.Y == nil {
		return fmt.Errorf("%w: the ECDSA public key has no point; generate a new key", ErrWeakKey)
	}
	// crypto/ecdh implements SP 800-56A's public key validation for the NIST
	// curves: coordinates reduced modulo p, point on the curve, not the point
	// at infinity. P-256 and P-384 have cofactor 1, so a point that passes
	// also has the right order.
	if _, err := k.ECDH(); err != nil {
		return fmt.Errorf("%w: the ECDSA public key is not a valid point of %s (%v); generate a new key", ErrWeakKey, curveName(k.Curve), err)
	}
	return nil
}

// curveName names c for an error message.
func curveName(c elliptic.Curve) string {
	if params := c.Params(); params != nil && params.Name != "" {
		return params.Name
	}
	return "(unnamed curve)"
}

// describeKey names the kind of an unaccepted key for an error message.
func describeKey(pub crypto.PublicKey) string {
	if pub == nil {
		return "missing"
	}
	return fmt.Sprintf("%T", pub)
}

// joinKeyTypes lists ks for an error message.
func joinKeyTypes(ks []KeyType) string {
	if len(ks) == 0 {
		return "(none: the policy lists no key types)"
	}
	s := string(ks[0])
	for _, k := range ks[1:] {
		s += ", " + string(k)
	}
	return s
}

package smime

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// Object identifiers used by the CMS layer.
var (
	oidData             = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 1}
	oidSignedData       = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 2}
	oidEnvelopedData    = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 7, 3}
	oidAuthEnveloped    = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 16, 1, 23}
	oidAttrContentType  = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 3}
	oidAttrDigest       = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 4}
	oidAttrSigningTime  = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 5}
	oidAttrCapabilities = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 9, 15}

	oidMD5    = asn1.ObjectIdentifier{1, 2, 840, 113549, 2, 5}
	oidSHA1   = asn1.ObjectIdentifier{1, 3, 14, 3, 2, 26}
	oidSHA256 = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 1}
	oidSHA384 = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 2}
	oidSHA512 = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 2, 3}

	oidRSA           = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}
	oidMD5WithRSA    = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 4}
	oidSHA1WithRSA   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 5}
	oidRSAPSS        = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 10}
	oidSHA256WithRSA = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}
	oidSHA384WithRSA = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 12}
	oidSHA512WithRSA = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 13}
	oidRSAOAEP       = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 7}
	oidMGF1          = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 8}

	oidECPublicKey     = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}
	oidECDSAWithSHA1   = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 1}
	oidECDSAWithSHA256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	oidECDSAWithSHA384 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 3}
	oidECDSAWithSHA512 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 4}

	oidDESCBC     = asn1.ObjectIdentifier{1, 3, 14, 3, 2, 7}
	oidDESEDE3CBC = asn1.ObjectIdentifier{1, 2, 840, 113549, 3, 7}
	oidAES128CBC  = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 2}
	oidAES256CBC  = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 42}
)

// digestHash maps a CMS digestAlgorithm to a hash, refusing broken ones.
func digestHash(alg pkix.AlgorithmIdentifier) (crypto.Hash, error) {
	switch o := alg.Algorithm; {
	case o.Equal(oidSHA256):
		return crypto.SHA256, nil
	case o.Equal(oidSHA384):
		return crypto.SHA384, nil
	case o.Equal(oidSHA512):
		return crypto.SHA512, nil
	case o.Equal(oidSHA1), o.Equal(oidMD5):
		return 0, fmt.Errorf("%w: digest algorithm %s (SHA-1/MD5) is refused; sign with SHA-256 or better", ErrWeakAlgorithm, o)
	default:
		return 0, fmt.Errorf("%w: digest algorithm %s; use SHA-256, SHA-384 or SHA-512", ErrUnsupported, o)
	}
}

// checkSignature verifies sig over digest (made with hash h) under pub,
// with the SignerInfo signatureAlgorithm alg. It accepts RSA PKCS#1 v1.5,
// RSA-PSS and ECDSA.
func checkSignature(pub crypto.PublicKey, alg pkix.AlgorithmIdentifier, h crypto.Hash, digest, sig []byte) error {
	o := alg.Algorithm
	switch {
	case o.Equal(oidMD5WithRSA), o.Equal(oidSHA1WithRSA), o.Equal(oidECDSAWithSHA1):
		return fmt.Errorf("%w: signature algorithm %s (SHA-1/MD5) is refused", ErrWeakAlgorithm, o)
	case o.Equal(oidRSA), o.Equal(oidSHA256WithRSA), o.Equal(oidSHA384WithRSA), o.Equal(oidSHA512WithRSA):
		if err := sameHash(o, h, map[crypto.Hash]asn1.ObjectIdentifier{
			crypto.SHA256: oidSHA256WithRSA, crypto.SHA384: oidSHA384WithRSA, crypto.SHA512: oidSHA512WithRSA}); err != nil {
			return err
		}
		k, ok := pub.(*rsa.PublicKey)
		if !ok {
			return fmt.Errorf("%w: RSA signature but the signer key is %T", ErrBadSignature, pub)
		}
		if err := rsa.VerifyPKCS1v15(k, h, digest, sig); err != nil {
			return fmt.Errorf("%w: %v", ErrBadSignature, err)
		}
		return nil
	case o.Equal(oidRSAPSS):
		opts, err := pssOptions(alg.Parameters.FullBytes, h)
		if err != nil {
			return err
		}
		k, ok := pub.(*rsa.PublicKey)
		if !ok {
			return fmt.Errorf("%w: RSA-PSS signature but the signer key is %T", ErrBadSignature, pub)
		}
		if err := rsa.VerifyPSS(k, h, digest, sig, opts); err != nil {
			return fmt.Errorf("%w: %v", ErrBadSignature, err)
		}
		return nil
	case o.Equal(oidECPublicKey), o.Equal(oidECDSAWithSHA256), o.Equal(oidECDSAWithSHA384), o.Equal(oidECDSAWithSHA512):
		if err := sameHash(o, h, map[crypto.Hash]asn1.ObjectIdentifier{
			crypto.SHA256: oidECDSAWithSHA256, crypto.SHA384: oidECDSAWithSHA384, crypto.SHA512: oidECDSAWithSHA512}); err != nil {
			return err
		}
		k, ok := pub.(*ecdsa.PublicKey)
		if !ok {
			return fmt.Errorf("%w: ECDSA signature but the signer key is %T", ErrBadSignature, pub)
		}
		if !ecdsa.VerifyASN1(k, digest, sig) {
			return fmt.Errorf("%w: ECDSA signature check failed", ErrBadSignature)
		}
		return nil
	default:
		return fmt.Errorf("%w: signature algorithm %s; use RSA (PKCS#1 v1.5 or PSS) or ECDSA", ErrUnsupported, o)
	}
}

// sameHash checks that a signature algorithm that names its own hash (such
// as sha384WithRSAEncryption) agrees with the SignerInfo digest algorithm.
// Key-only identifiers (rsaEncryption, id-ecPublicKey) take the digest
// algorithm's hash.
func sameHash(o asn1.ObjectIdentifier, h crypto.Hash, byHash map[crypto.Hash]asn1.ObjectIdentifier) error {
	if o.Equal(oidRSA) || o.Equal(oidECPublicKey) {
		return nil
	}
	if want, ok := byHash[h]; ok && want.Equal(o) {
		return nil
	}
	return fmt.Errorf("%w: signature algorithm %s does not match digest %v", ErrMalformed, o, h)
}

// pssOptions decodes RSASSA-PSS-params (RFC 4055) and checks they use the
// digest algorithm h for both the message and MGF1.
func pssOptions(params []byte, h crypto.Hash) (*rsa.PSSOptions, error) {
	in := cryptobyte.String(params)
	var seq cryptobyte.String
	if !in.ReadASN1(&seq, cbasn1.SEQUENCE) || !in.Empty() {
		return nil, fmt.Errorf("%w: RSA-PSS parameters missing or not a SEQUENCE", ErrMalformed)
	}
	var hashAlg, mgf, saltField, trailerField cryptobyte.String
	var hasHash, hasMGF, hasSalt, hasTrailer bool
	tag0 := cbasn1.Tag(0).Constructed().ContextSpecific()
	tag1 := cbasn1.Tag(1).Constructed().ContextSpecific()
	tag2 := cbasn1.Tag(2).Constructed().ContextSpecific()
	tag3 := cbasn1.Tag(3).Constructed().ContextSpecific()
	if !seq.ReadOptionalASN1(&hashAlg, &hasHash, tag0) ||
		!seq.ReadOptionalASN1(&mgf, &hasMGF, tag1) ||
		!seq.ReadOptionalASN1(&saltField, &hasSalt, tag2) ||
		!seq.ReadOptionalASN1(&trailerField, &hasTrailer, tag3) || !seq.Empty() {
		return nil, fmt.Errorf("%w: bad RSA-PSS parameters", ErrMalformed)
	}
	if !hasHash || !hasMGF {
		// The defaults are SHA-1.
		return nil, fmt.Errorf("%w: RSA-PSS with the default SHA-1 hash is refused", ErrWeakAlgorithm)
	}
	msgHash, err := algHash(&hashAlg)
	if err != nil {
		return nil, err
	}
	var mgfAlg cryptobyte.String
	var mgfOID asn1.ObjectIdentifier
	if !mgf.ReadASN1(&mgfAlg, cbasn1.SEQUENCE) || !mgfAlg.ReadASN1ObjectIdentifier(&mgfOID) || !mgfOID.Equal(oidMGF1) {
		return nil, fmt.Errorf("%w: RSA-PSS mask generation is not MGF1", ErrUnsupported)
	}
	mgfHash, err := algHash(&mgfAlg)
	if err != nil {
		return nil, err
	}
	if msgHash != h || mgfHash != h {
		return nil, fmt.Errorf("%w: RSA-PSS hashes (%v, MGF1 %v) differ from the digest algorithm %v", ErrMalformed, msgHash, mgfHash, h)
	}
	salt := int64(20)
	if hasSalt && (!saltField.ReadASN1Int64WithTag(&salt, cbasn1.INTEGER) || salt < 0 || salt > 1<<16) {
		return nil, fmt.Errorf("%w: bad RSA-PSS salt length", ErrMalformed)
	}
	if hasTrailer {
		var trailer int64
		if !trailerField.ReadASN1Int64WithTag(&trailer, cbasn1.INTEGER) || trailer != 1 {
			return nil, fmt.Errorf("%w: RSA-PSS trailer field must be 1", ErrMalformed)
		}
	}
	if salt == 0 {
		// rsa.PSSOptions reads 0 as "auto"; a zero-length salt is exact.
		return &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto, Hash: h}, nil
	}
	return &rsa.PSSOptions{SaltLength: int(salt), Hash: h}, nil
}

// algHash reads an AlgorithmIdentifier SEQUENCE naming a digest.
func algHash(s *cryptobyte.String) (crypto.Hash, error) {
	var alg cryptobyte.String
	var oid asn1.ObjectIdentifier
	if !s.ReadASN1(&alg, cbasn1.SEQUENCE) || !alg.ReadASN1ObjectIdentifier(&oid) {
		return 0, fmt.Errorf("%w: bad algorithm identifier in RSA-PSS parameters", ErrMalformed)
	}
	return digestHash(pkix.AlgorithmIdentifier{Algorithm: oid})
}

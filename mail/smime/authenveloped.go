package smime

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"encoding/asn1"
	"fmt"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

var (
	oidAES128GCM = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 6}
	oidAES256GCM = asn1.ObjectIdentifier{2, 16, 840, 1, 101, 3, 4, 1, 46}
)

// decryptAuthEnveloped opens an AuthEnvelopedData with AES-GCM (RFC 5083,
// RFC 5084), which the wrapped library does not read: it is what OpenSSL
// writes for `cms -encrypt -aes-256-gcm` and what RFC 8551 asks receivers
// to support.
func decryptAuthEnveloped(env *envelope, ri *recipientInfo, key crypto.Decrypter) ([]byte, error) {
	alg := env.contentAlg
	var oid asn1.ObjectIdentifier
	if !alg.ReadASN1ObjectIdentifier(&oid) {
		return nil, errEnvelope
	}
	var keyLen int
	switch {
	case oid.Equal(oidAES128GCM):
		keyLen = 16
	case oid.Equal(oidAES256GCM):
		keyLen = 32
	default:
		return nil, fmt.Errorf("%w: AuthEnvelopedData content cipher %s; use AES-GCM", ErrUnsupported, oid)
	}
	// GCMParameters ::= SEQUENCE { aes-nonce OCTET STRING, aes-ICVlen INTEGER DEFAULT 12 }
	var params cryptobyte.String
	var nonce []byte
	icvLen := int64(12)
	if !alg.ReadASN1(&params, cbasn1.SEQUENCE) || !params.ReadASN1((*cryptobyte.String)(&nonce), cbasn1.OCTET_STRING) {
		return nil, errEnvelope
	}
	if !params.Empty() && !params.ReadASN1Int64WithTag(&icvLen, cbasn1.INTEGER) {
		return nil, errEnvelope
	}
	if icvLen < 12 || icvLen > 16 || int(icvLen) != len(env.mac) || len(nonce) == 0 || len(nonce) > 64 {
		return nil, fmt.Errorf("%w: bad AES-GCM parameters (nonce %d bytes, tag %d bytes, MAC %d bytes)", ErrMalformed, len(nonce), icvLen, len(env.mac))
	}
	cek, err := unwrapKey(ri, key, keyLen)
	if err != nil {
		return nil, err
	}
	if len(cek) != keyLen {
		return nil, fmt.Errorf("%w: content key is %d bytes, want %d", ErrDecrypt, len(cek), keyLen)
	}
	block, err := aes.NewCipher(cek)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrDecrypt, err)
	}
	var aead cipher.AEAD
	if len(nonce) == 12 {
		aead, err = cipher.NewGCMWithTagSize(block, int(icvLen))
	} else if icvLen == 16 {
		aead, err = cipher.NewGCMWithNonceSize(block, len(nonce))
	} else {
		return nil, fmt.Errorf("%w: AES-GCM with a %d-byte nonce and %d-byte tag", ErrUnsupported, len(nonce), icvLen)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrDecrypt, err)
	}
	sealed := make([]byte, 0, len(env.ciphertext)+len(env.mac))
	sealed = append(append(sealed, env.ciphertext...), env.mac...)
	out, err := aead.Open(nil, nonce, sealed, env.authAttrs)
	if err != nil {
		return nil, fmt.Errorf("%w: AES-GCM authentication failed (wrong key or altered ciphertext)", ErrDecrypt)
	}
	return out, nil
}

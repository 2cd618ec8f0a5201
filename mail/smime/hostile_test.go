package smime

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"testing"

	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// envelopeRaw builds an AES-256-CBC EnvelopedData for recipient whose
// ciphertext is exactly ct (no padding added): the wrapped library panics
// on some such inputs, which Decrypt must turn into errors.
func envelopeRaw(t *testing.T, recipient *x509.Certificate, alg asn1.ObjectIdentifier, key, iv, ct []byte) []byte {
	t.Helper()
	//lint:ignore SA1019 the key transport S/MIME clients use
	ek, err := rsa.EncryptPKCS1v15(rand.Reader, recipient.PublicKey.(*rsa.PublicKey), key)
	if err != nil {
		t.Fatal(err)
	}
	if key == nil { // an encrypted key whose PKCS#1 padding is wrong
		ek = bytes.Repeat([]byte{0x42}, len(ek))
	}
	var b cryptobyte.Builder
	b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
		b.AddASN1ObjectIdentifier(oidEnvelopedData)
		b.AddASN1(cbasn1.Tag(0).Constructed().ContextSpecific(), func(b *cryptobyte.Builder) {
			b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
				b.AddASN1Int64(0)
				b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) {
					b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
						b.AddASN1Int64(0)
						b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
							b.AddBytes(recipient.RawIssuer)
							b.AddASN1BigInt(recipient.SerialNumber)
						})
						b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
							b.AddASN1ObjectIdentifier(oidRSA)
							b.AddASN1NULL()
						})
						b.AddASN1OctetString(ek)
					})
				})
				b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
					b.AddASN1ObjectIdentifier(oidData)
					b.AddASN1(cbasn1.SEQUENCE, func(b *cryptobyte.Builder) {
						b.AddASN1ObjectIdentifier(alg)
						b.AddASN1OctetString(iv)
					})
					b.AddASN1(cbasn1.Tag(0).ContextSpecific(), func(b *cryptobyte.Builder) { b.AddBytes(ct) })
				})
			})
		})
	})
	return b.BytesOrPanic()
}

func TestDecryptHostileCiphertext(t *testing.T) {
	p := newTestPKI(t)
	kms := p.issue(t, "kms@example.com", "rsa", userOpts{})
	key := make([]byte, 32)
	iv := make([]byte, 16)
	rand.Read(key)
	rand.Read(iv)
	block, _ := aes.NewCipher(key)
	encrypt := func(plain []byte) []byte {
		out := make([]byte, len(plain))
		cipher.NewCBCEncrypter(block, iv).CryptBlocks(out, plain)
		return out
	}
	badPad := make([]byte, 16)
	badPad[15] = 200 // a padding length beyond the plaintext
	goodPad := append([]byte("hello world"), 5, 5, 5, 5, 5)

	tests := []struct {
		name string
		alg  asn1.ObjectIdentifier
		key  []byte
		ct   []byte
		want error
	}{
		{"partial block", oidAES256CBC, key, make([]byte, 17), ErrDecrypt},
		{"padding longer than plaintext", oidAES256CBC, key, encrypt(badPad), ErrDecrypt},
		{"empty ciphertext", oidAES256CBC, key, nil, ErrDecrypt},
		{"bad RSA padding gives no distinct error", oidAES256CBC, nil, encrypt(goodPad), ErrDecrypt},
		{"single DES", oidDESCBC, key[:8], make([]byte, 16), ErrWeakAlgorithm},
		{"unknown cipher", asn1.ObjectIdentifier{1, 2, 3}, key, make([]byte, 16), ErrUnsupported},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Decrypt(envelopeRaw(t, kms.cert, tt.alg, tt.key, iv, tt.ct), kms.cert, kms.key.(crypto.Decrypter))
			if !errors.Is(err, tt.want) {
				t.Fatalf("Decrypt = %v, want %v", err, tt.want)
			}
		})
	}
	// The builder itself is right: a well-padded ciphertext decrypts.
	got, err := Decrypt(envelopeRaw(t, kms.cert, oidAES256CBC, key, iv, encrypt(goodPad)), kms.cert, kms.key.(crypto.Decrypter))
	if err != nil || string(got) != "hello world" {
		t.Fatalf("control: %q, %v", got, err)
	}
}

package smime

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"sync"

	"github.com/smallstep/pkcs7"
	"golang.org/x/crypto/cryptobyte"
	cbasn1 "golang.org/x/crypto/cryptobyte/asn1"
)

// encryptMu serialises Encrypt: the wrapped library takes its content
// cipher from a package variable.
var encryptMu sync.Mutex

// Encrypt makes a CMS EnvelopedData holding content for the recipients
// (RSA key transport, PKCS#1 v1.5), with AES-256-CBC as the content cipher:
// what every S/MIME client can read. The library's default would be DES.
func Encrypt(content []byte, recipients []*x509.Certificate) ([]byte, error) {
	if len(recipients) == 0 {
		return nil, errors.New("smime: Encrypt needs at least one recipient")
	}
	for _, r := range recipients {
		if _, ok := r.PublicKey.(*rsa.PublicKey); !ok {
			return nil, fmt.Errorf("%w: recipient %s has a %T key; only RSA recipients can be encrypted to", ErrUnsupported, r.Subject, r.PublicKey)
		}
	}
	encryptMu.Lock()
	defer encryptMu.Unlock()
	pkcs7.ContentEncryptionAlgorithm = pkcs7.EncryptionAlgorithmAES256CBC
	pkcs7.KeyEncryptionAlgorithm = pkcs7.OIDEncryptionAlgorithmRSA
	out, err := pkcs7.Encrypt(content, recipients)
	if err != nil {
		return nil, fmt.Errorf("smime: encrypting: %w", err)
	}
	return out, nil
}

// Decrypt opens a CMS EnvelopedData (AES-CBC, 3DES) or AuthEnvelopedData
// (AES-GCM, RFC 5083) addressed to cert by RSA key transport, and returns
// the content. key is cert's private key; any crypto.Decrypter (an HSM)
// works.
func Decrypt(cms []byte, cert *x509.Certificate, key crypto.Decrypter) ([]byte, error) {
	if cert == nil || key == nil {
		return nil, errors.New("smime: Decrypt needs the recipient certificate and key")
	}
	der, ctype, err := toDER(cms)
	if err != nil {
		return nil, err
	}
	env, err := parseEnvelope(der)
	if err != nil {
		return nil, err
	}
	var ri *recipientInfo
	for i := range env.recipients {
		if env.recipients[i].matches(cert) {
			ri = &env.recipients[i]
			break
		}
	}
	if ri == nil {
		return nil, fmt.Errorf("%w: none of the %d recipients is %s serial %x", ErrNotRecipient, len(env.recipients), cert.Issuer, cert.SerialNumber)
	}
	switch {
	case ctype.Equal(oidAuthEnveloped):
		return decryptAuthEnveloped(env, ri, key)
	case !ri.byIssuerSerial:
		return nil, fmt.Errorf("%w: recipient identified by subject key identifier in EnvelopedData", ErrUnsupported)
	default:
		keyLen, err := cbcKeyLen(env.contentAlg)
		if err != nil {
			return nil, err
		}
		return decryptLibrary(der, cert, implicitRejection{key, keyLen})
	}
}

// cbcKeyLen checks the content cipher of an EnvelopedData and returns its
// key length. Single DES is refused: its 56-bit key would expose the
// enrollment code the message protects.
func cbcKeyLen(alg cryptobyte.String) (int, error) {
	var oid asn1.ObjectIdentifier
	if !alg.ReadASN1ObjectIdentifier(&oid) {
		return 0, errEnvelope
	}
	switch {
	case oid.Equal(oidAES256CBC), oid.Equal(oidAES256GCM):
		return 32, nil
	case oid.Equal(oidAES128CBC), oid.Equal(oidAES128GCM):
		return 16, nil
	case oid.Equal(oidDESEDE3CBC):
		return 24, nil
	case oid.Equal(oidDESCBC):
		return 0, fmt.Errorf("%w: content encrypted with single DES; use AES", ErrWeakAlgorithm)
	default:
		return 0, fmt.Errorf("%w: content cipher %s; use AES-CBC or AES-GCM", ErrUnsupported, oid)
	}
}

// implicitRejection makes the library's RSA PKCS#1 v1.5 key unwrap return a
// random key of the right length on bad padding instead of an error, so
// that a padding failure looks like any other decryption failure
// (Bleichenbacher). The library's own call sets no SessionKeyLen.
type implicitRejection struct {
	crypto.Decrypter
	keyLen int
}

func (d implicitRejection) Decrypt(r io.Reader, msg []byte, opts crypto.DecrypterOpts) ([]byte, error) {
	//lint:ignore SA1019 S/MIME clients send PKCS #1 v1.5 key transport (RFC 8551 2.3); this adds implicit rejection.
	if _, ok := opts.(*rsa.PKCS1v15DecryptOptions); ok {
		//lint:ignore SA1019 as above
		opts = &rsa.PKCS1v15DecryptOptions{SessionKeyLen: d.keyLen}
	}
	return d.Decrypter.Decrypt(r, msg, opts)
}

// decryptLibrary runs the wrapped library's decryption. It panics on some
// hostile ciphertexts (a partial cipher block, a padding length larger than
// the plaintext), so panics become ErrDecrypt.
func decryptLibrary(der []byte, cert *x509.Certificate, key crypto.Decrypter) (out []byte, err error) {
	p7, err := parseLibrary(der)
	if err != nil {
		return nil, err
	}
	defer func() {
		if r := recover(); r != nil {
			out, err = nil, fmt.Errorf("%w: corrupt ciphertext (%v)", ErrDecrypt, r)
		}
	}()
	out, err = p7.Decrypt(cert, key)
	switch {
	case errors.Is(err, pkcs7.ErrUnsupportedAlgorithm), errors.Is(err, pkcs7.ErrUnsupportedAsymmetricEncryptionAlgorithm):
		return nil, fmt.Errorf("%w: %v", ErrUnsupported, err)
	case err != nil:
		return nil, fmt.Errorf("%w: %v", ErrDecrypt, err)
	}
	return out, nil
}

// envelope is what Decrypt reads of an (Auth)EnvelopedData itself.
type envelope struct {
	recipients []recipientInfo
	contentAlg cryptobyte.String // AlgorithmIdentifier contents
	// For AuthEnvelopedData only:
	ciphertext []byte
	authAttrs  []byte // DER SET, or nil
	mac        []byte
}

type recipientInfo struct {
	byIssuerSerial bool
	issuer         []byte
	serial         []byte // INTEGER contents
	ski            []byte
	keyAlg         cryptobyte.String // AlgorithmIdentifier contents
	encryptedKey   []byte
}

func (r *recipientInfo) matches(c *x509.Certificate) bool {
	if !r.byIssuerSerial {
		return len(r.ski) > 0 && bytes.Equal(r.ski, c.SubjectKeyId)
	}
	var b cryptobyte.Builder
	b.AddASN1BigInt(c.SerialNumber)
	serial, err := b.Bytes()
	return err == nil && bytes.Equal(r.issuer, c.RawIssuer) && bytes.Equal(setContents(serial), r.serial)
}

var errEnvelope = fmt.Errorf("%w: bad EnvelopedData", ErrMalformed)

// parseEnvelope reads the recipients of an EnvelopedData or
// AuthEnvelopedData (both start the same way), and the rest of an
// AuthEnvelopedData.
func parseEnvelope(der []byte) (*envelope, error) {
	s := cryptobyte.String(der)
	var ci, body, ed cryptobyte.String
	var ctype asn1.ObjectIdentifier
	if !s.ReadASN1(&ci, cbasn1.SEQUENCE) || !ci.ReadASN1ObjectIdentifier(&ctype) {
		return nil, errEnvelope
	}
	isAuth := ctype.Equal(oidAuthEnveloped)
	if !isAuth && !ctype.Equal(oidEnvelopedData) {
		return nil, fmt.Errorf("%w: CMS content type is %v, not enveloped-data", ErrMalformed, ctype)
	}
	var version int64
	if !ci.ReadASN1(&body, cbasn1.Tag(0).Constructed().ContextSpecific()) ||
		!body.ReadASN1(&ed, cbasn1.SEQUENCE) || !ed.ReadASN1Int64WithTag(&version, cbasn1.INTEGER) ||
		!ed.SkipOptionalASN1(cbasn1.Tag(0).Constructed().ContextSpecific()) {
		return nil, errEnvelope
	}
	var set cryptobyte.String
	if !ed.ReadASN1(&set, cbasn1.SET) {
		return nil, errEnvelope
	}
	env := &envelope{}
	for !set.Empty() {
		var ri cryptobyte.String
		var tag cbasn1.Tag
		if !set.ReadAnyASN1(&ri, &tag) {
			return nil, errEnvelope
		}
		if tag != cbasn1.SEQUENCE {
			continue // key agreement, KEK, password: not for us
		}
		var r recipientInfo
		var rid cryptobyte.String
		if !ri.ReadASN1Int64WithTag(&version, cbasn1.INTEGER) {
			return nil, errEnvelope
		}
		switch {
		case ri.PeekASN1Tag(cbasn1.SEQUENCE):
			var serial cryptobyte.String
			var issuer cryptobyte.String
			if !ri.ReadASN1(&rid, cbasn1.SEQUENCE) || !rid.ReadASN1Element(&issuer, cbasn1.SEQUENCE) ||
				!rid.ReadASN1(&serial, cbasn1.INTEGER) {
				return nil, errEnvelope
			}
			r.byIssuerSerial, r.issuer, r.serial = true, issuer, serial
		case ri.PeekASN1Tag(cbasn1.Tag(0).ContextSpecific()):
			if !ri.ReadASN1((*cryptobyte.String)(&r.ski), cbasn1.Tag(0).ContextSpecific()) {
				return nil, errEnvelope
			}
		default:
			return nil, errEnvelope
		}
		if !ri.ReadASN1(&r.keyAlg, cbasn1.SEQUENCE) || !ri.ReadASN1((*cryptobyte.String)(&r.encryptedKey), cbasn1.OCTET_STRING) {
			return nil, errEnvelope
		}
		env.recipients = append(env.recipients, r)
	}
	var eci, content cryptobyte.String
	var innerType asn1.ObjectIdentifier
	if !ed.ReadASN1(&eci, cbasn1.SEQUENCE) || !eci.ReadASN1ObjectIdentifier(&innerType) ||
		!eci.ReadASN1(&env.contentAlg, cbasn1.SEQUENCE) {
		return nil, errEnvelope
	}
	if !isAuth {
		return env, nil // the library reads the rest
	}
	switch {
	case eci.PeekASN1Tag(cbasn1.Tag(0).ContextSpecific()):
		if !eci.ReadASN1(&content, cbasn1.Tag(0).ContextSpecific()) {
			return nil, errEnvelope
		}
		env.ciphertext = content
	case eci.PeekASN1Tag(cbasn1.Tag(0).Constructed().ContextSpecific()):
		// BER streaming: the ciphertext comes in OCTET STRING chunks.
		if !eci.ReadASN1(&content, cbasn1.Tag(0).Constructed().ContextSpecific()) {
			return nil, errEnvelope
		}
		for !content.Empty() {
			var chunk cryptobyte.String
			if !content.ReadASN1(&chunk, cbasn1.OCTET_STRING) {
				return nil, errEnvelope
			}
			env.ciphertext = append(env.ciphertext, chunk...)
		}
	default:
		return nil, fmt.Errorf("%w: AuthEnvelopedData without content", ErrMalformed)
	}
	var attrs cryptobyte.String
	var hasAttrs bool
	if !ed.ReadOptionalASN1(&attrs, &hasAttrs, cbasn1.Tag(1).Constructed().ContextSpecific()) ||
		!ed.ReadASN1((*cryptobyte.String)(&env.mac), cbasn1.OCTET_STRING) {
		return nil, errEnvelope
	}
	if hasAttrs {
		// RFC 5083 2.2: the authenticated attributes are MACed as a DER SET.
		var b cryptobyte.Builder
		b.AddASN1(cbasn1.SET, func(b *cryptobyte.Builder) { b.AddBytes(attrs) })
		env.authAttrs, _ = b.Bytes()
	}
	return env, nil
}

// unwrapKey decrypts the content-encryption key of ri. For PKCS#1 v1.5 a
// failed unwrap yields a random key of keyLen bytes instead of an error, so
// that the outcome does not tell an attacker whether the padding was valid
// (Bleichenbacher); the content then fails to decrypt.
func unwrapKey(ri *recipientInfo, key crypto.Decrypter, keyLen int) ([]byte, error) {
	alg := ri.keyAlg
	var oid asn1.ObjectIdentifier
	if !alg.ReadASN1ObjectIdentifier(&oid) {
		return nil, errEnvelope
	}
	if _, ok := key.Public().(*rsa.PublicKey); !ok {
		return nil, fmt.Errorf("%w: key transport with a %T key", ErrUnsupported, key.Public())
	}
	var opts crypto.DecrypterOpts
	switch {
	case oid.Equal(oidRSA):
		//lint:ignore SA1019 S/MIME clients send PKCS #1 v1.5 key transport (RFC 8551 2.3); SessionKeyLen gives implicit rejection.
		opts = &rsa.PKCS1v15DecryptOptions{SessionKeyLen: keyLen}
	case oid.Equal(oidRSAOAEP):
		h, err := oaepHash(alg)
		if err != nil {
			return nil, err
		}
		opts = &rsa.OAEPOptions{Hash: h, MGFHash: h}
	default:
		return nil, fmt.Errorf("%w: key transport algorithm %v; use RSA PKCS#1 v1.5 or OAEP", ErrUnsupported, oid)
	}
	k, err := key.Decrypt(rand.Reader, ri.encryptedKey, opts)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrDecrypt, err)
	}
	return k, nil
}

// oaepHash reads RSAES-OAEP-params (RFC 4055 4.1) and returns the hash used
// for both the label and MGF1; parameters that use two different hashes are
// not supported. Absent parameters mean SHA-1, which is sound for OAEP.
func oaepHash(params cryptobyte.String) (crypto.Hash, error) {
	if params.Empty() {
		return crypto.SHA1, nil
	}
	var seq cryptobyte.String
	if !params.ReadASN1(&seq, cbasn1.SEQUENCE) {
		return 0, errEnvelope
	}
	h, mgf := crypto.SHA1, crypto.SHA1
	var field cryptobyte.String
	var present bool
	if !seq.ReadOptionalASN1(&field, &present, cbasn1.Tag(0).Constructed().ContextSpecific()) {
		return 0, errEnvelope
	}
	if present {
		var err error
		if h, err = oaepDigest(&field); err != nil {
			return 0, err
		}
	}
	if !seq.ReadOptionalASN1(&field, &present, cbasn1.Tag(1).Constructed().ContextSpecific()) {
		return 0, errEnvelope
	}
	if present {
		var alg cryptobyte.String
		var oid asn1.ObjectIdentifier
		if !field.ReadASN1(&alg, cbasn1.SEQUENCE) || !alg.ReadASN1ObjectIdentifier(&oid) || !oid.Equal(oidMGF1) {
			return 0, fmt.Errorf("%w: OAEP mask generation is not MGF1", ErrUnsupported)
		}
		var err error
		if mgf, err = oaepDigest(&alg); err != nil {
			return 0, err
		}
	}
	if h != mgf {
		return 0, fmt.Errorf("%w: OAEP with hash %v and MGF1 hash %v", ErrUnsupported, h, mgf)
	}
	return h, nil
}

func oaepDigest(s *cryptobyte.String) (crypto.Hash, error) {
	var alg cryptobyte.String
	var oid asn1.ObjectIdentifier
	if !s.ReadASN1(&alg, cbasn1.SEQUENCE) || !alg.ReadASN1ObjectIdentifier(&oid) {
		return 0, errEnvelope
	}
	switch {
	case oid.Equal(oidSHA1):
		return crypto.SHA1, nil
	case oid.Equal(oidSHA256):
		return crypto.SHA256, nil
	case oid.Equal(oidSHA384):
		return crypto.SHA384, nil
	case oid.Equal(oidSHA512):
		return crypto.SHA512, nil
	}
	return 0, fmt.Errorf("%w: OAEP hash %s", ErrUnsupported, oid)
}

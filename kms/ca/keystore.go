package ca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"runtime"

	"github.com/kmsmail/kms/policy"
	"github.com/youmark/pkcs8"
)

// KeyStore is where the CA's private keys live. FileKeys keeps them in
// files; a PKCS#11 implementation can keep them in an HSM, since the
// Authority only ever needs a crypto.Signer.
type KeyStore interface {
	// Signer returns the key called name. It returns an error wrapping
	// ErrNoKey when there is no such key.
	Signer(name string) (crypto.Signer, error)
	// Generate creates a key of type kt called name and returns it. It
	// returns an error wrapping ErrKeyExists rather than replace a key.
	Generate(name string, kt policy.KeyType) (crypto.Signer, error)
}

// Errors of the key store. Each is wrapped with the file and what to do.
var (
	// ErrNoKey: the key does not exist (yet).
	ErrNoKey = errors.New("no such key")
	// ErrKeyExists: Generate refuses to replace a key.
	ErrKeyExists = errors.New("key already exists")
	// ErrWrongPassphrase: an encrypted key file does not decrypt.
	ErrWrongPassphrase = errors.New("wrong CA key passphrase")
	// ErrPassphraseRequired: a key file is encrypted and no passphrase is set.
	ErrPassphraseRequired = errors.New("CA key is encrypted but no passphrase is configured")
	// ErrKeyPermissions: a key file grants access to group or others.
	ErrKeyPermissions = errors.New("CA key file is accessible to other users")
)

// DefaultIterations is the PBKDF2-HMAC-SHA256 iteration count FileKeys uses,
// the figure OWASP recommends (2023). Keys are decrypted once at start-up,
// so the cost (about 0.1 s per key) is paid rarely.
const DefaultIterations = 600_000

// maxKeyFile bounds what FileKeys reads: a PEM private key is a few KiB.
const maxKeyFile = 1 << 20

// FileKeys is a KeyStore of PKCS#8 PEM files. The key called name is the
// file Files[name] if set, else Dir/name.key. Files are created with mode
// 0600, and FileKeys refuses to read a key file that grants any access to
// group or others, as ssh does.
type FileKeys struct {
	Dir        string            // where keys live by default
	Files      map[string]string // per-name paths that override Dir/name.key
	Passphrase []byte            // empty: keys are stored unencrypted (logged as a warning)
	Iterations int               // PBKDF2 iterations for new keys; 0 means DefaultIterations
	Log        *slog.Logger      // nil: slog.Default()
}

var keyName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]*$`)

// Path returns the file that holds the key called name.
func (k *FileKeys) Path(name string) string {
	if p := k.Files[name]; p != "" {
		return p
	}
	return filepath.Join(k.Dir, name+".key")
}

func (k *FileKeys) log() *slog.Logger {
	if k.Log == nil {
		return slog.Default()
	}
	return k.Log
}

// Signer reads and decrypts the key file for name.
func (k *FileKeys) Signer(name string) (crypto.Signer, error) {
	if !keyName.MatchString(name) {
		return nil, fmt.Errorf("key name %q: use lower-case letters, digits and '-'", name)
	}
	path := k.Path(name)
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s does not exist", ErrNoKey, path)
	}
	if err != nil {
		return nil, fmt.Errorf("open CA key: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("CA key %s: %w", path, err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 && runtime.GOOS != "windows" {
		return nil, fmt.Errorf("%w: %s has mode %04o; make it readable by its owner only (chmod 600 %s)",
			ErrKeyPermissions, path, perm, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFile))
	if err != nil {
		return nil, fmt.Errorf("read CA key %s: %w", path, err)
	}
	key, encrypted, err := parseKey(data, k.Passphrase)
	if err != nil {
		return nil, fmt.Errorf("CA key %s: %w", path, err)
	}
	switch {
	case !encrypted && len(k.Passphrase) > 0:
		k.log().Warn("CA key is stored unencrypted although a passphrase is configured; encrypt it with `openssl pkcs8 -topk8 -v2 aes-256-cbc -v2prf hmacWithSHA256`",
			"file", path)
	case !encrypted:
		k.log().Warn("CA key is stored unencrypted; set ca.passphrase_file to encrypt new keys", "file", path)
	}
	return key, nil
}

// Generate creates a new key of type kt and writes it to its file, which
// must not exist yet.
func (k *FileKeys) Generate(name string, kt policy.KeyType) (crypto.Signer, error) {
	if !keyName.MatchString(name) {
		return nil, fmt.Errorf("key name %q: use lower-case letters, digits and '-'", name)
	}
	path := k.Path(name)
	if _, err := os.Lstat(path); err == nil {
		return nil, fmt.Errorf("%w: %s (kms never overwrites a key)", ErrKeyExists, path)
	}
	key, err := NewKey(kt)
	if err != nil {
		return nil, err
	}
	var block *pem.Block
	if len(k.Passphrase) > 0 {
		iter := k.Iterations
		if iter <= 0 {
			iter = DefaultIterations
		}
		der, err := pkcs8.MarshalPrivateKey(key, k.Passphrase, &pkcs8.Opts{
			Cipher:  pkcs8.AES256CBC,
			KDFOpts: pkcs8.PBKDF2Opts{SaltSize: 16, IterationCount: iter, HMACHash: crypto.SHA256},
		})
		if err != nil {
			return nil, fmt.Errorf("encrypt CA key %s: %w", path, err)
		}
		block = &pem.Block{Type: "ENCRYPTED PRIVATE KEY", Bytes: der}
	} else {
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return nil, fmt.Errorf("encode CA key %s: %w", path, err)
		}
		block = &pem.Block{Type: "PRIVATE KEY", Bytes: der}
		k.log().Warn("writing CA key unencrypted; set ca.passphrase_file to encrypt CA keys", "file", path)
	}
	if err := writeNew(path, pem.EncodeToMemory(block)); err != nil {
		return nil, err
	}
	return key, nil
}

// NewKey generates a private key of type kt.
func NewKey(kt policy.KeyType) (crypto.Signer, error) {
	var (
		key crypto.Signer
		err error
	)
	switch kt {
	case policy.RSA2048:
		key, err = rsa.GenerateKey(rand.Reader, 2048)
	case policy.RSA3072:
		key, err = rsa.GenerateKey(rand.Reader, 3072)
	case policy.RSA4096:
		key, err = rsa.GenerateKey(rand.Reader, 4096)
	case policy.P256:
		key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case policy.P384:
		key, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	default:
		return nil, fmt.Errorf("%w: key type %q (use one of %v)", ErrUnsupportedKey, kt, policy.AllKeyTypes)
	}
	if err != nil {
		return nil, fmt.Errorf("generate %s key: %w", kt, err)
	}
	return key, nil
}

// parseKey decodes a PEM private key: PKCS#8, encrypted or not, and for keys
// an administrator brings from elsewhere the traditional PKCS#1 and SEC 1
// forms. It reports whether the key was encrypted.
func parseKey(data, passphrase []byte) (crypto.Signer, bool, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, false, errors.New("no PEM private key found")
	}
	if _, legacy := block.Headers["DEK-Info"]; legacy {
		return nil, true, errors.New("legacy PEM encryption is not supported; convert with `openssl pkcs8 -topk8 -v2 aes-256-cbc -v2prf hmacWithSHA256`")
	}
	var (
		key       any
		err       error
		encrypted bool
	)
	switch block.Type {
	case "ENCRYPTED PRIVATE KEY":
		encrypted = true
		if len(passphrase) == 0 {
			return nil, true, fmt.Errorf("%w: set ca.passphrase_file", ErrPassphraseRequired)
		}
		key, err = decryptPKCS8(block.Bytes, passphrase)
		if err != nil {
			return nil, true, fmt.Errorf("%w (or the file is damaged): %v; check ca.passphrase_file", ErrWrongPassphrase, err)
		}
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, false, fmt.Errorf("PEM block %q is not a private key", block.Type)
	}
	if err != nil {
		return nil, encrypted, fmt.Errorf("parse private key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, encrypted, fmt.Errorf("%w: %T cannot sign", ErrUnsupportedKey, key)
	}
	if _, err := KeyTypeOf(signer.Public()); err != nil {
		return nil, encrypted, err
	}
	return signer, encrypted, nil
}

// decryptPKCS8 wraps pkcs8.ParsePKCS8PrivateKey, which panics inside
// crypto/cipher on a ciphertext or IV of the wrong length: a damaged key
// file must give an error, not crash the daemon.
func decryptPKCS8(der, passphrase []byte) (key any, err error) {
	defer func() {
		if r := recover(); r != nil {
			key, err = nil, fmt.Errorf("malformed encrypted key: %v", r)
		}
	}()
	return pkcs8.ParsePKCS8PrivateKey(der, passphrase)
}

// writeNew writes data to path with mode 0600 without ever replacing an
// existing file, and without leaving a half-written file at path: the data
// goes to a temporary file that is then hard-linked into place.
func writeNew(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create key directory: %w", err)
	}
	tmp, err := writeTemp(dir, data, 0o600)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%w: %s", ErrKeyExists, path)
		}
		return fmt.Errorf("install %s: %w", path, err)
	}
	return syncDir(dir)
}

// writeFile replaces path atomically with data.
func writeFile(path string, data []byte, mode fs.FileMode) error {
	dir := filepath.Dir(path)
	tmp, err := writeTemp(dir, data, mode)
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("install %s: %w", path, err)
	}
	return syncDir(dir)
}

// writeTemp writes data to a new temporary file in dir, synced to disk, and
// returns its name.
func writeTemp(dir string, data []byte, mode fs.FileMode) (string, error) {
	f, err := os.CreateTemp(dir, ".tmp-*")
	if err != nil {
		return "", fmt.Errorf("create file in %s: %w", dir, err)
	}
	name := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(name)
		return "", fmt.Errorf("write %s: %w", name, err)
	}
	return name, nil
}

// syncDir makes a rename or link in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && runtime.GOOS != "windows" {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// keyID is the key identifier of RFC 7093 section 2 method 1: the leftmost
// 160 bits of the SHA-256 hash of the subjectPublicKey bit string.
func keyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnsupportedKey, err)
	}
	spk, err := subjectPublicKeyBits(der)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(spk)
	return sum[:20], nil
}

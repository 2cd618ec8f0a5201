package smime

import (
	"crypto/x509"
	"errors"
	"fmt"
)

// Sentinel errors. Every error returned by this package for bad input wraps
// exactly one of them (test with errors.Is); the wrapping message says what
// was wrong.
var (
	// ErrNotSigned: the message or CMS object carries no signature (an
	// unsigned message, a certs-only object, or a SignedData without signers).
	ErrNotSigned = errors.New("smime: not signed")
	// ErrBadSignature: a signature is present but does not match the content
	// (the content was altered, or the signature is corrupt).
	ErrBadSignature = errors.New("smime: signature does not verify")
	// ErrUntrustedSigner: the signature is correct but the signer certificate
	// does not chain to a trusted root at the receipt time, or may not sign
	// mail (key usage, extended key usage).
	ErrUntrustedSigner = errors.New("smime: signer not trusted")
	// ErrSignerExpired: the signature is correct and the signer certificate
	// chains to a trusted root, but it had expired at the receipt time. The
	// error is a *SignerExpiredError, which carries the certificate so that
	// the caller can tell whose certificate lapsed (SPEC 4.2: lapse notice).
	ErrSignerExpired = errors.New("smime: signer certificate expired")
	// ErrWeakAlgorithm: the signature uses a broken digest (SHA-1, MD5).
	ErrWeakAlgorithm = errors.New("smime: weak algorithm")
	// ErrUnsupported: well-formed input using an algorithm or structure this
	// package does not implement (for example a signer identified by subject
	// key identifier, or a key-agreement recipient).
	ErrUnsupported = errors.New("smime: unsupported")
	// ErrMalformed: the input is not valid MIME, CMS or PKCS#10.
	ErrMalformed = errors.New("smime: malformed input")
	// ErrLimit: the input exceeds a size, count or nesting limit.
	ErrLimit = errors.New("smime: input exceeds a limit")
	// ErrNotRecipient: enveloped data is not addressed to the given
	// certificate.
	ErrNotRecipient = errors.New("smime: not addressed to this certificate")
	// ErrDecrypt: enveloped data addressed to the given certificate could not
	// be decrypted (wrong key, or corrupted ciphertext).
	ErrDecrypt = errors.New("smime: decryption failed")
	// ErrBadCSR: a PKCS#10 certification request is malformed or its
	// self-signature does not verify.
	ErrBadCSR = errors.New("smime: bad certification request")
	// ErrEncrypted: the request is enveloped and must be decrypted (see
	// Request.Decrypt) before its content can be read.
	ErrEncrypted = errors.New("smime: request is encrypted")
)

// SignerExpiredError reports a correct signature by a certificate that
// chains to a trusted root but had expired at the receipt time. It matches
// ErrSignerExpired with errors.Is.
type SignerExpiredError struct {
	// Signer is the expired certificate that made the signature.
	Signer *x509.Certificate
	// ReplayID identifies the signature as Signature.ReplayID does.
	ReplayID [32]byte
}

// Error describes the expiry.
func (e *SignerExpiredError) Error() string {
	return fmt.Sprintf("smime: signer certificate %s (serial %x) expired at %s",
		e.Signer.Subject, e.Signer.SerialNumber, e.Signer.NotAfter.UTC().Format("2006-01-02T15:04:05Z"))
}

// Is makes errors.Is(err, ErrSignerExpired) true.
func (e *SignerExpiredError) Is(target error) bool { return target == ErrSignerExpired }

// Package enroll handles enrollment: the one-time codes an administrator
// hands a user out of band, which the user then proves by quoting one in the
// enrollment request (SPEC sections 3 and 4.1). The mail flows of enrollment
// come later in this package.
//
// A code is shown to a person once and stored only as a hash. It is single
// use, expires after the policy's code_ttl, and locks after max_attempts wrong
// tries; Code.Check decides all of that from the stored row, and the store
// records the outcome.
package enroll

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"
)

// Sentinel errors for the outcomes of Code.Check and Normalize. Each returned
// error wraps exactly one of them.
var (
	// ErrMalformedCode means the input cannot be a code at all: wrong length
	// or a character outside the alphabet.
	ErrMalformedCode = errors.New("malformed enrollment code")
	// ErrCodeWrong means a well-formed code that is not the one issued.
	ErrCodeWrong = errors.New("wrong enrollment code")
	// ErrCodeExpired means the code's time to live has run out.
	ErrCodeExpired = errors.New("enrollment code expired")
	// ErrCodeLocked means too many wrong tries were made with the code.
	ErrCodeLocked = errors.New("enrollment code locked")
	// ErrCodeUsed means the code has already enrolled a key.
	ErrCodeUsed = errors.New("enrollment code already used")
)

// alphabet is Crockford's base32: digits and upper-case letters without I, L,
// O and U, so that nothing a person reads can be taken for something else.
const alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

const (
	groupLen  = 5
	groups    = 6
	symbols   = groupLen * groups // 30 symbols of 5 bits: 150 bits
	codeBytes = symbols + groups - 1
)

// NewCode returns a fresh enrollment code of 150 random bits from
// crypto/rand, comfortably above SPEC's 128: 30 symbols of Crockford's base32
// (5 bits each) in six dash-separated groups of five, such as
// "7KQ2M-9XB4D-J0RTW-5HN8P-CZ3VE-G6AF1". The result is already in the
// canonical form that Normalize returns.
func NewCode() (string, error) {
	var raw [symbols]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("generate enrollment code: %w", err)
	}
	var b strings.Builder
	b.Grow(codeBytes)
	for i, r := range raw {
		if i > 0 && i%groupLen == 0 {
			b.WriteByte('-')
		}
		// 256 is a multiple of 32, so the low five bits of a uniform byte
		// are uniform: no modulo bias.
		b.WriteByte(alphabet[r&31])
	}
	return b.String(), nil
}

// Normalize turns what a person typed into the canonical form of a code: it
// ignores case, spaces and dashes (including typographic dashes a mail client
// may substitute), and reads the letters O as zero and I and L as one, as
// Crockford's base32 prescribes. Input that still does not have 30 symbols of
// the alphabet is refused with an error wrapping ErrMalformedCode.
func Normalize(input string) (string, error) {
	var sym [symbols]byte
	n := 0
	for _, r := range input {
		switch {
		case unicode.IsSpace(r) || unicode.Is(unicode.Pd, r):
			continue
		case r >= 'a' && r <= 'z':
			r -= 'a' - 'A'
		}
		switch r {
		case 'O':
			r = '0'
		case 'I', 'L':
			r = '1'
		}
		if r > unicode.MaxASCII || strings.IndexByte(alphabet, byte(r)) < 0 {
			return "", fmt.Errorf("%w: %q is not a character of an enrollment code (digits and letters except U); check the code you were given",
				ErrMalformedCode, r)
		}
		if n == symbols {
			return "", fmt.Errorf("%w: more than %d characters; an enrollment code has %d letters and digits in groups of %d",
				ErrMalformedCode, symbols, symbols, groupLen)
		}
		sym[n] = byte(r)
		n++
	}
	if n != symbols {
		return "", fmt.Errorf("%w: %d characters; an enrollment code has %d letters and digits in groups of %d",
			ErrMalformedCode, n, symbols, groupLen)
	}
	var b strings.Builder
	b.Grow(codeBytes)
	for i, c := range sym {
		if i > 0 && i%groupLen == 0 {
			b.WriteByte('-')
		}
		b.WriteByte(c)
	}
	return b.String(), nil
}

// hashPrefix separates enrollment-code hashes from every other SHA-256 use in
// kms, and names a version so the scheme can change without confusion.
const hashPrefix = "kms enrollment code v1\x00"

// Hash returns the value stored for code: SHA-256 over a fixed prefix and the
// code's canonical form, so that any way of typing the same code hashes the
// same. Input that Normalize refuses is hashed as given; it can never equal
// the hash of a real code, which is always canonical.
//
// A fast, unsalted hash is right here, unlike for passwords: a code carries
// 150 random bits, so nobody who reads the database can search that space
// offline, and online guessing is stopped by the attempt counter, not by the
// cost of hashing. Salting would only prevent looking a code up by its hash.
func Hash(code string) []byte {
	if c, err := Normalize(code); err == nil {
		code = c
	}
	h := sha256.New()
	h.Write([]byte(hashPrefix))
	h.Write([]byte(code))
	return h.Sum(nil)
}

// Code is an outstanding enrollment code as the store keeps it.
type Code struct {
	Hash      []byte    // Hash of the code; the code itself is never stored
	ExpiresAt time.Time // the code works strictly before this instant
	Attempts  int       // wrong tries so far
	Used      bool      // set when the code has enrolled a key
}

// Check decides whether input, as a person typed it, redeems c at now. It
// returns nil on a match, or an error wrapping one sentinel, tested in this
// order so that a code that can no longer be redeemed tells nothing about
// whether input was right:
//
//   - ErrCodeUsed: c has already been redeemed;
//   - ErrCodeLocked: c.Attempts has reached maxAttempts (a maxAttempts below
//     1 locks every code, failing closed);
//   - ErrCodeExpired: now is at or after c.ExpiresAt;
//   - ErrMalformedCode: input is not shaped like a code;
//   - ErrCodeWrong: input is a code, but not this one.
//
// Check does not change c. The caller (the store) must, in the same
// transaction that read c, increment Attempts when the error is ErrCodeWrong
// or ErrMalformedCode, and set Used when the error is nil, so that two
// concurrent requests cannot both redeem the code or both spend the last try.
func (c Code) Check(input string, now time.Time, maxAttempts int) error {
	switch {
	case c.Used:
		return fmt.Errorf("%w: ask an administrator to enroll you again for a new code", ErrCodeUsed)
	case c.Attempts >= maxAttempts:
		return fmt.Errorf("%w after %d wrong tries: ask an administrator to enroll you again for a new code", ErrCodeLocked, c.Attempts)
	case !now.Before(c.ExpiresAt):
		return fmt.Errorf("%w at %s: ask an administrator to enroll you again for a new code", ErrCodeExpired, c.ExpiresAt.UTC().Format(time.RFC3339))
	}
	canon, err := Normalize(input)
	if err != nil {
		return err
	}
	if subtle.ConstantTimeCompare(Hash(canon), c.Hash) != 1 {
		return fmt.Errorf("%w: check the code you were given and try again", ErrCodeWrong)
	}
	return nil
}

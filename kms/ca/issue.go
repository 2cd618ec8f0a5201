package ca

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"net/mail"
	"strings"
	"time"

	"github.com/kmsmail/kms/policy"
)

// Errors of Issue.
var (
	// ErrUnsupportedKey: the public key is not one of policy.AllKeyTypes.
	ErrUnsupportedKey = errors.New("unsupported key")
	// ErrInvalidRequest: the address or the validity period cannot be certified.
	ErrInvalidRequest = errors.New("invalid certificate request")
	// ErrIssuerExpired: the issuing CA is not valid for any part of the
	// requested period.
	ErrIssuerExpired = errors.New("the issuing CA is not valid for the requested period")
)

// OIDs of the certificate policies kms writes.
var (
	// OIDMailboxValidatedStrict is the S/MIME BR policy of users' certificates.
	OIDMailboxValidatedStrict = mustOID(2, 23, 140, 1, 5, 1, 3)
	oidAnyPolicy              = mustOID(2, 5, 29, 32, 0)
)

// MaxValidity is the longest validity the S/MIME BRs (6.3.2) allow a strict
// subscriber certificate: 825 days, counted inclusively as RFC 5280 does.
const MaxValidity = 825 * 24 * time.Hour

// maxCommonName is ub-common-name of RFC 5280.
const maxCommonName = 64

// Request is what Issue certifies: a public key for a mailbox address during
// a period. NotBefore is normally the current time, perhaps backdated by a
// few minutes for correspondents with slow clocks.
type Request struct {
	Email     string           // the mailbox address, ASCII, as enrolled
	PublicKey crypto.PublicKey // one of policy.AllKeyTypes
	NotBefore time.Time
	NotAfter  time.Time // cut to the issuing CA's notAfter
}

// Issue signs a subscriber certificate for req with the issuing CA. The
// validity is clamped to the issuing CA's, so the result may end earlier
// than req.NotAfter; the caller stores the certificate.
func (a *Authority) Issue(req Request) (*x509.Certificate, error) {
	if err := checkMailbox(req.Email); err != nil {
		return nil, err
	}
	kt, err := KeyTypeOf(req.PublicKey)
	if err != nil {
		return nil, err
	}
	nb, na := req.NotBefore.UTC().Truncate(time.Second), req.NotAfter.UTC().Truncate(time.Second)
	if !na.After(nb) {
		return nil, fmt.Errorf("%w: notAfter %s is not after notBefore %s", ErrInvalidRequest, na.Format(time.RFC3339), nb.Format(time.RFC3339))
	}
	if na.Sub(nb)+time.Second > MaxValidity {
		return nil, fmt.Errorf("%w: validity %s exceeds the 825 days the S/MIME BRs allow; shorten policy.lifetime",
			ErrInvalidRequest, na.Sub(nb).Round(time.Hour))
	}
	if nb.Before(a.issuer.NotBefore) {
		nb = a.issuer.NotBefore
	}
	if na.After(a.issuer.NotAfter) {
		na = a.issuer.NotAfter
	}
	if !na.After(nb) {
		return nil, fmt.Errorf("%w: it is valid from %s to %s", ErrIssuerExpired,
			a.issuer.NotBefore.Format(time.RFC3339), a.issuer.NotAfter.Format(time.RFC3339))
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	ski, err := keyID(req.PublicKey)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             nb,
		NotAfter:              na,
		KeyUsage:              keyUsage(kt),
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection},
		BasicConstraintsValid: true,
		EmailAddresses:        []string{req.Email},
		Policies:              []x509.OID{OIDMailboxValidatedStrict},
		CRLDistributionPoints: []string{a.crlURL},
		SubjectKeyId:          ski,
	}
	if a.aiaURL != "" {
		tmpl.IssuingCertificateURL = []string{a.aiaURL}
	}
	// The mailbox-validated profile allows only commonName (holding the
	// address), emailAddress and serialNumber in the subject. An address too
	// long for a commonName leaves the subject empty, and crypto/x509 then
	// marks the subjectAltName critical as RFC 5280 requires.
	if len(req.Email) <= maxCommonName {
		tmpl.Subject = pkix.Name{CommonName: req.Email}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.issuer, req.PublicKey, a.issuerKey)
	if err != nil {
		return nil, fmt.Errorf("sign certificate for %s: %w", req.Email, err)
	}
	return x509.ParseCertificate(der)
}

// keyUsage is the S/MIME BR dual-use key usage for a key type: signing and
// key management, which for RSA is keyEncipherment and for ECDSA (ECDH in
// CMS) keyAgreement.
func keyUsage(kt policy.KeyType) x509.KeyUsage {
	if kt == policy.P256 || kt == policy.P384 {
		return x509.KeyUsageDigitalSignature | x509.KeyUsageKeyAgreement
	}
	return x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
}

// KeyTypeOf names the key type of pub (policy.KeyTypeOf), or returns an
// error wrapping ErrUnsupportedKey for a key kms does not certify. RSA public
// exponents must also be odd and at least 3 (S/MIME BRs 6.1.6).
func KeyTypeOf(pub crypto.PublicKey) (policy.KeyType, error) {
	kt, err := policy.KeyTypeOf(pub)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrUnsupportedKey, err)
	}
	if k, ok := pub.(*rsa.PublicKey); ok && (k.E < 3 || k.E%2 == 0) {
		return "", fmt.Errorf("%w: RSA public exponent %d must be odd and at least 3", ErrUnsupportedKey, k.E)
	}
	return kt, nil
}

// checkMailbox accepts a bare ASCII address such as alice@example.com. An
// rfc822Name is an IA5String; internationalised addresses would need the
// SmtpUTF8Mailbox name form, which kms does not write.
func checkMailbox(email string) error {
	if email == "" {
		return fmt.Errorf("%w: empty email address", ErrInvalidRequest)
	}
	for _, r := range email {
		if r <= ' ' || r >= 0x7f {
			return fmt.Errorf("%w: email address %q must be ASCII without spaces", ErrInvalidRequest, email)
		}
	}
	addr, err := mail.ParseAddress(email)
	if err != nil || addr.Address != email || addr.Name != "" {
		return fmt.Errorf("%w: %q is not a bare email address such as alice@example.com", ErrInvalidRequest, email)
	}
	return nil
}

func mustOID(arcs ...uint64) x509.OID {
	oid, err := x509.OIDFromInts(arcs)
	if err != nil {
		panic(err)
	}
	return oid
}

// randomSerial returns a positive serial number of 128 random bits: the BRs
// require at least 64 bits from a CSPRNG, and RFC 5280 at most 20 octets
// (128 bits need at most 17 in DER).
func randomSerial() (*big.Int, error) {
	b := make([]byte, 16)
	for {
		if _, err := rand.Read(b); err != nil {
			return nil, fmt.Errorf("serial number: %w", err)
		}
		if n := new(big.Int).SetBytes(b); n.Sign() > 0 {
			return n, nil
		}
	}
}

// subjectPublicKeyBits extracts the subjectPublicKey BIT STRING contents from
// a DER SubjectPublicKeyInfo.
func subjectPublicKeyBits(spki []byte) ([]byte, error) {
	var info struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(spki, &info); err != nil {
		return nil, fmt.Errorf("%w: subjectPublicKeyInfo: %v", ErrUnsupportedKey, err)
	}
	return info.PublicKey.Bytes, nil
}

// newRoot makes the self-signed root certificate.
func newRoot(key crypto.Signer, org string, now time.Time) (*x509.Certificate, error) {
	tmpl, err := caTemplate(key.Public(), org, "Root CA", now.Add(-caBackdate), now.AddDate(rootYears, 0, 0))
	if err != nil {
		return nil, err
	}
	tmpl.MaxPathLen = 1
	return sign(tmpl, tmpl, key.Public(), key)
}

// newIssuer makes the issuing CA certificate, signed by the root.
func newIssuer(root *x509.Certificate, rootKey, key crypto.Signer, org string, now time.Time) (*x509.Certificate, error) {
	na := now.AddDate(issuerYears, 0, 0)
	if na.After(root.NotAfter) {
		na = root.NotAfter
	}
	tmpl, err := caTemplate(key.Public(), org, "S/MIME Issuing CA", now.Add(-caBackdate), na)
	if err != nil {
		return nil, err
	}
	tmpl.MaxPathLenZero = true
	// S/MIME BRs 7.1.2.2: an S/MIME subordinate CA carries the
	// emailProtection EKU, and a policy; anyPolicy suits a CA run by the
	// root's owner.
	tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageEmailProtection}
	tmpl.Policies = []x509.OID{oidAnyPolicy}
	return sign(tmpl, root, key.Public(), rootKey)
}

// caTemplate is what the root and the issuing CA have in common. The
// commonName ends with the start of the key identifier so that a CA created
// again (a new data directory) does not share its name with the old one:
// NSS and Windows look issuers up by name and stumble over namesakes.
func caTemplate(pub crypto.PublicKey, org, role string, nb, na time.Time) (*x509.Certificate, error) {
	ski, err := keyID(pub)
	if err != nil {
		return nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, err
	}
	return &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{org},
			CommonName:   fmt.Sprintf("%s %s %s", org, role, strings.ToUpper(hex.EncodeToString(ski[:4]))),
		},
		NotBefore:             nb,
		NotAfter:              na,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		SubjectKeyId:          ski,
	}, nil
}

func sign(tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", tmpl.Subject.CommonName, err)
	}
	return x509.ParseCertificate(der)
}

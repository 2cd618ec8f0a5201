package ca

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kmsmail/kms/policy"
)

// Paths under Config.BaseURL that certificates point to. The admin HTTP
// server serves the issuing CA certificate (DER) at IssuerPath and the
// current CRL (DER) at CRLPath.
const (
	CRLPath    = "/crl"
	IssuerPath = "/issuer.cer"
)

// Names of the files in Config.Dir.
const (
	rootCertFile   = "root.pem"
	issuerCertFile = "issuer.pem"
	kmsCertFile    = "kms.pem"
)

// Names of the keys in the KeyStore.
const (
	rootKeyName   = "root"
	issuerKeyName = "issuer"
	kmsKeyName    = "kms"
)

// ErrCADamaged reports CA files that do not fit together, such as an
// issuing CA that the root did not sign, or a key that does not match its
// certificate.
var ErrCADamaged = errors.New("CA files are inconsistent")

// Config says where the CA lives and what it creates on first run.
type Config struct {
	// Dir holds the certificates and, by default, the keys: DATA_DIR/ca.
	Dir string
	// KeyFile is the issuing CA's key file (ca.key_file); empty means
	// Dir/issuer.key.
	KeyFile string
	// Passphrase encrypts the key files; empty stores them unencrypted.
	Passphrase []byte
	// Keys replaces the file key store (Dir, KeyFile, Passphrase), e.g. with
	// an HSM. Nil means FileKeys.
	Keys KeyStore
	// KeyType is the key type of the issuing CA and of the KMS's own
	// certificate when they are created. Empty means rsa2048.
	KeyType policy.KeyType
	// RootKeyType is the root's key type when it is created. Empty means
	// rsa4096; tests choose a faster one.
	RootKeyType policy.KeyType
	// BaseURL is the base of the CRL distribution point and AIA URLs put
	// into certificates: http.public_url, or "http://" + http.listen. An
	// https URL is written into certificates as http on port 80, because the
	// S/MIME BRs require http there; the server must answer on both.
	BaseURL string
	// AIA puts the caIssuers URL (BaseURL + /issuer.cer) into certificates.
	// SPEC section 3 asks for it only when http.public_url is configured: a
	// loopback URL helps no correspondent, while the CRL distribution point
	// is required by the S/MIME BRs and so is always written.
	AIA bool
	// Organization names the CA in its certificates. Empty means "kms".
	Organization string
	// KMSAddress is the KMS's mailbox, e.g. kms@example.com.
	KMSAddress string
	// KMSLifetime is the validity of the KMS's certificate. Zero means 18
	// months, the default lifetime of users' certificates.
	KMSLifetime policy.Duration
}

// Lifetimes and thresholds; the package documentation explains the choice.
const (
	rootYears       = 20
	issuerYears     = 5
	kmsRenewBefore  = 30 * 24 * time.Hour
	issuerWarnAhead = 18 // months
	// caBackdate moves the notBefore of certificates Open makes into the
	// past, so that a correspondent whose clock is a little behind does not
	// see the KMS's first signed mail as not yet valid.
	caBackdate     = time.Hour
	maxOrgLength   = 40
	defaultOrgName = "kms"
)

// Authority signs certificates and CRLs with the issuing CA.
type Authority struct {
	root      *x509.Certificate
	issuer    *x509.Certificate
	issuerKey crypto.Signer
	kms       []*x509.Certificate // current first, then older ones of the same key
	kmsKey    crypto.Signer
	crlURL    string
	aiaURL    string
}

// Open loads the CA from cfg.Dir, creating the root, the issuing CA and the
// KMS certificate on first run, and renewing the KMS certificate when it
// expires within 30 days or no longer fits cfg. now is the current time.
func Open(cfg Config, now time.Time, log *slog.Logger) (*Authority, error) {
	if log == nil {
		log = slog.Default()
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	a := &Authority{}
	if a.crlURL, a.aiaURL, err = certURLs(cfg.BaseURL); err != nil {
		return nil, err
	}
	if !cfg.AIA {
		a.aiaURL = ""
	}
	if !strings.HasPrefix(strings.ToLower(cfg.BaseURL), "http:") {
		log.Info("CA: certificates carry http URLs as the S/MIME BRs require", "base_url", cfg.BaseURL, "crl", a.crlURL, "issuer", a.aiaURL)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create CA directory (ca): %w", err)
	}
	keys := cfg.Keys
	if keys == nil {
		fk := &FileKeys{Dir: cfg.Dir, Passphrase: cfg.Passphrase, Log: log}
		if cfg.KeyFile != "" {
			fk.Files = map[string]string{issuerKeyName: cfg.KeyFile}
		}
		keys = fk
	}
	mk := maker{cfg: cfg, keys: keys, now: now.UTC().Truncate(time.Second), log: log}
	rootKey, err := mk.loadRoot(a)
	if err != nil {
		return nil, err
	}
	if err := mk.loadIssuer(a, rootKey); err != nil {
		return nil, err
	}
	if !mk.now.Before(a.issuer.NotAfter) {
		return nil, fmt.Errorf("%w: the issuing CA in %s expired on %s; to create a new one, move %s aside and start kms with %s in place",
			ErrIssuerExpired, mk.path(issuerCertFile), a.issuer.NotAfter.Format(time.RFC3339), mk.path(issuerCertFile), rootKeyName+".key")
	}
	if left := a.issuer.NotAfter; mk.now.AddDate(0, issuerWarnAhead, 0).After(left) {
		log.Warn("CA: the issuing CA expires soon; certificates issued from now on end at its expiry",
			"not_after", left, "file", filepath.Join(cfg.Dir, issuerCertFile))
	}
	if err := mk.loadKMS(a); err != nil {
		return nil, err
	}
	return a, nil
}

func (c Config) withDefaults() (Config, error) {
	if c.Dir == "" {
		return c, errors.New("CA directory is empty: set data_dir")
	}
	if c.KeyType == "" {
		c.KeyType = policy.RSA2048
	}
	if c.RootKeyType == "" {
		c.RootKeyType = policy.RSA4096
	}
	for _, kt := range []policy.KeyType{c.KeyType, c.RootKeyType} {
		if !kt.Known() {
			return c, fmt.Errorf("%w: CA key type %q (use one of %v)", ErrUnsupportedKey, kt, policy.AllKeyTypes)
		}
	}
	if c.Organization == "" {
		c.Organization = defaultOrgName
	}
	if len(c.Organization) > maxOrgLength {
		return c, fmt.Errorf("CA organization %q is longer than %d characters", c.Organization, maxOrgLength)
	}
	if err := checkMailbox(c.KMSAddress); err != nil {
		return c, fmt.Errorf("KMS address (address): %w", err)
	}
	if c.KMSLifetime.IsZero() {
		c.KMSLifetime = policy.Months(18)
	}
	return c, nil
}

// certURLs derives the CRL distribution point and caIssuers URLs from base.
// The S/MIME BRs (7.1.2.3 b and c) allow only http there, so an https base
// becomes http with the same host and path; an https base with a port other
// than 443 is refused because the matching http port cannot be guessed.
func certURLs(base string) (crl, aia string, err error) {
	u, err := url.Parse(strings.TrimSpace(base))
	if err != nil {
		return "", "", fmt.Errorf("http.public_url %q: %w", base, err)
	}
	if u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return "", "", fmt.Errorf("http.public_url %q: use a URL such as http://pki.example.com (no credentials, query or fragment)", base)
	}
	switch strings.ToLower(u.Scheme) {
	case "http":
	case "https":
		if p := u.Port(); p != "" && p != "443" {
			return "", "", fmt.Errorf("http.public_url %q: certificates must carry http URLs (S/MIME BRs 7.1.2.3), and the http port for https port %s is unknown: set an http:// URL", base, p)
		}
		u.Host = u.Hostname()
		if strings.Contains(u.Host, ":") {
			u.Host = "[" + u.Host + "]"
		}
	default:
		return "", "", fmt.Errorf("http.public_url %q: scheme must be http or https", base)
	}
	u.Scheme = "http"
	u.Path = strings.TrimRight(u.Path, "/")
	u.RawPath = ""
	b := u.String()
	return b + CRLPath, b + IssuerPath, nil
}

// maker creates or loads each piece of the CA in turn.
type maker struct {
	cfg  Config
	keys KeyStore
	now  time.Time
	log  *slog.Logger
}

func (m maker) path(file string) string { return filepath.Join(m.cfg.Dir, file) }

// loadRoot loads root.pem, or creates the root. It returns the root key only
// when it had to create the root; otherwise the key stays where it is
// (possibly offline) until the issuing CA needs it.
func (m maker) loadRoot(a *Authority) (crypto.Signer, error) {
	certs, err := readCerts(m.path(rootCertFile))
	if err == nil {
		a.root = certs[0]
		if err := a.root.CheckSignatureFrom(a.root); err != nil || !a.root.IsCA {
			return nil, fmt.Errorf("%w: %s is not a self-signed CA certificate", ErrCADamaged, m.path(rootCertFile))
		}
		return nil, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	if _, err := os.Stat(m.path(issuerCertFile)); err == nil {
		return nil, fmt.Errorf("%w: %s exists but %s does not; restore the root certificate from a backup",
			ErrCADamaged, m.path(issuerCertFile), m.path(rootCertFile))
	}
	key, err := m.signer(rootKeyName, m.cfg.RootKeyType)
	if err != nil {
		return nil, err
	}
	a.root, err = newRoot(key, m.cfg.Organization, m.now)
	if err != nil {
		return nil, err
	}
	if err := writeFile(m.path(rootCertFile), certsPEM(a.root), 0o644); err != nil {
		return nil, err
	}
	m.log.Info("CA: created root CA", "subject", a.root.Subject.String(), "serial", a.root.SerialNumber.Text(16),
		"not_after", a.root.NotAfter, "file", m.path(rootCertFile))
	return key, nil
}

// loadIssuer loads issuer.pem and its key, or creates the issuing CA with
// the root key.
func (m maker) loadIssuer(a *Authority, rootKey crypto.Signer) error {
	certs, err := readCerts(m.path(issuerCertFile))
	if err == nil {
		a.issuer = certs[0]
		if err := a.issuer.CheckSignatureFrom(a.root); err != nil {
			return fmt.Errorf("%w: %s was not signed by %s: %v", ErrCADamaged, m.path(issuerCertFile), m.path(rootCertFile), err)
		}
		if a.issuerKey, err = m.keys.Signer(issuerKeyName); err != nil {
			return fmt.Errorf("issuing CA key: %w", err)
		}
		return matchKey(a.issuer, a.issuerKey, m.path(issuerCertFile))
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if rootKey == nil {
		if rootKey, err = m.keys.Signer(rootKeyName); err != nil {
			return fmt.Errorf("root key, needed to create the issuing CA: %w", err)
		}
		if err := matchKey(a.root, rootKey, m.path(rootCertFile)); err != nil {
			return err
		}
	}
	if a.issuerKey, err = m.signer(issuerKeyName, m.cfg.KeyType); err != nil {
		return err
	}
	if a.issuer, err = newIssuer(a.root, rootKey, a.issuerKey, m.cfg.Organization, m.now); err != nil {
		return err
	}
	if err := writeFile(m.path(issuerCertFile), certsPEM(a.issuer), 0o644); err != nil {
		return err
	}
	m.log.Info("CA: created issuing CA", "subject", a.issuer.Subject.String(), "serial", a.issuer.SerialNumber.Text(16),
		"not_after", a.issuer.NotAfter, "file", m.path(issuerCertFile))
	return nil
}

// loadKMS loads the KMS's certificate and key, issuing a new certificate
// when there is none or the current one is due for renewal.
func (m maker) loadKMS(a *Authority) error {
	var err error
	if a.kmsKey, err = m.signer(kmsKeyName, m.cfg.KeyType); err != nil {
		return err
	}
	certs, err := readCerts(m.path(kmsCertFile))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if len(certs) > 0 {
		if err := matchKey(certs[0], a.kmsKey, m.path(kmsCertFile)); err != nil {
			return err
		}
		why := a.kmsStale(certs[0], m.cfg.KMSAddress, m.now)
		if why == "" {
			a.kms = certs
			return nil
		}
		m.log.Info("CA: renewing the KMS certificate", "reason", why, "serial", certs[0].SerialNumber.Text(16))
	}
	cert, err := a.Issue(Request{
		Email:     m.cfg.KMSAddress,
		PublicKey: a.kmsKey.Public(),
		NotBefore: m.now.Add(-caBackdate),
		NotAfter:  m.cfg.KMSLifetime.AddTo(m.now),
	})
	if err != nil {
		return fmt.Errorf("issue the KMS certificate: %w", err)
	}
	// Keep older certificates of the key while they are valid: mail may
	// still arrive encrypted to them.
	a.kms = []*x509.Certificate{cert}
	for _, c := range certs {
		if c.NotAfter.After(m.now) && bytes.Equal(c.RawSubjectPublicKeyInfo, cert.RawSubjectPublicKeyInfo) {
			a.kms = append(a.kms, c)
		}
	}
	if err := writeFile(m.path(kmsCertFile), certsPEM(a.kms...), 0o644); err != nil {
		return err
	}
	m.log.Info("CA: issued the KMS certificate", "email", m.cfg.KMSAddress, "serial", cert.SerialNumber.Text(16),
		"not_after", cert.NotAfter, "file", m.path(kmsCertFile))
	return nil
}

// kmsStale says why c must be renewed, or "" if it is still good.
func (a *Authority) kmsStale(c *x509.Certificate, email string, now time.Time) string {
	switch {
	case c.CheckSignatureFrom(a.issuer) != nil:
		return "not issued by the current issuing CA"
	case len(c.EmailAddresses) != 1 || c.EmailAddresses[0] != email:
		return fmt.Sprintf("address changed from %v to %s", c.EmailAddresses, email)
	case !now.Before(c.NotAfter.Add(-kmsRenewBefore)):
		return fmt.Sprintf("expires %s", c.NotAfter.Format(time.RFC3339))
	case len(c.CRLDistributionPoints) != 1 || c.CRLDistributionPoints[0] != a.crlURL:
		return fmt.Sprintf("CRL URL changed to %s", a.crlURL)
	case strings.Join(c.IssuingCertificateURL, " ") != a.aiaURL:
		return fmt.Sprintf("issuer URL changed to %s", a.aiaURL)
	}
	return ""
}

// signer loads the named key, generating it of type kt if it does not exist.
func (m maker) signer(name string, kt policy.KeyType) (crypto.Signer, error) {
	key, err := m.keys.Signer(name)
	if errors.Is(err, ErrNoKey) {
		m.log.Info("CA: generating key", "name", name, "type", kt)
		key, err = m.keys.Generate(name, kt)
	}
	if err != nil {
		return nil, fmt.Errorf("%s key: %w", name, err)
	}
	return key, nil
}

// matchKey checks that key belongs to cert.
func matchKey(cert *x509.Certificate, key crypto.Signer, file string) error {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	pub, ok := key.Public().(equaler)
	if !ok || !pub.Equal(cert.PublicKey) {
		return fmt.Errorf("%w: the key does not match the certificate in %s", ErrCADamaged, file)
	}
	return nil
}

// readCerts reads the PEM certificates in path; the error wraps
// fs.ErrNotExist when the file does not exist.
func readCerts(path string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read CA certificate: %w", err)
	}
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrCADamaged, path, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("%w: %s holds no certificate", ErrCADamaged, path)
	}
	return certs, nil
}

// certsPEM encodes certs as consecutive PEM blocks.
func certsPEM(certs ...*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}

// Root returns the root CA certificate.
func (a *Authority) Root() *x509.Certificate { return a.root }

// Issuer returns the issuing CA certificate, the issuer of every certificate
// and CRL this Authority signs.
func (a *Authority) Issuer() *x509.Certificate { return a.issuer }

// Chain returns the issuing CA and the root, in the order a certs-only reply
// or a signature's certificate set lists them after the leaf.
func (a *Authority) Chain() []*x509.Certificate {
	return []*x509.Certificate{a.issuer, a.root}
}

// ChainPEM returns Chain as PEM.
func (a *Authority) ChainPEM() []byte { return certsPEM(a.Chain()...) }

// KMS returns the KMS's own current certificate and its key, for signing
// mail and decrypting requests.
func (a *Authority) KMS() (*x509.Certificate, crypto.Signer) { return a.kms[0], a.kmsKey }

// KMSCertificates returns every unexpired certificate of the KMS key, newest
// first, so that mail encrypted to a certificate the KMS has since renewed
// can still be matched to the key.
func (a *Authority) KMSCertificates() []*x509.Certificate {
	return append([]*x509.Certificate(nil), a.kms...)
}

// IssuerSigner returns the issuing CA's key. It exists for benchmarks of the
// raw signing rate; everything else signs through Issue and CRL.
func (a *Authority) IssuerSigner() crypto.Signer { return a.issuerKey }

// CRLURL returns the CRL distribution point written into certificates.
func (a *Authority) CRLURL() string { return a.crlURL }

// IssuerURL returns the AIA caIssuers URL written into certificates.
func (a *Authority) IssuerURL() string { return a.aiaURL }

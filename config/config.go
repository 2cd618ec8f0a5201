// Package config reads the kms configuration file (SPEC section 6): one YAML
// file in which every key has a working default, unknown keys are errors, and
// secrets never appear. Load decodes strictly, fills the defaults, merges the
// per-domain policy overrides onto the global policy and validates the
// result, reporting each problem with its key, its value and the reason.
//
// Relative paths (data_dir, maildir, certificate and secret files) are used
// as written, that is relative to the daemon's working directory, exactly as
// the default ./kms-data is when no file is given.
package config

import (
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kmsmail/kms/policy"
)

// Environment variables that may hold the secrets which never go in the file.
const (
	EnvRelayPassword = "KMS_RELAY_PASSWORD"
	EnvIMAPPassword  = "KMS_IMAP_PASSWORD"
	EnvCAPassphrase  = "KMS_CA_PASSPHRASE"
	EnvDBPassword    = "KMS_DB_PASSWORD"
)

// Config is the whole configuration file. The yaml tags are the key names of
// SPEC section 6 and are part of the contract. After Load every field holds
// its effective value: defaults, including those derived from data_dir and
// address, are filled in.
type Config struct {
	DataDir      string        `yaml:"data_dir"`
	Address      string        `yaml:"address"`
	AdminAddress string        `yaml:"admin_address"`
	Domains      []string      `yaml:"domains"`
	SMTP         SMTP          `yaml:"smtp"`
	IMAP         IMAP          `yaml:"imap"`
	Relay        Relay         `yaml:"relay"`
	Maildir      string        `yaml:"maildir"`
	HTTP         HTTP          `yaml:"http"`
	Store        Store         `yaml:"store"`
	CA           CA            `yaml:"ca"`
	Log          Log           `yaml:"log"`
	Policy       PolicySection `yaml:"policy"`

	// env looks up the secrets' environment variables when they are asked
	// for, so that a secret never sits in this struct.
	env func(string) string
}

// SMTP is the inbound SMTP listener.
type SMTP struct {
	Listen          string `yaml:"listen"`
	Hostname        string `yaml:"hostname"` // greeting name; default: the domain of address
	TLS             TLS    `yaml:"tls"`
	MaxMessageBytes int64  `yaml:"max_message_bytes"`
	// MaxConnectionsPerIP bounds concurrent sessions from one client address,
	// so one misbehaving host cannot hold every slot; 0 means no limit.
	MaxConnectionsPerIP int `yaml:"max_connections_per_ip"`
	// ReadTimeout drops a client silent for this long (RFC 5321 section
	// 4.5.3.2.7 asks servers to wait at least 5 minutes for a command).
	ReadTimeout time.Duration `yaml:"read_timeout"`
	// WriteTimeout drops a client that does not read its replies.
	WriteTimeout time.Duration `yaml:"write_timeout"`
}

// TLS names a certificate and its key in PEM files; both or neither.
type TLS struct {
	CertFile string `yaml:"cert_file"`
	KeyFile  string `yaml:"key_file"`
}

// IMAP is the optional mailbox the KMS fetches requests from.
type IMAP struct {
	Addr         string `yaml:"addr"` // host:993 (TLS) or host:143 (STARTTLS); "" disables
	Username     string `yaml:"username"`
	PasswordFile string `yaml:"password_file"`
	Mailbox      string `yaml:"mailbox"`
}

// Relay is the optional outbound SMTP relay; without one, mail goes into the
// Maildir.
type Relay struct {
	Addr         string `yaml:"addr"` // host:587; "" means deliver into maildir
	Username     string `yaml:"username"`
	PasswordFile string `yaml:"password_file"`
	// StartTLS refuses to hand mail to a relay that does not offer STARTTLS,
	// so certificates and credentials do not cross the network in clear.
	StartTLS bool `yaml:"starttls"`
	// RetryFor is how long a message is retried before it is given up and
	// logged as undeliverable.
	RetryFor time.Duration `yaml:"retry_for"`
	// Rate caps messages per second to the relay (reminder bursts after a
	// mass enrollment should not trip the relay's limits); 0 means no cap.
	Rate float64 `yaml:"rate"`
}

// HTTP is the admin HTTP listener (API, /metrics, /healthz, /ca.pem, CRL).
type HTTP struct {
	Listen    string `yaml:"listen"`
	PublicURL string `yaml:"public_url"` // base for CRL and AIA URLs in certificates
}

// Store selects the database.
type Store struct {
	Driver string `yaml:"driver"` // sqlite | postgres
	DSN    string `yaml:"dsn"`    // sqlite: a file path (default DATA_DIR/kms.db)
	// PasswordFile holds the PostgreSQL password, which must not be written
	// into dsn; KMS_DB_PASSWORD is the alternative.
	PasswordFile string `yaml:"password_file"`
}

// CA is the issuing CA's key.
type CA struct {
	KeyFile        string `yaml:"key_file"` // default DATA_DIR/ca/issuer.key
	PassphraseFile string `yaml:"passphrase_file"`
	// ImportTrustFile is a PEM file of CA certificates whose certificates,
	// once imported (kms cert import), may sign renewal requests: SPEC 4.2's
	// "tracked by import and trusted by configuration". Empty: only
	// certificates kms issued renew by mail.
	ImportTrustFile string `yaml:"import_trust_file"`
	// KeyType is the key type of the issuing CA and of the KMS's own
	// signing certificate when the first run creates them.
	KeyType policy.KeyType `yaml:"key_type"`
}

// Log selects the daemon's log output.
type Log struct {
	Level  string `yaml:"level"`  // debug | info | warn | error
	Format string `yaml:"format"` // text | json
}

// PolicySection is the policy key: the global policy, with its keys inline,
// and the per-domain overrides. In the file an override names only the keys
// it changes; after Load, Domains holds each domain's complete policy, the
// override merged onto the global one.
type PolicySection struct {
	policy.Policy `yaml:",inline"`
	Domains       map[string]policy.Policy `yaml:"domains"`
}

// The defaults of SPEC section 6 and of the keys kms adds to it.
const (
	defaultDataDir         = "./kms-data"
	defaultAddress         = "kms@example.com"
	defaultAdminAddress    = "postmaster@example.com"
	defaultDomain          = "example.com"
	defaultSMTPListen      = "127.0.0.1:2525"
	defaultMaxMessageBytes = 1 << 20
	defaultMaxConnsPerIP   = 10
	defaultReadTimeout     = 5 * time.Minute
	defaultWriteTimeout    = time.Minute
	defaultMailbox         = "INBOX"
	defaultRetryFor        = 5 * 24 * time.Hour
	defaultRelayRate       = 10
	defaultHTTPListen      = "127.0.0.1:8025"
	defaultDriver          = "sqlite"
	defaultKeyType         = policy.RSA2048
	defaultLogLevel        = "info"
	defaultLogFormat       = "text"
)

// newDefault returns the values a key keeps when the file does not set it.
// Strings are left empty here and filled by fillDefaults after decoding, so
// that an explicit "" means "the default" too, and the derived defaults can
// follow data_dir and address.
func newDefault() *Config {
	return &Config{
		Domains: []string{defaultDomain},
		SMTP: SMTP{
			MaxMessageBytes:     defaultMaxMessageBytes,
			MaxConnectionsPerIP: defaultMaxConnsPerIP,
			ReadTimeout:         defaultReadTimeout,
			WriteTimeout:        defaultWriteTimeout,
		},
		Relay:  Relay{StartTLS: true, RetryFor: defaultRetryFor, Rate: defaultRelayRate},
		Policy: PolicySection{Policy: policy.Default()},
	}
}

// fillDefaults replaces empty strings by their defaults, the derived ones
// last so that they see the effective data_dir and address.
func (c *Config) fillDefaults() {
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.DataDir, defaultDataDir)
	def(&c.Address, defaultAddress)
	def(&c.AdminAddress, defaultAdminAddress)
	def(&c.SMTP.Listen, defaultSMTPListen)
	def(&c.IMAP.Mailbox, defaultMailbox)
	def(&c.HTTP.Listen, defaultHTTPListen)
	def(&c.Store.Driver, defaultDriver)
	def((*string)(&c.CA.KeyType), string(defaultKeyType))
	def(&c.Log.Level, defaultLogLevel)
	def(&c.Log.Format, defaultLogFormat)

	def(&c.Maildir, filepath.Join(c.DataDir, "mail"))
	def(&c.CA.KeyFile, filepath.Join(c.DataDir, "ca", "issuer.key"))
	if c.Store.Driver == "sqlite" {
		def(&c.Store.DSN, filepath.Join(c.DataDir, "kms.db"))
	}
	if at := strings.LastIndexByte(c.Address, '@'); at >= 0 {
		def(&c.SMTP.Hostname, c.Address[at+1:])
	}
}

// maxFileBytes bounds the configuration file; a real one is a few KiB, and
// the bound keeps a wrong --config (a log, a disk image) from eating memory.
const maxFileBytes = 1 << 20

// Load reads the configuration file at path; path "" means no file, so every
// key takes its default. env looks up the secrets' environment variables
// (pass os.Getenv; nil means an empty environment). Every error matches
// ErrInvalid and names the key, the value and the reason.
func Load(path string, env func(string) string) (*Config, error) {
	if path == "" {
		return load("", nil, env)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, &Error{File: path, Msg: fmt.Sprintf("cannot open the configuration file: %v", pathErr(err)), Err: err}
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileBytes+1))
	if err != nil {
		return nil, &Error{File: path, Msg: fmt.Sprintf("cannot read the configuration file: %v", pathErr(err)), Err: err}
	}
	if len(data) > maxFileBytes {
		return nil, &Error{File: path, Msg: fmt.Sprintf("is larger than %d bytes; is it really the configuration file?", maxFileBytes)}
	}
	return load(path, data, env)
}

// LoadBytes is Load for YAML already in memory (tests, kms demo).
func LoadBytes(data []byte, env func(string) string) (*Config, error) {
	if len(data) > maxFileBytes {
		return nil, &Error{Msg: fmt.Sprintf("configuration is larger than %d bytes", maxFileBytes)}
	}
	return load("", data, env)
}

func load(file string, data []byte, env func(string) string) (*Config, error) {
	if env == nil {
		env = func(string) string { return "" }
	}
	c := newDefault()
	c.env = env
	p := newProblems(file)
	decodeFile(p, data, c)
	if err := p.err(); err != nil {
		return nil, err
	}
	c.fillDefaults()
	c.validate(p)
	if err := p.err(); err != nil {
		return nil, err
	}
	return c, nil
}

// BaseURL is the base of the URLs written into certificates (CRL
// distribution point, AIA): public_url without a trailing slash, or the
// admin listener's own address when no public URL is configured, because a
// certificate always needs a CRL distribution point. A daemon listening on
// port 0 must set public_url (or rebuild the URL from the bound address).
func (c *Config) BaseURL() string {
	if c.HTTP.PublicURL != "" {
		return strings.TrimRight(c.HTTP.PublicURL, "/")
	}
	return "http://" + c.HTTP.Listen
}

// Policies returns the policy of every domain: the global policy and, for
// each domain with an override, its complete merged policy. The result
// shares nothing with c.
func (c *Config) Policies() policy.Set {
	s := policy.Set{Default: clonePolicy(c.Policy.Policy), Domains: make(map[string]policy.Policy, len(c.Policy.Domains))}
	for d, p := range maps.All(c.Policy.Domains) {
		s.Domains[d] = clonePolicy(p)
	}
	return s
}

// LogLevel returns log.level as a slog level.
func (c *Config) LogLevel() slog.Level {
	switch c.Log.Level {
	case "debug":
		return slog.LevelDebug
	case "warn":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// clonePolicy copies p so that its Keys slice is not shared.
func clonePolicy(p policy.Policy) policy.Policy {
	p.Keys = append([]policy.KeyType(nil), p.Keys...)
	return p
}

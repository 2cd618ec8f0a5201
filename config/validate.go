package config

import (
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math"
	"net"
	"net/mail"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/kmsmail/kms/policy"
)

// Bounds of smtp.max_message_bytes: a CSR or a signed renewal request is a
// few KiB, and a cap far above what any request needs only helps abuse.
const (
	minMessageBytes = 1 << 10
	maxMessageBytes = 100 << 20
)

// validate checks the decoded, defaulted configuration and records every
// problem in p.
func (c *Config) validate(p *problems) {
	addrOK := checkAddress(p, "address", c.Address)
	checkAddress(p, "admin_address", c.AdminAddress)
	c.validateDomains(p)
	c.validateSMTP(p, addrOK)
	c.validateIMAP(p)
	c.validateRelay(p)
	c.validateHTTP(p)
	c.validateStore(p)
	c.validateCA(p)
	c.validateLog(p)
	c.validatePolicy(p)
}

// checkAddress requires a bare address (kms@example.com), as the KMS writes
// it into envelopes and compares it with certificates' rfc822Name.
func checkAddress(p *problems, key, s string) bool {
	a, err := mail.ParseAddress(s)
	if err != nil {
		p.add(key, 0, err, "%q is not a mail address (%v)", s, err)
		return false
	}
	if a.Name != "" || a.Address != s {
		p.add(key, 0, nil, "%q must be a bare address such as kms@example.com, without a display name or angle brackets", s)
		return false
	}
	if err := checkDomainName(s[strings.LastIndexByte(s, '@')+1:]); err != nil {
		p.add(key, 0, nil, "%q: the domain %v", s, err)
		return false
	}
	return true
}

func (c *Config) validateDomains(p *problems) {
	if len(c.Domains) == 0 {
		p.add("domains", 0, nil, "at least one domain is needed: the domains whose addresses the KMS certifies")
	}
	seen := make(map[string]bool)
	for i, d := range c.Domains {
		key := fmt.Sprintf("domains[%d]", i)
		switch err := checkDomainName(d); {
		case err != nil:
			p.add(key, 0, nil, "%q %v", d, err)
		case d != strings.ToLower(d):
			p.add(key, 0, nil, "%q must be written in lower case: %q", d, strings.ToLower(d))
		case seen[d]:
			p.add(key, 0, nil, "%q is listed twice", d)
		}
		seen[d] = true
	}
}

func (c *Config) validateSMTP(p *problems, addrOK bool) {
	s := c.SMTP
	checkListen(p, "smtp.listen", s.Listen)
	// A hostname derived from a bad address would only repeat that error.
	if _, written := p.lines["smtp.hostname"]; written || addrOK {
		if err := checkDomainName(s.Hostname); err != nil {
			p.add("smtp.hostname", 0, nil, "%q %v", s.Hostname, err)
		}
	}
	checkPair(p, "smtp.tls", s.TLS.CertFile, s.TLS.KeyFile)
	if s.MaxMessageBytes < minMessageBytes || s.MaxMessageBytes > maxMessageBytes {
		p.add("smtp.max_message_bytes", 0, nil, "%d must be between %d (1 KiB) and %d (100 MiB)", s.MaxMessageBytes, minMessageBytes, maxMessageBytes)
	}
	if s.MaxConnectionsPerIP < 0 {
		p.add("smtp.max_connections_per_ip", 0, nil, "%d must be 0 (no limit) or more", s.MaxConnectionsPerIP)
	}
	if s.ReadTimeout <= 0 {
		p.add("smtp.read_timeout", 0, nil, "must be longer than zero: a silent client would hold its connection for ever")
	}
	if s.WriteTimeout <= 0 {
		p.add("smtp.write_timeout", 0, nil, "must be longer than zero: a client that does not read would hold its connection for ever")
	}
}

// checkPair checks a certificate and key file pair: both or neither, and
// readable now rather than at the first STARTTLS.
func checkPair(p *problems, key, cert, priv string) {
	switch {
	case cert == "" && priv == "":
		return
	case cert == "":
		p.add(key+".cert_file", 0, nil, "is empty but %s.key_file is set; give both or neither", key)
	case priv == "":
		p.add(key+".key_file", 0, nil, "is empty but %s.cert_file is set; give both or neither", key)
	}
	checkFile(p, key+".cert_file", cert)
	checkFile(p, key+".key_file", priv)
}

// checkFile checks that a configured file exists and is a file.
func checkFile(p *problems, key, path string) {
	if path == "" {
		return
	}
	fi, err := os.Stat(path)
	switch {
	case err != nil:
		p.add(key, 0, err, "%q cannot be used: %v", path, pathErr(err))
	case fi.IsDir():
		p.add(key, 0, nil, "%q is a directory, not a file", path)
	}
}

// pathErr drops the path from an *fs.PathError, which the messages quote
// themselves.
func pathErr(err error) error {
	if pe, ok := errors.AsType[*fs.PathError](err); ok {
		return fmt.Errorf("%s: %w", pe.Op, pe.Err)
	}
	return err
}

func (c *Config) validateIMAP(p *problems) {
	m := c.IMAP
	if m.Addr == "" {
		if m.Username != "" || m.PasswordFile != "" {
			p.add("imap.addr", 0, nil, "is empty, so imap.username and imap.password_file would be unused; set imap.addr (host:993) or remove them")
		}
		return
	}
	checkDial(p, "imap.addr", m.Addr)
	if m.Username == "" {
		p.add("imap.username", 0, nil, "is required when imap.addr is set")
	}
	c.checkSecret(p, "imap.password_file", m.PasswordFile, EnvIMAPPassword, true)
	if strings.TrimSpace(m.Mailbox) != m.Mailbox {
		p.add("imap.mailbox", 0, nil, "%q has leading or trailing spaces", m.Mailbox)
	}
}

func (c *Config) validateRelay(p *problems) {
	r := c.Relay
	if r.Addr == "" {
		if r.Username != "" || r.PasswordFile != "" {
			p.add("relay.addr", 0, nil, "is empty (mail goes into maildir), so relay.username and relay.password_file would be unused; set relay.addr (host:587) or remove them")
		}
	} else if checkDial(p, "relay.addr", r.Addr) && r.Username != "" && !r.StartTLS && !isLoopback(r.Addr) {
		p.add("relay.starttls", 0, nil, "is false, so relay.username's password would cross the network to %q in clear; enable starttls", r.Addr)
	}
	if r.Username != "" || r.PasswordFile != "" {
		if r.Username == "" {
			p.add("relay.username", 0, nil, "is required when relay.password_file is set")
		}
		c.checkSecret(p, "relay.password_file", r.PasswordFile, EnvRelayPassword, true)
	}
	if r.RetryFor <= 0 {
		p.add("relay.retry_for", 0, nil, "must be longer than zero")
	}
	if !(r.Rate >= 0) || math.IsInf(r.Rate, 0) {
		p.add("relay.rate", 0, nil, "%v must be a number of messages per second, 0 for no limit", r.Rate)
	}
}

func (c *Config) validateHTTP(p *problems) {
	h := c.HTTP
	if !checkListen(p, "http.listen", h.Listen) {
		return
	}
	if h.PublicURL == "" {
		host, _, _ := net.SplitHostPort(h.Listen)
		if ip, err := netip.ParseAddr(host); host == "" || (err == nil && ip.IsUnspecified()) {
			p.add("http.public_url", 0, nil, "is empty, and http.listen %q names no host that others could reach; set public_url, the base of the CRL URL written into every certificate", h.Listen)
		}
		return
	}
	if err := checkPublicURL(h.PublicURL); err != nil {
		p.add("http.public_url", 0, nil, "%v", err)
	}
}

// checkPublicURL requires an absolute http(s) URL without query or fragment:
// CRL and AIA URLs are built by appending paths to it.
func checkPublicURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Opaque != "" {
		return errors.New("is not a URL such as https://kms.example.com")
	}
	shown := u.Redacted()
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("%q must start with https:// or http://", shown)
	case u.User != nil:
		return fmt.Errorf("%q must not hold a user name or password", shown)
	case u.RawQuery != "" || u.ForceQuery:
		return fmt.Errorf("%q must not have a query (?...): paths are appended to it", shown)
	case u.Fragment != "" || strings.Contains(s, "#"):
		return fmt.Errorf("%q must not have a fragment (#...)", shown)
	}
	if err := checkHost(u.Hostname()); err != nil {
		return fmt.Errorf("%q: %v", shown, err)
	}
	return nil
}

func (c *Config) validateStore(p *problems) {
	s := c.Store
	switch s.Driver {
	case "sqlite":
		if s.PasswordFile != "" {
			p.add("store.password_file", 0, nil, "is only used with driver postgres")
		}
	case "postgres":
		if s.DSN == "" {
			p.add("store.dsn", 0, nil, "is required with driver postgres, e.g. \"postgres://kms@db.example.com/kms\"")
		} else if err := checkDSN(s.DSN); err != nil {
			p.add("store.dsn", 0, nil, "%v", err)
		}
		c.checkSecret(p, "store.password_file", s.PasswordFile, EnvDBPassword, false)
	default:
		p.add("store.driver", 0, nil, "%q is not a driver; use sqlite or postgres", s.Driver)
	}
}

// checkDSN refuses a PostgreSQL DSN that carries a password, in either of
// libpq's forms. The DSN itself is never quoted, as it may hold the secret.
func checkDSN(dsn string) error {
	const hint = "remove it and use store.password_file or " + EnvDBPassword
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return errors.New("is not a valid postgres:// URL")
		}
		if _, ok := u.User.Password(); ok || u.Query().Has("password") {
			return errors.New("holds a password; " + hint)
		}
		return nil
	}
	// Keyword/value form: "host=db user=kms password=x"; spaces may surround '='.
	f := strings.Fields(strings.ReplaceAll(strings.ToLower(dsn), "=", " = "))
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "password" && f[i+1] == "=" {
			return errors.New("holds a password; " + hint)
		}
	}
	return nil
}

func (c *Config) validateCA(p *problems) {
	if !c.CA.KeyType.Known() {
		p.add("ca.key_type", 0, nil, "%q is not a key type; use one of %s", c.CA.KeyType, keyTypeNames())
	}
	c.checkSecret(p, "ca.passphrase_file", c.CA.PassphraseFile, EnvCAPassphrase, false)
	if c.CA.ImportTrustFile != "" {
		checkFile(p, "ca.import_trust_file", c.CA.ImportTrustFile)
	}
}

func (c *Config) validateLog(p *problems) {
	if !slices.Contains([]string{"debug", "info", "warn", "error"}, c.Log.Level) {
		p.add("log.level", 0, nil, "%q is not a level; use debug, info, warn or error", c.Log.Level)
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		p.add("log.format", 0, nil, "%q is not a format; use text or json", c.Log.Format)
	}
}

// validatePolicy checks the global policy and each domain's merged policy.
func (c *Config) validatePolicy(p *problems) {
	if err := c.Policy.Validate(); err != nil {
		policyProblem(p, "policy", err)
		// Every domain inherits the fault; saying so once is enough.
		return
	}
	for _, d := range slices.Sorted(maps.Keys(c.Policy.Domains)) {
		key := "policy.domains." + d
		if !slices.Contains(c.Domains, d) {
			hint := ""
			if slices.Contains(c.Domains, strings.ToLower(d)) {
				hint = fmt.Sprintf(" (write it in lower case: %q)", strings.ToLower(d))
			}
			p.add(key, 0, nil, "%q is not listed in domains (%s)%s; an override applies only to a listed domain", d, strings.Join(c.Domains, ", "), hint)
			continue
		}
		if err := c.Policy.Domains[d].Validate(); err != nil {
			policyProblem(p, key, err)
		}
	}
}

// policyProblem turns policy.Validate's "reminders.first: reason" into a
// problem keyed "PREFIX.reminders.first".
func policyProblem(p *problems, prefix string, err error) {
	key, msg := prefix, err.Error()
	if sub, rest, ok := strings.Cut(msg, ": "); ok && !strings.ContainsAny(sub, " \"") {
		key, msg = prefix+"."+sub, rest
		if _, written := p.lines[key]; !written && prefix != "policy" {
			msg += " (the domain inherits this value from the global policy)"
		}
	}
	p.add(key, 0, err, "%s", msg)
}

func keyTypeNames() string {
	names := make([]string, len(policy.AllKeyTypes))
	for i, t := range policy.AllKeyTypes {
		names[i] = string(t)
	}
	return strings.Join(names, ", ")
}

// checkListen checks a listen address: host:port, host optional (all
// interfaces), port 0 allowed (any free port, for tests).
func checkListen(p *problems, key, s string) bool {
	if err := checkHostPort(s, false); err != nil {
		p.add(key, 0, nil, "%q %v", s, err)
		return false
	}
	return true
}

// checkDial checks the address of a server kms connects to.
func checkDial(p *problems, key, s string) bool {
	if err := checkHostPort(s, true); err != nil {
		p.add(key, 0, nil, "%q %v", s, err)
		return false
	}
	return true
}

func checkHostPort(s string, dial bool) error {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return errors.New("is not host:port (e.g. 127.0.0.1:2525 or [::1]:2525)")
	}
	if host == "" && dial {
		return errors.New("has no host")
	}
	if host != "" {
		if err := checkHost(host); err != nil {
			return err
		}
	}
	n, err := strconv.Atoi(port)
	lowest := 0
	if dial {
		lowest = 1
	}
	if err != nil || n < lowest || n > 65535 {
		return fmt.Errorf("has port %q; use a number from %d to 65535", port, lowest)
	}
	return nil
}

// checkHost accepts an IP address or a host name.
func checkHost(host string) error {
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	if err := checkDomainName(host); err != nil {
		return fmt.Errorf("has host %q, which is neither an IP address nor a host name", host)
	}
	return nil
}

func isLoopback(hostport string) bool {
	host, _, _ := net.SplitHostPort(hostport)
	if ip, err := netip.ParseAddr(host); err == nil {
		return ip.IsLoopback()
	}
	return host == "localhost"
}

// checkDomainName checks a DNS name in its ASCII form. The error reads after
// the quoted name: `"a..b" has an empty label`.
func checkDomainName(s string) error {
	switch {
	case s == "":
		return errors.New("is empty")
	case len(s) > 253:
		return errors.New("is longer than 253 characters")
	case strings.HasSuffix(s, "."):
		return errors.New("ends with a dot; write the name without it")
	}
	labels := strings.Split(s, ".")
	for _, l := range labels {
		if l == "" {
			return errors.New("has an empty label")
		}
		if len(l) > 63 {
			return errors.New("has a label longer than 63 characters")
		}
		for _, r := range l {
			switch {
			case r > 127:
				return errors.New("is not ASCII; write the IDNA form (xn--...)")
			case r != '-' && !('a' <= r && r <= 'z') && !('A' <= r && r <= 'Z') && !('0' <= r && r <= '9'):
				return fmt.Errorf("contains %q, which a domain name cannot", r)
			}
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return errors.New("has a label that starts or ends with a hyphen")
		}
	}
	if _, err := strconv.Atoi(labels[len(labels)-1]); err == nil {
		return errors.New("is not a domain name (its last label is a number)")
	}
	return nil
}

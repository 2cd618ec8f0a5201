package config_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/kmsmail/kms/config"
)

// TestBadConfigs checks that each bad configuration is refused with an error
// that names the key and says why, and never repeats a secret.
func TestBadConfigs(t *testing.T) {
	relayEnv := map[string]string{config.EnvRelayPassword: "pw"}
	for _, tc := range []struct {
		name string
		src  string
		env  map[string]string
		key  string // the error must start "config: KEY: "
		msg  string // and contain this
	}{
		// Decoding: unknown keys, shapes, YAML features.
		{"unknown top-level key", "colour: blue", nil, "colour", "unknown key; the keys at the top level are data_dir"},
		{"unknown nested key", "smtp: {port: 25}", nil, "smtp.port", "the keys in smtp are listen, hostname"},
		{"relay password in yaml", "relay: {password: hunter2}", nil, "relay.password", "use relay.password_file or KMS_RELAY_PASSWORD"},
		{"imap password in yaml", "imap: {password: hunter2}", nil, "imap.password", "use imap.password_file or KMS_IMAP_PASSWORD"},
		{"ca passphrase in yaml", "ca: {passphrase: hunter2}", nil, "ca.passphrase", "use ca.passphrase_file or KMS_CA_PASSPHRASE"},
		{"top-level relay password", "relay_password: hunter2", nil, "relay_password", "use relay.password_file or KMS_RELAY_PASSWORD"},
		{"top-level db password", "db_password: hunter2", nil, "db_password", "use store.password_file or KMS_DB_PASSWORD"},
		{"password elsewhere", "http: {password: hunter2}", nil, "http.password", "secrets never go in the configuration file"},
		{"db password in yaml", "store: {password: hunter2}", nil, "store.password", "use store.password_file or KMS_DB_PASSWORD"},
		{"unknown key in override", "policy: {domains: {example.com: {lifetme: 12mo}}}", nil, "policy.domains.example.com.lifetme", "unknown key"},
		{"unknown nested key in override", "policy:\n  domains:\n    example.com:\n      reminders: {frist: 9mo}", nil, "policy.domains.example.com.reminders.frist", "the keys in policy.domains.example.com.reminders are first, every"},
		{"domains inside override", "policy: {domains: {example.com: {domains: {}}}}", nil, "policy.domains.example.com.domains", "unknown key"},
		{"key set twice", "data_dir: /a\ndata_dir: /b", nil, "data_dir", "is set twice (first on line 1)"},
		{"merge key", "base: &b {listen: ':25'}\nsmtp: {<<: *b}", nil, "base", "unknown key"},
		{"merge key in section", "smtp: {<<: {listen: ':25'}}", nil, "smtp", "merge keys (<<) are not supported"},
		{"two documents", "data_dir: /a\n---\ndata_dir: /b", nil, "", "more than one YAML document"},
		{"not a mapping", "- data_dir", nil, "", "expected a mapping with the keys data_dir"},
		{"section not a mapping", "smtp: 127.0.0.1:25", nil, "smtp", `got "127.0.0.1:25"`},
		{"syntax error", "smtp: {listen: [}", nil, "", "not valid YAML"},
		{"string given a list", "data_dir: [a, b]", nil, "data_dir", "expected a string, got a list"},

		// Addresses and domains.
		{"domains not a list", "domains: example.com", nil, "domains", `expected a list such as [a, b], got "example.com"`},
		{"no domains", "domains: []", nil, "domains", "at least one domain"},
		{"upper-case domain", "domains: [Example.com]", nil, "domains[0]", `"Example.com" must be written in lower case: "example.com"`},
		{"domain with space", "domains: ['exa mple.com']", nil, "domains[0]", `contains ' '`},
		{"domain with trailing dot", "domains: [example.com.]", nil, "domains[0]", "ends with a dot"},
		{"unicode domain", "domains: [bücher.example]", nil, "domains[0]", "xn--"},
		{"IP as domain", "domains: [192.0.2.1]", nil, "domains[0]", "last label is a number"},
		{"domain listed twice", "domains: [example.com, example.com]", nil, "domains[1]", "listed twice"},
		{"empty list item", "domains: [example.com, ~]", nil, "domains[1]", "list item is empty"},
		{"display name", "address: 'KMS <kms@example.com>'", nil, "address", `"KMS <kms@example.com>" must be a bare address`},
		{"no at sign", "address: kms", nil, "address", `"kms" is not a mail address`},
		{"bad admin domain", "admin_address: postmaster@-bad.example", nil, "admin_address", "hyphen"},

		// SMTP.
		{"listen without port", "smtp: {listen: localhost}", nil, "smtp.listen", `"localhost" is not host:port`},
		{"listen port too big", "smtp: {listen: '127.0.0.1:70000'}", nil, "smtp.listen", `has port "70000"`},
		{"listen named port", "smtp: {listen: '127.0.0.1:smtp'}", nil, "smtp.listen", `has port "smtp"`},
		{"listen bad host", "smtp: {listen: 'bad_host:25'}", nil, "smtp.listen", "neither an IP address nor a host name"},
		{"bad hostname", "smtp: {hostname: 'kms_host'}", nil, "smtp.hostname", `"kms_host" contains '_'`},
		{"cert without key", "smtp: {tls: {cert_file: /etc/ssl/kms.pem}}", nil, "smtp.tls.key_file", "give both or neither"},
		{"key without cert", "smtp: {tls: {key_file: /etc/ssl/kms.key}}", nil, "smtp.tls.cert_file", "give both or neither"},
		{"missing cert file", "smtp: {tls: {cert_file: /nonexistent/kms.pem, key_file: /nonexistent/kms.key}}", nil, "smtp.tls.cert_file", `"/nonexistent/kms.pem" cannot be used`},
		{"cert file is a directory", "smtp: {tls: {cert_file: /, key_file: /}}", nil, "smtp.tls.cert_file", "is a directory"},
		{"message size too small", "smtp: {max_message_bytes: 100}", nil, "smtp.max_message_bytes", "100 must be between 1024"},
		{"message size too big", "smtp: {max_message_bytes: 209715200}", nil, "smtp.max_message_bytes", "must be between"},
		{"message size with unit", "smtp: {max_message_bytes: 1MB}", nil, "smtp.max_message_bytes", `"1MB" is not a whole number`},
		{"negative connections", "smtp: {max_connections_per_ip: -1}", nil, "smtp.max_connections_per_ip", "-1 must be 0"},
		{"zero read timeout", "smtp: {read_timeout: 0s}", nil, "smtp.read_timeout", "longer than zero"},
		{"timeout in months", "smtp: {write_timeout: 1mo}", nil, "smtp.write_timeout", `"1mo": months and years have no fixed length`},
		{"timeout without unit", "smtp: {read_timeout: 60}", nil, "smtp.read_timeout", "unknown or missing unit"},

		// IMAP and relay.
		{"imap addr without port", "imap: {addr: imap.example.com, username: kms}", nil, "imap.addr", `"imap.example.com" is not host:port`},
		{"imap without username", "imap: {addr: 'imap.example.com:993'}", map[string]string{config.EnvIMAPPassword: "pw"}, "imap.username", "required when imap.addr is set"},
		{"imap without password", "imap: {addr: 'imap.example.com:993', username: kms}", nil, "imap.password_file", "KMS_IMAP_PASSWORD is not set"},
		{"imap username without addr", "imap: {username: kms}", nil, "imap.addr", "would be unused"},
		{"relay without host", "relay: {addr: ':587'}", nil, "relay.addr", `":587" has no host`},
		{"relay port zero", "relay: {addr: 'smtp.example.com:0'}", nil, "relay.addr", `has port "0"; use a number from 1`},
		{"relay without password", "relay: {addr: 'smtp.example.com:587', username: kms}", nil, "relay.password_file", "KMS_RELAY_PASSWORD is not set"},
		{"relay password file without username", "relay: {addr: 'smtp.example.com:587', password_file: /etc/passwd}", nil, "relay.username", "required when relay.password_file is set"},
		{"relay password twice", "relay: {addr: 'smtp.example.com:587', username: kms, password_file: /etc/passwd}", relayEnv, "relay.password_file", "so is KMS_RELAY_PASSWORD; give the secret one way only"},
		{"relay password file missing", "relay: {addr: 'smtp.example.com:587', username: kms, password_file: /nonexistent/relay.pw}", nil, "relay.password_file", `"/nonexistent/relay.pw" cannot be used`},
		{"relay credentials in clear", "relay: {addr: 'smtp.example.com:587', username: kms, starttls: false}", relayEnv, "relay.starttls", "in clear"},
		{"relay username without addr", "relay: {username: kms}", relayEnv, "relay.addr", "would be unused"},
		{"relay retry zero", "relay: {retry_for: 0s}", nil, "relay.retry_for", "longer than zero"},
		{"relay negative rate", "relay: {rate: -1}", nil, "relay.rate", "-1 must be a number of messages per second"},
		{"relay rate NaN", "relay: {rate: .nan}", nil, "relay.rate", "NaN must be"},
		{"relay starttls not bool", "relay: {starttls: maybe}", nil, "relay.starttls", `"maybe" is not true or false`},

		// HTTP.
		{"http listen port only", "http: {listen: '8025'}", nil, "http.listen", `"8025" is not host:port`},
		{"all interfaces without public url", "http: {listen: ':8025'}", nil, "http.public_url", `http.listen ":8025" names no host`},
		{"unspecified address without public url", "http: {listen: '0.0.0.0:8025'}", nil, "http.public_url", "set public_url"},
		{"public url ftp", "http: {public_url: 'ftp://kms.example.com'}", nil, "http.public_url", `"ftp://kms.example.com" must start with https://`},
		{"public url relative", "http: {public_url: 'kms.example.com/pki'}", nil, "http.public_url", "must start with https://"},
		{"public url with query", "http: {public_url: 'https://kms.example.com/?a=b'}", nil, "http.public_url", "must not have a query"},
		{"public url with fragment", "http: {public_url: 'https://kms.example.com/#crl'}", nil, "http.public_url", "must not have a fragment"},
		{"public url with password", "http: {public_url: 'https://u:hunter2@kms.example.com'}", nil, "http.public_url", "must not hold a user name or password"},
		{"public url bad host", "http: {public_url: 'https://kms_host/'}", nil, "http.public_url", "neither an IP address nor a host name"},

		// Store, CA, log.
		{"unknown driver", "store: {driver: mysql}", nil, "store.driver", `"mysql" is not a driver; use sqlite or postgres`},
		{"postgres without dsn", "store: {driver: postgres}", nil, "store.dsn", "required with driver postgres"},
		{"postgres url with password", "store: {driver: postgres, dsn: 'postgres://kms:hunter2@db/kms'}", nil, "store.dsn", "holds a password; remove it and use store.password_file or KMS_DB_PASSWORD"},
		{"postgres url query password", "store: {driver: postgres, dsn: 'postgresql://kms@db/kms?password=hunter2'}", nil, "store.dsn", "holds a password"},
		{"postgres keyword password", "store: {driver: postgres, dsn: 'host=db user=kms password = hunter2'}", nil, "store.dsn", "holds a password"},
		{"postgres bad url", "store: {driver: postgres, dsn: 'postgres://kms:hunter2@db:port/kms'}", nil, "store.dsn", "is not a valid postgres:// URL"},
		{"password file with sqlite", "store: {password_file: /etc/passwd}", nil, "store.password_file", "only used with driver postgres"},
		{"db password twice", "store: {driver: postgres, dsn: 'host=db', password_file: /etc/passwd}", map[string]string{config.EnvDBPassword: "pw"}, "store.password_file", "give the secret one way only"},
		{"unknown key type", "ca: {key_type: rsa1024}", nil, "ca.key_type", `"rsa1024" is not a key type; use one of rsa2048`},
		{"missing passphrase file", "ca: {passphrase_file: /nonexistent/ca.pass}", nil, "ca.passphrase_file", `"/nonexistent/ca.pass" cannot be used`},
		{"log level", "log: {level: verbose}", nil, "log.level", `"verbose" is not a level`},
		{"log format", "log: {format: xml}", nil, "log.format", `"xml" is not a format`},

		// Policy.
		{"zero lifetime", "policy: {lifetime: 0s}", nil, "policy.lifetime", "longer than zero"},
		{"lifetime without unit", "policy: {lifetime: 18}", nil, "policy.lifetime", `duration "18": unknown or missing unit`},
		{"lifetime as mapping", "policy: {lifetime: {months: 18}}", nil, "policy.lifetime", "expected a single value, got a mapping"},
		{"unknown key type in policy", "policy: {keys: [dsa1024]}", nil, "policy.keys", `unknown key type "dsa1024"`},
		{"no key types", "policy: {keys: []}", nil, "policy.keys", "at least one key type"},
		{"no attempts", "policy: {enrollment: {max_attempts: 0}}", nil, "policy.enrollment.max_attempts", "0 must be at least 1"},
		{"first reminder after expiry", "policy: {reminders: {first: 2y}}", nil, "policy.reminders.first", "must be shorter than lifetime 18mo"},
		{"override for unlisted domain", "policy: {domains: {example.org: {lifetime: 12mo}}}", nil, "policy.domains.example.org", `"example.org" is not listed in domains (example.com)`},
		{"override in upper case", "policy: {domains: {Example.com: {lifetime: 12mo}}}", nil, "policy.domains.Example.com", `write it in lower case: "example.com"`},
		{"override invalid", "policy: {domains: {example.com: {lifetime: 0s}}}", nil, "policy.domains.example.com.lifetime", "longer than zero"},
		{"override breaks inherited value", "policy: {domains: {example.com: {lifetime: 6mo}}}", nil, "policy.domains.example.com.reminders.first", "inherits this value from the global policy"},
		{"override bad duration", "policy: {domains: {example.com: {reminders: {every: 2w}}}}", nil, "policy.domains.example.com.reminders.every", `duration "2w"`},
		{"overrides not a mapping", "policy: {domains: [example.com]}", nil, "policy.domains", "expected a mapping of names to settings, got a list"},
		{"override not a mapping", "policy: {domains: {example.com: 12mo}}", nil, "policy.domains.example.com", "expected a mapping with the keys lifetime, reminders"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := config.LoadBytes([]byte(tc.src), envOf(tc.env))
			if err == nil {
				t.Fatalf("accepted:\n%s", tc.src)
			}
			if !errors.Is(err, config.ErrInvalid) {
				t.Errorf("error does not match ErrInvalid: %v", err)
			}
			prefix := "config: " + tc.key + ": "
			if tc.key == "" {
				prefix = "config: "
			}
			var first string
			for line := range strings.SplitSeq(err.Error(), "\n") {
				if strings.HasPrefix(line, prefix) && strings.Contains(line, tc.msg) {
					first = line
				}
			}
			if first == "" {
				t.Errorf("error:\n%v\nwant a line starting %q containing %q", err, prefix, tc.msg)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error repeats the secret: %v", err)
			}
		})
	}
}

// TestGoodConfigs checks configurations that must be accepted, and that the
// values arrive where the daemon reads them.
func TestGoodConfigs(t *testing.T) {
	for _, tc := range []struct {
		name  string
		src   string
		env   map[string]string
		check func(*config.Config) string // "" when right, else what is wrong
	}{
		{"IPv6 listeners", "smtp: {listen: '[::1]:2525'}\nhttp: {listen: '[::1]:8025'}", nil, func(c *config.Config) string {
			return want(c.SMTP.Listen == "[::1]:2525" && c.BaseURL() == "http://[::1]:8025", "listen %q, base %q", c.SMTP.Listen, c.BaseURL())
		}},
		{"all interfaces with a public url", "smtp: {listen: ':25'}\nhttp: {listen: ':8025', public_url: 'https://kms.example.com'}", nil, func(c *config.Config) string {
			return want(c.BaseURL() == "https://kms.example.com", "base %q", c.BaseURL())
		}},
		{"port zero for tests", "smtp: {listen: '127.0.0.1:0'}", nil, func(c *config.Config) string {
			return want(c.SMTP.Listen == "127.0.0.1:0", "listen %q", c.SMTP.Listen)
		}},
		{"imap with env password", "imap: {addr: 'imap.example.com:993', username: kms, mailbox: KMS}", map[string]string{config.EnvIMAPPassword: "pw"}, func(c *config.Config) string {
			return want(c.IMAP.Addr == "imap.example.com:993" && c.IMAP.Username == "kms" && c.IMAP.Mailbox == "KMS", "imap %+v", c.IMAP)
		}},
		{"loopback relay without starttls", "relay: {addr: '127.0.0.1:25', username: kms, starttls: false}", map[string]string{config.EnvRelayPassword: "pw"}, func(c *config.Config) string {
			return want(!c.Relay.StartTLS, "starttls %v", c.Relay.StartTLS)
		}},
		{"relay without auth", "relay: {addr: 'mx.example.com:25', starttls: false, rate: 0.5, retry_for: 1d12h}", nil, func(c *config.Config) string {
			return want(c.Relay.Rate == 0.5 && c.Relay.RetryFor.Hours() == 36, "relay %+v", c.Relay)
		}},
		{"postgres keyword dsn", "store: {driver: postgres, dsn: 'host=db user=kms sslmode=verify-full'}", map[string]string{config.EnvDBPassword: "pw"}, func(c *config.Config) string {
			return want(c.Store.DSN == "host=db user=kms sslmode=verify-full", "dsn %q", c.Store.DSN)
		}},
		{"no connection limit", "smtp: {max_connections_per_ip: 0}", nil, func(c *config.Config) string {
			return want(c.SMTP.MaxConnectionsPerIP == 0, "max_connections_per_ip %d", c.SMTP.MaxConnectionsPerIP)
		}},
		{"address outside domains", "address: kms@pki.example.net\ndomains: [example.com]", nil, func(c *config.Config) string {
			return want(c.Address == "kms@pki.example.net" && c.SMTP.Hostname == "pki.example.net", "address %q hostname %q", c.Address, c.SMTP.Hostname)
		}},
		{"aliases share an override", "domains: [a.example, b.example]\npolicy:\n  domains:\n    a.example: &short {lifetime: 6mo, reminders: {first: 4mo}}\n    b.example: *short", nil, func(c *config.Config) string {
			s := c.Policies()
			return want(s.For("b.example").Lifetime.Months == 6 && s.For("a.example").Reminders.First.Months == 4, "policies %+v", s.Domains)
		}},
		{"empty override inherits all", "policy: {lifetime: 2y, domains: {example.com: }}", nil, func(c *config.Config) string {
			return want(c.Policies().For("example.com").Lifetime.Months == 24, "policy %+v", c.Policies().For("example.com"))
		}},
		{"ca key type and log", "ca: {key_type: p256}\nlog: {level: debug, format: json}", nil, func(c *config.Config) string {
			return want(c.CA.KeyType == "p256" && c.Log.Format == "json", "ca %+v log %+v", c.CA, c.Log)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := mustLoad(t, tc.src, envOf(tc.env))
			if msg := tc.check(c); msg != "" {
				t.Error(msg)
			}
		})
	}
}

// want returns "" when ok, else the formatted complaint.
func want(ok bool, format string, args ...any) string {
	if ok {
		return ""
	}
	return "wrong value: " + fmt.Sprintf(format, args...)
}

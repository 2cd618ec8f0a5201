package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kmsmail/kms/admin"
	"github.com/kmsmail/kms/config"
)

// envConfig names the configuration file when --config is not given.
const envConfig = "KMS_CONFIG"

// flags is a command's flag set with the flags every command shares.
type flags struct {
	*flag.FlagSet
	name   string
	stderr io.Writer
	config string
	json   bool
}

// newFlags returns the flag set of command name, with --config.
func newFlags(name string, stderr io.Writer) *flags {
	f := &flags{FlagSet: flag.NewFlagSet("kms "+name, flag.ContinueOnError), name: name, stderr: stderr}
	f.SetOutput(stderr)
	f.StringVar(&f.config, "config", "", "configuration `FILE` (default $"+envConfig+", else the built-in defaults)")
	f.Usage = func() {
		fmt.Fprintf(stderr, "usage: %s\n", usageOf(name))
		f.PrintDefaults()
	}
	return f
}

// withJSON adds --json, which every listing takes.
func (f *flags) withJSON() *flags {
	f.BoolVar(&f.json, "json", false, "print JSON instead of a table")
	return f
}

// parse parses args, flags anywhere among the operands (`kms user enroll
// a@b --name X`), and checks that there are between minOps and maxOps
// operands (maxOps < 0: no limit). When ok is false the command returns
// code: usage, or success for -h.
func (f *flags) parse(args []string, minOps, maxOps int) (operands []string, code int, ok bool) {
	ordered, err := f.reorder(args)
	if err != nil {
		fmt.Fprintf(f.stderr, "kms %s: %v\n", f.name, err)
		f.Usage()
		return nil, exitUsage, false
	}
	if err := f.Parse(ordered); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, exitOK, false
		}
		return nil, exitUsage, false // flag printed the error and the usage
	}
	operands = f.Args()
	switch {
	case len(operands) < minOps:
		fmt.Fprintf(f.stderr, "kms %s: missing %s\nusage: %s\n", f.name, f.operandName(len(operands)), usageOf(f.name))
		return nil, exitUsage, false
	case maxOps >= 0 && len(operands) > maxOps:
		fmt.Fprintf(f.stderr, "kms %s: unexpected argument %q\nusage: %s\n", f.name, operands[maxOps], usageOf(f.name))
		return nil, exitUsage, false
	}
	return operands, exitOK, true
}

// operandName names the i-th operand as the usage line does (EMAIL, SERIAL).
func (f *flags) operandName(i int) string {
	var names []string
	for _, w := range strings.Fields(strings.TrimPrefix(usageOf(f.name), "kms "+f.name)) {
		if strings.HasPrefix(w, "[") {
			break
		}
		names = append(names, strings.TrimSuffix(w, "..."))
	}
	if i < len(names) {
		return names[i]
	}
	return "argument"
}

// reorder moves flags before the operands, because package flag stops at
// the first operand and administrators write flags last. "--" ends the
// flags as usual.
func (f *flags) reorder(args []string) ([]string, error) {
	var fl, ops []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			ops = append(ops, args[i+1:]...)
			break
		}
		if len(a) < 2 || a[0] != '-' {
			ops = append(ops, a)
			continue
		}
		fl = append(fl, a)
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") {
			continue
		}
		// A flag that takes a value takes the next argument with it.
		if def := f.Lookup(name); def != nil && !isBool(def) {
			if i+1 == len(args) {
				// Left alone, package flag would take the "--" that
				// separates the operands as the value.
				return nil, fmt.Errorf("flag needs an argument: %s", a)
			}
			fl = append(fl, args[i+1])
			i++
		}
	}
	return append(append(fl, "--"), ops...), nil
}

func isBool(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// target is the daemon a command talks to.
type target struct {
	client    *admin.Client
	cfg       *config.Config
	tokenPath string
}

// connect loads the configuration and the admin token and returns a client
// for the daemon's admin API.
func (f *flags) connect() (*target, error) {
	path := f.config
	if path == "" {
		path = os.Getenv(envConfig)
	}
	cfg, err := config.Load(path, os.Getenv)
	if err != nil {
		return nil, err
	}
	t := &target{cfg: cfg, tokenPath: filepath.Join(cfg.DataDir, admin.TokenFile)}
	token, err := admin.ReadToken(t.tokenPath)
	if err != nil {
		return nil, err
	}
	t.client = admin.NewClient(adminURL(cfg.HTTP.Listen), token)
	return t, nil
}

// adminURL turns http.listen into the URL to dial: a daemon listening on
// every address ("0.0.0.0:8025", ":8025") is reached on loopback.
func adminURL(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "http://" + listen
	}
	switch ip := net.ParseIP(host); {
	case host == "":
		host = "127.0.0.1"
	case ip != nil && ip.IsUnspecified() && ip.To4() != nil:
		host = "127.0.0.1"
	case ip != nil && ip.IsUnspecified():
		host = "::1"
	}
	return "http://" + net.JoinHostPort(host, port)
}

// fail reports err and returns the failure status. A refused token gets a
// hint, since the usual cause is a different data_dir than the daemon's.
func (f *flags) fail(t *target, err error) int {
	msg := err.Error()
	var ae *admin.Error
	if errors.As(err, &ae) && ae.Code == admin.CodeUnauthorized && t != nil {
		msg += fmt.Sprintf(" (the token was read from %s: does the daemon use the same data_dir?)", t.tokenPath)
	}
	fmt.Fprintf(f.stderr, "kms %s: %s\n", f.name, msg)
	return exitFail
}

// printJSON writes v as indented JSON.
func printJSON(w io.Writer, v any) int {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		return exitFail
	}
	return exitOK
}

// table returns a tabwriter for aligned columns.
func table(w io.Writer) *tabwriter.Writer { return tabwriter.NewWriter(w, 0, 0, 2, ' ', 0) }

// day formats a time as a table shows dates.
func day(t time.Time) string { return t.UTC().Format("2006-01-02") }

// orDash shows an empty string as "-" so that table columns stay aligned.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// Command kms is the secure-mail key management server and its
// administrative command line (SPEC section 5): `kms serve` runs the daemon,
// and the user, cert and audit commands talk to the running daemon's admin
// API, so that every change is checked, audited and seen by the daemon at
// once.
//
// Exit status: 0 success, 1 operation refused or failed, 2 usage.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// Exit statuses, SPEC section 5.
const (
	exitOK    = 0
	exitFail  = 1 // the operation was refused or failed
	exitUsage = 2 // unknown command or flag, missing argument
)

// commandFunc runs one command with its arguments (flags and operands).
type commandFunc func(ctx context.Context, args []string, stdout, stderr io.Writer) int

// command documents a leaf of the command tree. The functions live apart,
// in runners, because each command's usage text is looked up here.
type command struct {
	name    string // "user enroll"
	usage   string // operands and flags, after the name
	summary string
}

// commands lists every command, in the order usage shows them.
var commands = []command{
	{"serve", "[--config FILE]", "run the daemon; first run creates the data dir, database and CA"},
	{"demo", "[--speed 2s] [--keep]", "a whole lifecycle in compressed time, in a temporary directory, narrated"},
	{"user enroll", "EMAIL [--name N] [--json]", "print a one-time enrollment code (also re-enrolls a lapsed user)"},
	{"user list", "[--state S] [--json]", "list users, optionally in one state"},
	{"user show", "EMAIL [--json]", "show a user and their certificates"},
	{"user disable", "EMAIL [--reason R] [--json]", "disable a user and revoke their valid certificates"},
	{"cert list", "[--expiring 30d] [--email E] [--state S] [--json]", "list certificates, soonest expiry first"},
	{"cert show", "SERIAL [--pem] [--json]", "show a certificate"},
	{"cert revoke", "SERIAL [--reason R] [--json]", "revoke a certificate"},
	{"cert import", "FILE... [--json]", "track certificates another CA issued (PEM or DER)"},
	{"audit", "[--email E] [--limit N] [--json]", "show the newest audit records"},
	{"version", "", "print the version"},
}

// runners maps each command to its function.
func runners() map[string]commandFunc {
	return map[string]commandFunc{
		"serve": runServe, "demo": runDemo, "version": runVersion, "audit": runAudit,
		"user enroll": runUserEnroll, "user list": runUserList, "user show": runUserShow, "user disable": runUserDisable,
		"cert list": runCertList, "cert show": runCertShow, "cert revoke": runCertRevoke, "cert import": runCertImport,
	}
}

// usageOf returns the usage line of the command name.
func usageOf(name string) string {
	for _, c := range commands {
		if c.name == name {
			return strings.TrimSpace("kms " + c.name + " " + c.usage)
		}
	}
	return "kms " + name
}

// run is the whole program, testable: it returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	// `kms --config FILE user list` is accepted too: leading --config flags
	// are handed on to the command.
	var pre []string
	for len(args) > 0 && isConfigFlag(args[0]) {
		n := 1
		if !strings.Contains(args[0], "=") {
			n = 2
		}
		if len(args) < n {
			fmt.Fprintln(stderr, "kms: --config needs a file name")
			return exitUsage
		}
		pre, args = append(pre, args[:n]...), args[n:]
	}
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "help", "-h", "-help", "--help":
		usage(stdout)
		return exitOK
	}
	var group []command
	runFor := runners()
	for _, c := range commands {
		words := strings.Fields(c.name)
		if words[0] != args[0] {
			continue
		}
		if len(words) == 1 {
			return runFor[c.name](ctx, append(pre, args[1:]...), stdout, stderr)
		}
		group = append(group, c)
		if len(args) > 1 && words[1] == args[1] {
			return runFor[c.name](ctx, append(pre, args[2:]...), stdout, stderr)
		}
	}
	switch {
	case len(group) == 0:
		fmt.Fprintf(stderr, "kms: unknown command %q\n\n", args[0])
		usage(stderr)
	case len(args) == 1:
		fmt.Fprintf(stderr, "kms %s: missing subcommand\n\n", args[0])
		groupUsage(stderr, group)
	default:
		fmt.Fprintf(stderr, "kms %s: unknown subcommand %q\n\n", args[0], args[1])
		groupUsage(stderr, group)
	}
	return exitUsage
}

func isConfigFlag(a string) bool {
	for _, p := range []string{"--config", "-config"} {
		if a == p || strings.HasPrefix(a, p+"=") {
			return true
		}
	}
	return false
}

// usage prints the command summary.
func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: kms COMMAND [ARGUMENTS] [--config FILE]")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "commands:")
	groupUsage(w, commands)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Every command takes --config FILE (default: $KMS_CONFIG, else the built-in defaults)")
	fmt.Fprintln(w, "and finds the daemon from it. Run `kms COMMAND -h` for a command's flags.")
}

func groupUsage(w io.Writer, cs []command) {
	for _, c := range cs {
		fmt.Fprintf(w, "  kms %s %s\n        %s\n", c.name, c.usage, c.summary)
	}
}

// version is set at build time with -ldflags "-X main.version=v1.2.3";
// otherwise the module version and VCS revision of the build are used.
var version = ""

func runVersion(_ context.Context, args []string, stdout, stderr io.Writer) int {
	f := newFlags("version", stderr)
	if _, code, ok := f.parse(args, 0, 0); !ok {
		return code
	}
	fmt.Fprintln(stdout, "kms", versionString())
	return exitOK
}

// versionString describes the running binary.
func versionString() string {
	info, ok := debug.ReadBuildInfo()
	v := version
	if v == "" && ok {
		v = info.Main.Version
	}
	if v == "" {
		v = "(devel)"
	}
	if !ok {
		return v
	}
	var rev, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = "+dirty"
			}
		}
	}
	if rev != "" {
		v += " " + rev[:min(12, len(rev))] + modified
	}
	return v + " " + info.GoVersion
}

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"time"

	"github.com/kmsmail/kms/admin"
	"github.com/kmsmail/kms/kms"
)

// certTable prints certificates as a table; a non-zero now (the
// --expiring view) adds the days each has left and its reminder state.
func certTable(w io.Writer, certs []kms.Certificate, now time.Time) {
	tw := table(w)
	head := "SERIAL\tEMAIL\tSTATE\tNOT BEFORE\tNOT AFTER"
	if !now.IsZero() {
		head += "\tDAYS LEFT\tREMINDERS\tLAST REMINDER\tNEXT REMINDER"
	}
	fmt.Fprintln(tw, head)
	for _, c := range certs {
		state := string(c.State)
		if c.RevocationReason != "" {
			state += " (" + c.RevocationReason + ")"
		}
		if c.Imported {
			state += ", imported"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s", c.Serial, c.Email, state, day(c.NotBefore), day(c.NotAfter))
		if !now.IsZero() {
			fmt.Fprintf(tw, "\t%d\t%d\t%s\t%s", daysLeft(c.NotAfter, now), c.RemindersSent, dayOrDash(c.LastReminderAt), dayOrDash(c.NextReminderAt))
		}
		fmt.Fprintln(tw)
	}
	tw.Flush()
}

// daysLeft counts whole days until notAfter; a certificate that expires
// later today has 0 left.
func daysLeft(notAfter, now time.Time) int {
	return int(math.Floor(notAfter.Sub(now).Hours() / 24))
}

func runCertList(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f := newFlags("cert list", stderr).withJSON()
	var q admin.CertQuery
	f.StringVar(&q.Expiring, "expiring", "", "only certificates expiring within `DURATION` (e.g. 30d, 2mo)")
	f.StringVar(&q.Email, "email", "", "only the certificates of `EMAIL`")
	state := f.String("state", "", "only certificates in `STATE`: current, superseded, expired or revoked")
	if _, code, ok := f.parse(args, 0, 0); !ok {
		return code
	}
	q.State = kms.CertState(*state)
	t, err := f.connect()
	if err != nil {
		return f.fail(t, err)
	}
	certs, err := t.client.ListCerts(ctx, q)
	if err != nil {
		return f.fail(t, err)
	}
	if f.json {
		return printJSON(stdout, certs)
	}
	if len(certs) == 0 {
		fmt.Fprintln(stdout, "no certificates")
		return exitOK
	}
	var now time.Time
	if q.Expiring != "" {
		// The command line is not library code: the wall clock is the
		// administrator's notion of "days left".
		now = time.Now()
	}
	certTable(stdout, certs, now)
	return exitOK
}

func runCertShow(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f := newFlags("cert show", stderr).withJSON()
	pemOnly := f.Bool("pem", false, "print the certificate in PEM only, e.g. for openssl")
	ops, code, ok := f.parse(args, 1, 1)
	if !ok {
		return code
	}
	t, err := f.connect()
	if err != nil {
		return f.fail(t, err)
	}
	c, err := t.client.GetCert(ctx, ops[0])
	if err != nil {
		return f.fail(t, err)
	}
	switch {
	case f.json:
		return printJSON(stdout, c)
	case *pemOnly:
		fmt.Fprint(stdout, c.PEM)
		return exitOK
	}
	tw := table(stdout)
	fmt.Fprintf(tw, "Serial:\t%s\n", c.Serial)
	fmt.Fprintf(tw, "Email:\t%s\n", c.Email)
	fmt.Fprintf(tw, "State:\t%s\n", c.State)
	fmt.Fprintf(tw, "Not before:\t%s\n", c.NotBefore.UTC().Format(time.RFC3339))
	fmt.Fprintf(tw, "Not after:\t%s\n", c.NotAfter.UTC().Format(time.RFC3339))
	fmt.Fprintf(tw, "Key since:\t%s\n", day(c.KeySince))
	if c.Imported {
		fmt.Fprintf(tw, "Imported:\tyes (issued by another CA)\n")
	}
	if c.SupersededBy != "" {
		fmt.Fprintf(tw, "Superseded by:\t%s\n", c.SupersededBy)
	}
	if c.RevokedAt != nil {
		fmt.Fprintf(tw, "Revoked:\t%s (%s)\n", c.RevokedAt.UTC().Format(time.RFC3339), c.RevocationReason)
	}
	if c.NextReminderAt != nil {
		fmt.Fprintf(tw, "Next reminder:\t%s\n", day(*c.NextReminderAt))
	}
	fmt.Fprintf(tw, "Reminders sent:\t%d\n", c.RemindersSent)
	tw.Flush()
	return exitOK
}

func runCertRevoke(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f := newFlags("cert revoke", stderr).withJSON()
	reason := f.String("reason", "", "RFC 5280 `REASON`: unspecified, keyCompromise, affiliationChanged, superseded, cessationOfOperation or privilegeWithdrawn")
	ops, code, ok := f.parse(args, 1, 1)
	if !ok {
		return code
	}
	t, err := f.connect()
	if err != nil {
		return f.fail(t, err)
	}
	c, err := t.client.Revoke(ctx, ops[0], *reason)
	if err != nil {
		return f.fail(t, err)
	}
	if f.json {
		return printJSON(stdout, c)
	}
	fmt.Fprintf(stdout, "Certificate %s of %s revoked (%s); the CRL lists it from now on.\n", c.Serial, c.Email, c.RevocationReason)
	return exitOK
}

// maxImportFile matches the admin API's limit on a request body.
const maxImportFile = 1 << 20

// importedFile is what `kms cert import --json` prints for each file.
type importedFile struct {
	File    string               `json:"file"`
	Results []admin.ImportResult `json:"results"`
	Error   string               `json:"error,omitempty"`
}

func runCertImport(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f := newFlags("cert import", stderr).withJSON()
	files, code, ok := f.parse(args, 1, -1)
	if !ok {
		return code
	}
	t, err := f.connect()
	if err != nil {
		return f.fail(t, err)
	}
	status := exitOK
	var out []importedFile
	tw := table(stdout)
	for _, file := range files {
		res := importedFile{File: file, Results: []admin.ImportResult{}}
		results, err := importFile(ctx, t.client, file)
		if results != nil {
			res.Results = results
		}
		if err != nil {
			status = exitFail
			res.Error = err.Error()
			if errors.Is(err, admin.ErrUnreachable) {
				// Every further file would fail the same way.
				return f.fail(t, err)
			}
			if len(results) == 0 {
				fmt.Fprintf(stderr, "kms cert import: %s: %v\n", file, err)
			}
		}
		for _, r := range res.Results {
			detail := r.Error
			if r.Result == admin.ImportImported {
				detail = "valid until " + day(r.Certificate.NotAfter)
			}
			fmt.Fprintf(tw, "%s\t#%d\t%s\t%s\t%s\t%s\n", file, r.Index+1, r.Result, orDash(r.Serial), orDash(r.Email), detail)
		}
		out = append(out, res)
	}
	if f.json {
		printJSON(stdout, out)
		return status
	}
	tw.Flush()
	return status
}

// importFile sends one file to the daemon.
func importFile(ctx context.Context, c *admin.Client, file string) ([]admin.ImportResult, error) {
	fh, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, maxImportFile+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxImportFile {
		return nil, fmt.Errorf("larger than 1 MiB: split it into several files")
	}
	return c.Import(ctx, data)
}

// dayOrDash prints an optional date.
func dayOrDash(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return day(*t)
}

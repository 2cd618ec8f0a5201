package main

import (
	"context"
	"fmt"
	"io"
)

func runAudit(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f := newFlags("audit", stderr).withJSON()
	email := f.String("email", "", "only the records about `EMAIL`")
	limit := f.Int("limit", 100, "show at most `N` records, newest first")
	if _, code, ok := f.parse(args, 0, 0); !ok {
		return code
	}
	if *limit < 1 || *limit > 10000 {
		fmt.Fprintf(stderr, "kms audit: --limit %d: give a number of records from 1 to 10000\n", *limit)
		return exitUsage
	}
	t, err := f.connect()
	if err != nil {
		return f.fail(t, err)
	}
	recs, err := t.client.Audit(ctx, *email, *limit)
	if err != nil {
		return f.fail(t, err)
	}
	if f.json {
		return printJSON(stdout, recs)
	}
	if len(recs) == 0 {
		fmt.Fprintln(stdout, "no audit records")
		return exitOK
	}
	tw := table(stdout)
	fmt.Fprintln(tw, "TIME (UTC)\tACTOR\tACTION\tEMAIL\tSERIAL\tDETAIL")
	for _, r := range recs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.At.UTC().Format("2006-01-02 15:04:05"), r.Actor, r.Action,
			orDash(r.Email), orDash(r.Serial), r.Detail)
	}
	tw.Flush()
	return exitOK
}

package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/kmsmail/kms/kms"
)

func runUserEnroll(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f := newFlags("user enroll", stderr).withJSON()
	name := f.String("name", "", "the user's display `NAME`")
	ops, code, ok := f.parse(args, 1, 1)
	if !ok {
		return code
	}
	t, err := f.connect()
	if err != nil {
		return f.fail(t, err)
	}
	en, err := t.client.Enroll(ctx, ops[0], *name)
	if err != nil {
		return f.fail(t, err)
	}
	if f.json {
		return printJSON(stdout, en)
	}
	fmt.Fprintf(stdout, "Enrollment code for %s:\n\n    %s\n\n", en.Email, en.Code)
	fmt.Fprintf(stdout, "Valid until %s UTC, for one use only. Hand it to the user out of band (not by mail).\n",
		en.Expires.UTC().Format("2006-01-02 15:04"))
	fmt.Fprintf(stdout, "Next step for the user: send a certificate request (PKCS#10) with this code as its\n"+
		"challenge password, by mail from %s to %s.\n", en.Email, t.cfg.Address)
	return exitOK
}

func runUserList(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f := newFlags("user list", stderr).withJSON()
	state := f.String("state", "", "only users in `STATE`: invited, active, lapsed or disabled")
	if _, code, ok := f.parse(args, 0, 0); !ok {
		return code
	}
	t, err := f.connect()
	if err != nil {
		return f.fail(t, err)
	}
	users, err := t.client.ListUsers(ctx, kms.UserState(*state))
	if err != nil {
		return f.fail(t, err)
	}
	if f.json {
		return printJSON(stdout, users)
	}
	if len(users) == 0 {
		fmt.Fprintln(stdout, strings.Join(strings.Fields("no "+*state+" users"), " "))
		return exitOK
	}
	tw := table(stdout)
	fmt.Fprintln(tw, "EMAIL\tSTATE\tNAME\tCREATED\tCHANGED")
	for _, u := range users {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", u.Email, u.State, orDash(u.Name), day(u.CreatedAt), day(u.UpdatedAt))
	}
	tw.Flush()
	return exitOK
}

func runUserShow(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f := newFlags("user show", stderr).withJSON()
	ops, code, ok := f.parse(args, 1, 1)
	if !ok {
		return code
	}
	t, err := f.connect()
	if err != nil {
		return f.fail(t, err)
	}
	u, err := t.client.GetUser(ctx, ops[0])
	if err != nil {
		return f.fail(t, err)
	}
	if f.json {
		return printJSON(stdout, u)
	}
	tw := table(stdout)
	fmt.Fprintf(tw, "Email:\t%s\n", u.Email)
	fmt.Fprintf(tw, "Name:\t%s\n", orDash(u.Name))
	fmt.Fprintf(tw, "State:\t%s\n", u.State)
	fmt.Fprintf(tw, "Created:\t%s\n", day(u.CreatedAt))
	fmt.Fprintf(tw, "Changed:\t%s\n", day(u.UpdatedAt))
	if u.CodeExpires != nil {
		fmt.Fprintf(tw, "Code expires:\t%s\n", u.CodeExpires.UTC().Format("2006-01-02 15:04")+" UTC")
	}
	tw.Flush()
	fmt.Fprintln(stdout)
	if len(u.Certificates) == 0 {
		fmt.Fprintln(stdout, "no certificates")
		return exitOK
	}
	certTable(stdout, u.Certificates, time.Time{})
	return exitOK
}

func runUserDisable(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	f := newFlags("user disable", stderr).withJSON()
	reason := f.String("reason", "", "RFC 5280 revocation `REASON` for the user's certificates (default affiliationChanged)")
	ops, code, ok := f.parse(args, 1, 1)
	if !ok {
		return code
	}
	t, err := f.connect()
	if err != nil {
		return f.fail(t, err)
	}
	u, err := t.client.Disable(ctx, ops[0], *reason)
	if err != nil {
		return f.fail(t, err)
	}
	if f.json {
		return printJSON(stdout, u)
	}
	r := *reason
	if r == "" {
		r = "affiliationChanged"
	}
	fmt.Fprintf(stdout, "%s disabled; their valid certificates are revoked (%s).\n", u.Email, r)
	fmt.Fprintf(stdout, "To let them back in: kms user enroll %s\n", u.Email)
	return exitOK
}

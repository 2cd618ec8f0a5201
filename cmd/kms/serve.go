package main

import (
	"context"
	"fmt"
	"io"
)

// runServe runs the daemon.
//
// placeholder: the lead replaces this file
func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "kms serve: not yet implemented")
	return 1
}

package main

import (
	"context"
	"fmt"
	"io"
)

// runDemo runs a whole lifecycle in compressed time (SPEC section 5).
// Another issue builds it; until then the command says so.
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "kms demo: not yet implemented")
	return 1
}

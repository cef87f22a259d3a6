// Package problems is the project's one way to combine several errors into
// one: a *multierror.Error (github.com/hashicorp/go-multierror), flat, in
// the order given, formatted as one problem by itself or "N problems:"
// followed by one indented line each.
//
// Why this one: a caller can take the result apart three ways, errors.Is
// and errors.As through it, or the Errors field of the *multierror.Error it
// gets with errors.As (config and proxyconfig document that, and tests use
// it to read every *config.Problem), and it prints every problem on a line
// of its own. errors.Join gives the first two only, and raw
// multierror.Append its own format; so nothing else in meshgate joins
// errors.
package problems

import (
	"errors"
	"fmt"
	"strings"

	"github.com/hashicorp/go-multierror"
)

// Join returns errs as one *multierror.Error formatted with List, leaving
// out nil ones and flattening the entries of those that are themselves a
// *multierror.Error (not one wrapped in another error, whose message says
// what its problems are of), or nil if none is left.
func Join(errs ...error) error {
	var out *multierror.Error
	var add func(error)
	add = func(err error) {
		if me, ok := err.(*multierror.Error); ok {
			for _, e := range me.Errors {
				add(e)
			}
			return
		}
		out = multierror.Append(out, err)
	}
	for _, err := range errs {
		if err != nil {
			add(err)
		}
	}
	if out == nil {
		return nil
	}
	out.ErrorFormat = List
	return out
}

// Count returns how many problems err holds: its entries if it is a
// *multierror.Error, 1 for any other error, 0 for nil.
func Count(err error) int {
	var me *multierror.Error
	switch {
	case err == nil:
		return 0
	case errors.As(err, &me):
		return len(me.Errors)
	}
	return 1
}

// List is a multierror.ErrorFormatFunc: one problem as itself, several as
// "N problems:" followed by one indented line each.
func List(errs []error) string {
	if len(errs) == 1 {
		return errs[0].Error()
	}
	lines := make([]string, len(errs))
	for i, e := range errs {
		lines[i] = "  " + e.Error()
	}
	return fmt.Sprintf("%d problems:\n%s", len(errs), strings.Join(lines, "\n"))
}

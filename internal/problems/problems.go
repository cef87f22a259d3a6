// Package problems combines several errors into one, the same way across
// the project: a *multierror.Error (github.com/hashicorp/go-multierror),
// which callers can take apart with errors.As, errors.Is or its Errors
// field, formatted as one problem by itself or "N problems:" followed by one
// indented line each.
package problems

import (
	"fmt"
	"strings"

	"github.com/hashicorp/go-multierror"
)

// Join returns errs as one *multierror.Error formatted with List, leaving
// out nil ones, or nil if none is left.
func Join(errs ...error) error {
	var out *multierror.Error
	for _, err := range errs {
		if err != nil {
			out = multierror.Append(out, err)
		}
	}
	if out == nil {
		return nil
	}
	out.ErrorFormat = List
	return out
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

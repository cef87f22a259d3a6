package cli

import (
	"bytes"
	"errors"
	"flag"
	"testing"

	"github.com/stretchr/testify/assert"
)

func TestConventions(t *testing.T) {
	for _, tc := range []struct {
		args []string
		exit int
		out  string
	}{
		{[]string{"-h"}, 0, "-version"},
		{[]string{"-help"}, 0, "Usage of tool"},
		{[]string{"-version"}, 0, "tool "},
		{[]string{"-nope"}, 2, "flag provided but not defined: -nope"},
		{[]string{"-n", "x"}, 2, `invalid value "x" for flag -n`},
		{[]string{"-n", "3"}, 0, ""},
	} {
		var out bytes.Buffer
		fs := flag.NewFlagSet("tool", flag.ContinueOnError)
		fs.SetOutput(&out)
		fs.Int("n", 1, "a number")
		code := ExitCode(&out, "tool", Parse(fs, tc.args))
		assert.Equal(t, tc.exit, code, "%q", tc.args)
		assert.Contains(t, out.String(), tc.out, "%q", tc.args)
		assert.LessOrEqual(t, bytes.Count(out.Bytes(), []byte("-nope")), 1, "a bad flag is reported once")
	}
	var out bytes.Buffer
	assert.Equal(t, 2, ExitCode(&out, "tool", Usagef("unexpected arguments %q", []string{"x"})))
	assert.Equal(t, "tool: unexpected arguments [\"x\"]\n", out.String())
	out.Reset()
	assert.Equal(t, 1, ExitCode(&out, "tool", errors.New("boom")))
	assert.Equal(t, "tool: boom\n", out.String())
}

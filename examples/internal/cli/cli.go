// Package cli gives the example binaries one set of command-line
// conventions: -h and -help print usage and exit 0, a bad flag or bad usage
// exits 2, -version prints the module version and exits 0, any other
// failure exits 1.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"runtime/debug"
)

// ErrVersionShown is Parse's error after it printed the version: the
// program should exit 0.
var ErrVersionShown = errors.New("version shown")

// UsageError is bad usage: the program should exit 2.
type UsageError struct {
	Err   error
	shown bool // flag parsing printed it already
}

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// Usagef returns a *UsageError.
func Usagef(format string, args ...any) error {
	return &UsageError{Err: fmt.Errorf(format, args...)}
}

// Parse adds -version to fs and parses args. It returns flag.ErrHelp after
// -h (fs has printed its usage), ErrVersionShown after -version (printed to
// fs.Output()), and a *UsageError for a bad flag (fs has printed it).
func Parse(fs *flag.FlagSet, args []string) error {
	version := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &UsageError{Err: err, shown: true}
	}
	if *version {
		fmt.Fprintf(fs.Output(), "%s %s\n", fs.Name(), Version())
		return ErrVersionShown
	}
	return nil
}

// version, when set at link time (go build -ldflags
// "-X github.com/meshgate/meshgate/examples/internal/cli.version=V"), is Version's
// answer: a release's name, or a test's mark on one build.
var version string

// Version returns the version set at link time, else the module's version
// from the build information: a tag, a pseudo-version, or "(devel)" for a
// build from a work tree.
func Version() string {
	if version != "" {
		return version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "(unknown)"
	}
	v := info.Main.Version
	if v == "" {
		v = "(devel)"
	}
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += " " + s.Value[:12]
		}
	}
	return v
}

// ExitCode returns the exit status for err, after printing err to stderr
// (prefixed with name) unless it was already shown by flag parsing.
func ExitCode(stderr io.Writer, name string, err error) int {
	var usage *UsageError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp), errors.Is(err, ErrVersionShown):
		return 0
	case errors.As(err, &usage):
		if !usage.shown {
			fmt.Fprintf(stderr, "%s: %v\n", name, err)
		}
		return 2
	default:
		fmt.Fprintf(stderr, "%s: %v\n", name, err)
		return 1
	}
}

// Logging returns the handler maker for a -log-format ("text", logfmt, or
// "json") and the level of a -log-level ("debug", "info", "warn", "error"),
// or a *UsageError naming the bad value.
func Logging(format, level string) (func(w io.Writer, level slog.Leveler) slog.Handler, slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, 0, Usagef("-log-level: %w", err)
	}
	switch format {
	case "text":
		return func(w io.Writer, level slog.Leveler) slog.Handler {
			return slog.NewTextHandler(w, &slog.HandlerOptions{Level: level})
		}, l, nil
	case "json":
		return func(w io.Writer, level slog.Leveler) slog.Handler {
			return slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level})
		}, l, nil
	}
	return nil, 0, Usagef("-log-format: want text or json, got %q", format)
}

package docs_test

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshgate/meshgate/internal/testrig/consultest"
	"github.com/stretchr/testify/require"
)

// guideTimeout bounds one guide's commands, which wait for agents with
// loops of their own.
const guideTimeout = 5 * time.Minute

// Every guide's commands run, in order, in one shell from the
// repository's root, and succeed; whatever a guide starts in the
// background ends with it.
func TestGuidesCommandsWork(t *testing.T) {
	consultest.Binary(t) // built once for every guide that asks scripts/build-consul.sh
	guides, err := filepath.Glob("*.md")
	require.NoError(t, err)
	require.NotEmpty(t, guides)
	root, err := filepath.Abs("..")
	require.NoError(t, err)
	for _, guide := range guides {
		t.Run(strings.TrimSuffix(guide, ".md"), func(t *testing.T) {
			blocks := shBlocks(t, guide)
			if len(blocks) == 0 {
				t.Logf("%s gives no commands", guide)
				return
			}
			script := "set -euo pipefail\ncd " + shellQuote(root) + "\n" + strings.Join(blocks, "\n")
			ctx, cancel := context.WithTimeout(context.Background(), guideTimeout)
			defer cancel()
			cmd := exec.CommandContext(ctx, "bash", "-c", script)
			// The guides keep their files under mktemp -d: here, so that a
			// failure can show their logs.
			tmp := t.TempDir()
			cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
			// Its own process group, so that what it left running can be
			// ended with it.
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
			cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			start := time.Now()
			err := cmd.Start()
			require.NoError(t, err)
			err = cmd.Wait()
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			if err != nil {
				t.Fatalf("%s: the guide's commands failed after %v: %v\n%s%s", guide, time.Since(start).Round(time.Second), err, tail(out.String(), 6000), logTails(tmp))
			}
			t.Logf("%s: %d command blocks ran in %v", guide, len(blocks), time.Since(start).Round(100*time.Millisecond))
		})
	}
}

// logTails returns the end of every *.log file under dir, each under its
// name.
func logTails(dir string) string {
	var b strings.Builder
	filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".log") {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(dir, path)
		fmt.Fprintf(&b, "\n== %s (end)\n%s", rel, tail(string(data), 3000))
		return nil
	})
	return b.String()
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

package docs_test

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshgate/meshgate/internal/consultest"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// guideTimeout bounds one guide's commands, which wait for agents with
// loops of their own.
const guideTimeout = 5 * time.Minute

// shBlocks returns the bodies of a Markdown file's ```sh blocks, in order.
func shBlocks(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	var blocks []string
	var cur *strings.Builder
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case cur == nil && strings.TrimSpace(line) == "```sh":
			cur = &strings.Builder{}
		case cur != nil && strings.TrimSpace(line) == "```":
			blocks = append(blocks, cur.String())
			cur = nil
		case cur != nil:
			cur.WriteString(line + "\n")
		}
	}
	require.Nil(t, cur, "%s: a ```sh block is not closed", path)
	return blocks
}

// The blocks are found as a reader sees them: only sh blocks, whole, in
// order.
func TestShBlocks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "g.md")
	require.NoError(t, os.WriteFile(path, []byte("text\n```sh\necho one\necho two\n```\n\n```text\nnot run\n```\n```hcl\nx = 1\n```\n  ```sh\necho three\n  ```\n"), 0o600))
	assert.Equal(t, []string{"echo one\necho two\n", "echo three\n"}, shBlocks(t, path))
}

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
				t.Fatalf("%s: the guide's commands failed after %v: %v\n%s", guide, time.Since(start).Round(time.Second), err, tail(out.String(), 6000))
			}
			t.Logf("%s: %d command blocks ran in %v", guide, len(blocks), time.Since(start).Round(100*time.Millisecond))
		})
	}
}

func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func tail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

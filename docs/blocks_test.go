package docs_test

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// docFiles returns the repository's root and the Markdown files the docs
// tests read: the README and the guides.
func docFiles(t *testing.T) (root string, files []string) {
	t.Helper()
	root, err := filepath.Abs("..")
	require.NoError(t, err)
	guides, err := filepath.Glob("*.md")
	require.NoError(t, err)
	require.NotEmpty(t, guides)
	return root, append([]string{filepath.Join(root, "README.md")}, guides...)
}

// A block is one fenced code block of a Markdown file.
type block struct {
	// Line is the line of the opening fence, for messages.
	Line int
	Body string
	// From is what a `<!-- from: PATH FUNC -->` comment on the line before
	// the fence names: where a fragment's lines come from.
	From string
}

// blocks returns the bodies of a Markdown file's code blocks in language
// lang (```sh, ```go), in order.
func blocks(t *testing.T, path, lang string) []block {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	var (
		out  []block
		cur  *block
		body strings.Builder
		prev string
		n    int
	)
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		n++
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		switch {
		case cur == nil && trimmed == "```"+lang:
			cur = &block{Line: n}
			if from, ok := strings.CutPrefix(strings.TrimSpace(prev), "<!-- from:"); ok {
				cur.From = strings.TrimSpace(strings.TrimSuffix(from, "-->"))
			}
			body.Reset()
		case cur == nil && strings.HasPrefix(trimmed, "```") && trimmed != "```":
			// another language's block: skip to its end
			for sc.Scan() {
				n++
				if strings.TrimSpace(sc.Text()) == "```" {
					break
				}
			}
		case cur != nil && trimmed == "```":
			cur.Body = body.String()
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			body.WriteString(line + "\n")
		}
		prev = line
	}
	require.Nil(t, cur, "%s:%d: a ```%s block is not closed", path, n, lang)
	return out
}

// shBlocks returns the bodies of a Markdown file's ```sh blocks, in order.
func shBlocks(t *testing.T, path string) []string {
	t.Helper()
	var bodies []string
	for _, b := range blocks(t, path, "sh") {
		bodies = append(bodies, b.Body)
	}
	return bodies
}

// The blocks are found as a reader sees them: only the language asked
// for, whole, in order, with the comment that says where one comes from.
func TestBlocks(t *testing.T) {
	path := t.TempDir() + "/g.md"
	require.NoError(t, os.WriteFile(path, []byte("text\n```sh\necho one\necho two\n```\n\n```text\nnot run\n```sh\n```\n```hcl\nx = 1\n```\n  ```sh\necho three\n  ```\n<!-- from: a/b.go F -->\n```go\nx := 1\n```\n"), 0o600))
	require.Equal(t, []string{"echo one\necho two\n", "echo three\n"}, shBlocks(t, path))
	require.Equal(t, []block{{Line: 18, Body: "x := 1\n", From: "a/b.go F"}}, blocks(t, path, "go"))
}

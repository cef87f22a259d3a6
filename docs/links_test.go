package docs_test

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var mdLink = regexp.MustCompile(`\]\(([^)#\s]*\.md)?(#[^)\s]*)?\)`)

// Every link between the README and the guides leads to a file that
// exists and, where it names a section, to a heading of that file.
func TestLinksLeadSomewhere(t *testing.T) {
	_, files := docFiles(t)
	links := 0
	for _, file := range files {
		data, err := os.ReadFile(file)
		require.NoError(t, err)
		for _, m := range mdLink.FindAllStringSubmatch(string(data), -1) {
			target, anchor := m[1], strings.TrimPrefix(m[2], "#")
			if target == "" && anchor == "" {
				continue
			}
			links++
			dest := file
			if target != "" {
				dest = filepath.Join(filepath.Dir(file), target)
			}
			if !assert.FileExists(t, dest, "%s links to %s", filepath.Base(file), m[0]) || anchor == "" {
				continue
			}
			assert.Contains(t, anchors(t, dest), anchor, "%s links to %s: no such heading", filepath.Base(file), m[0])
		}
	}
	require.NotZero(t, links, "no links found: the test looks in the wrong place")
}

// anchors returns the ids GitHub gives a Markdown file's headings:
// lower case, punctuation but '-' and '_' dropped, spaces as '-'.
func anchors(t *testing.T, path string) []string {
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	var out []string
	inCode := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			inCode = !inCode
		}
		if inCode || !strings.HasPrefix(line, "#") {
			continue
		}
		title := strings.ToLower(strings.TrimSpace(strings.TrimLeft(line, "#")))
		var b strings.Builder
		for _, r := range title {
			switch {
			case r == ' ':
				b.WriteRune('-')
			case r == '-' || r == '_' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r > 127:
				b.WriteRune(r)
			}
		}
		out = append(out, b.String())
	}
	return out
}

func TestAnchors(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.md")
	require.NoError(t, os.WriteFile(path, []byte("# Title\n## The agent connections\n```sh\n# not a heading\n```\n### `explain`: plans, and -route\n"), 0o600))
	assert.Equal(t, []string{"title", "the-agent-connections", "explain-plans-and--route"}, anchors(t, path))
}

package consultest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeGo stands in for the go command: "go build -o X" counts the build in
// $FAKE_GO_COUNT, waits a moment so that concurrent runs overlap, and writes
// a "consul" that answers "version".
const fakeGo = `#!/bin/sh
case "$1" in
build)
  echo build >> "$FAKE_GO_COUNT"
  sleep 1
  while [ "$1" != "-o" ]; do shift; done
  printf '#!/bin/sh\necho "Consul v0.0.0-fake"\n' > "$2"
  ;;
esac
exit 0
`

// Several test packages run the build script at once on a fresh machine; it
// must build once, and every run must print the same working binary.
func TestBuildScriptIsSafeConcurrently(t *testing.T) {
	root, err := repoRoot()
	require.NoError(t, err)
	bin := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(bin, "go"), []byte(fakeGo), 0o755))
	cache := t.TempDir()
	count := filepath.Join(t.TempDir(), "builds")
	env := append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "MESHGATE_CACHE="+cache, "FAKE_GO_COUNT="+count)

	const runs = 4
	outs := make([]string, runs)
	errs := make([]error, runs)
	var wg sync.WaitGroup
	for i := range runs {
		wg.Go(func() {
			cmd := exec.Command("bash", filepath.Join(root, "scripts", "build-consul.sh"))
			cmd.Env = env
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			outs[i] = strings.TrimSpace(string(out))
			if err != nil {
				errs[i] = err
				t.Logf("run %d: %v\n%s", i, err, stderr.String())
			}
		})
	}
	wg.Wait()
	want := filepath.Join(cache, "consul-1.22.0", "consul")
	for i := range runs {
		assert.NoError(t, errs[i], "run %d", i)
		assert.Equal(t, want, outs[i], "run %d", i)
	}
	builds, err := os.ReadFile(count)
	require.NoError(t, err)
	assert.Equal(t, 1, strings.Count(string(builds), "build"), "one build, the others waited for it")
	v, err := exec.Command(want, "version").Output()
	require.NoError(t, err)
	assert.Contains(t, string(v), "fake")
	left, _ := filepath.Glob(want + ".*")
	assert.Empty(t, left, "no temporary file left behind")
}

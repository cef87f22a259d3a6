package config

import (
	"errors"
	"strings"
	"testing"

	"github.com/meshgate/meshgate/internal/decode"
	"github.com/meshgate/meshgate/mesh"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Files crafted to crash or exhaust a loader are refused with an error that
// names the file and the line, in bounded memory, and never crash the
// process (a self-referencing alias used to overflow the stack, which no
// recover can catch).
func TestHostileYAML(t *testing.T) {
	for _, tc := range []struct{ file, want string }{
		{"testdata/hostile/alias-self.yaml", "alias-self.yaml: line 2: YAML document too large: alias *a refers to itself (its anchor &a is on line 1)"},
		{"testdata/hostile/alias-cycle.yaml", "alias-cycle.yaml: line 3: YAML document too large: alias *a refers to itself"},
		{"testdata/hostile/alias-bomb.yaml", "alias-bomb.yaml: line 1: YAML document too large: more than 100000 values"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			_, err := Load(tc.file)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.True(t, errors.Is(err, ErrTooLarge), "%v", err)
		})
	}
	deep := "Kind: service-defaults\nName: x\nMeta:\n" + strings.Repeat("  ", 1) + strings.Repeat("- ", decode.MaxDepth+1) + "x\n"
	_, err := Parse("deep.yaml", []byte(deep))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "deep.yaml: line 4: YAML document too large: nested more than 100 deep")

	// An anchor used twice, legitimately, is fine.
	ok := "Kind: service-defaults\nName: web\nMeta: &m {a: b}\n---\nKind: service-defaults\nName: api\nMeta: *m\n"
	set, err := Parse("ok.yaml", []byte(ok))
	require.NoError(t, err)
	assert.Equal(t, "b", set.ServiceDefaults[mesh.KeyOf("api", "", "")].Meta["a"])
}

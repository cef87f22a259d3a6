package main

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/meshgate/meshgate/examples/internal/cli"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const eventually = 60 * time.Second

func TestUsage(t *testing.T) {
	for args, want := range map[string]int{"-h": 0, "-version": 0, "-nope": 2, "extra": 2, "": 2, "-proxy-id x -log-level loud": 2, "-proxy-id x -probe-interval -1s": 2} {
		var logs bytes.Buffer
		err := run(context.Background(), strings.Fields(args), &logs, nil)
		assert.Equal(t, want, cli.ExitCode(&logs, "sidecar", err), "%q: %s", args, logs.String())
	}
}

func freePort(t *testing.T) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

package fipsmode

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/fips140"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const (
	childEnv  = "FIPSMODE_TEST_SERVER"
	clientEnv = "FIPSMODE_TEST_CLIENT" // the address to dial
)

func selfSigned(t testing.TB) tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "x"}, DNSNames: []string{"x"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestMain runs, in the child, a TLS server under fips140=only that prints
// its handshake's explained error.
func TestMain(m *testing.M) {
	if addr := os.Getenv(clientEnv); addr != "" {
		// A client that offers only X25519, outside FIPS mode.
		c, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true, CurvePreferences: []tls.CurveID{tls.X25519}})
		if err == nil {
			c.Close()
		}
		fmt.Printf("client enforced=%v err=%v\n", fips140.Enforced(), err)
		os.Exit(0)
	}
	if os.Getenv(childEnv) == "" {
		os.Exit(m.Run())
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	fmt.Println(ln.Addr().String())
	c, err := ln.Accept()
	if err != nil {
		panic(err)
	}
	tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{selfSigned(&testing.T{})}})
	err = tc.Handshake()
	fmt.Printf("enforced=%v err=%v\n", fips140.Enforced(), Explain(err))
	os.Exit(0)
}

// A peer that offers only X25519 fails the handshake with a server in
// FIPS 140-3 mode, and the error says what the mode allows.
func TestExplainNamesWhatFIPSForbids(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=1", "GODEBUG=fips140=only")
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	defer cmd.Wait()
	lines := bufio.NewScanner(out)
	require.True(t, lines.Scan())
	addr := lines.Text()
	client := exec.Command(os.Args[0], "-test.run=^$")
	client.Env = append(os.Environ(), clientEnv+"="+addr, "GODEBUG=fips140=off")
	cout, err := client.Output()
	require.NoError(t, err)
	assert.Contains(t, string(cout), "client enforced=false err=", "the client is not in FIPS mode")
	assert.NotContains(t, string(cout), "err=<nil>", "a FIPS server takes no X25519-only client")
	require.True(t, lines.Scan())
	got := lines.Text()
	assert.Contains(t, got, "enforced=true")
	assert.Contains(t, got, "tls: ", "the handshake's own error")
	assert.Contains(t, got, "FIPS 140-3 mode")
	assert.Contains(t, got, "not X25519 alone")
}

// Outside FIPS 140-3 mode, or for a connection's failure, an error is
// left as it is.
func TestExplainLeavesOtherErrors(t *testing.T) {
	assert.Nil(t, Explain(nil))
	e := errors.New("tls: x")
	if !fips140.Enforced() {
		assert.Same(t, e, Explain(e))
	}
	assert.False(t, strings.Contains(fmt.Sprint(Explain(os.ErrDeadlineExceeded)), "FIPS"))
}

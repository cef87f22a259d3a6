// Command capturehellos records the TLS ClientHellos of real clients into
// sni/testdata/hellos, for the sni package's tests, fuzz seeds and benchmarks.
//
//	go run ./tools/capturehellos [-out sni/testdata/hellos]
//
// It listens on 127.0.0.1, runs each client against it with a long Consul SNI,
// and keeps the bytes the client sent before it fell silent waiting for a
// ServerHello (the capture does not use the sni package, so it cannot share
// its bugs). Clients that are not installed are reported and skipped; on
// Debian: apt-get install openssl curl gnutls-bin chromium. It writes one
// .bin file per client and a manifest.json with the expected server name and,
// where the client was told one, the ALPN list.
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// consulSNI is a service SNI as a Consul sidecar sends it, 76 characters long.
const consulSNI = "api.default.dc1.internal.5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul"

// Entry describes one captured ClientHello in manifest.json.
type Entry struct {
	File       string   `json:"file"`
	Client     string   `json:"client"`
	ServerName string   `json:"server_name"`
	ALPN       []string `json:"alpn,omitempty"`
	Size       int      `json:"size"`
}

type client struct {
	name string
	alpn []string
	run  func(ctx context.Context, port int) error // nil run: command below
	argv func(port int) []string
}

func main() {
	out := flag.String("out", "sni/testdata/hellos", "directory for the captured hellos")
	flag.Parse()
	if err := os.MkdirAll(*out, 0o755); err != nil {
		log.Fatal(err)
	}
	hostPort := func(port int) string { return "127.0.0.1:" + strconv.Itoa(port) }
	clients := []client{
		{name: "openssl-tls13", argv: func(p int) []string {
			return []string{"openssl", "s_client", "-connect", hostPort(p), "-servername", consulSNI}
		}},
		{name: "openssl-alpn", alpn: []string{"h2", "http/1.1"}, argv: func(p int) []string {
			return []string{"openssl", "s_client", "-connect", hostPort(p), "-servername", consulSNI, "-alpn", "h2,http/1.1"}
		}},
		{name: "openssl-tls12", argv: func(p int) []string {
			return []string{"openssl", "s_client", "-connect", hostPort(p), "-servername", consulSNI, "-tls1_2"}
		}},
		{name: "curl", argv: func(p int) []string {
			return []string{"curl", "-sk", "--max-time", "3", "--resolve", fmt.Sprintf("%s:%d:127.0.0.1", consulSNI, p), fmt.Sprintf("https://%s:%d/", consulSNI, p)}
		}},
		{name: "gnutls-cli", argv: func(p int) []string {
			return []string{"gnutls-cli", "--insecure", "--sni-hostname", consulSNI, "-p", strconv.Itoa(p), "127.0.0.1"}
		}},
		{name: "python-ssl", argv: func(p int) []string {
			return []string{"python3", "-c", fmt.Sprintf(`import socket, ssl
c = ssl.create_default_context(); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE
s = socket.create_connection(("127.0.0.1", %d)); c.wrap_socket(s, server_hostname=%q)`, p, consulSNI)}
		}},
		{name: "go-crypto-tls", alpn: []string{"h2", "http/1.1"}, run: func(ctx context.Context, p int) error {
			d := tls.Dialer{Config: &tls.Config{ServerName: consulSNI, NextProtos: []string{"h2", "http/1.1"}, InsecureSkipVerify: true}}
			c, err := d.DialContext(ctx, "tcp", hostPort(p))
			if err == nil {
				c.Close()
			}
			return err
		}},
		{name: "chromium", argv: func(p int) []string {
			dir, _ := os.MkdirTemp("", "capturehellos-chromium")
			return []string{"chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
				"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
				"--user-data-dir=" + dir, "--host-resolver-rules=MAP * 127.0.0.1",
				"--timeout=3000", "--dump-dom", fmt.Sprintf("https://%s:%d/", consulSNI, p)}
		}},
	}
	var manifest []Entry
	for _, c := range clients {
		if c.argv != nil {
			if _, err := exec.LookPath(c.argv(0)[0]); err != nil {
				log.Printf("SKIP %s: %s is not installed", c.name, c.argv(0)[0])
				continue
			}
		}
		hello, err := capture(c)
		if err != nil {
			log.Printf("FAIL %s: %v", c.name, err)
			continue
		}
		file := c.name + ".bin"
		if err := os.WriteFile(filepath.Join(*out, file), hello, 0o644); err != nil {
			log.Fatal(err)
		}
		manifest = append(manifest, Entry{File: file, Client: c.name, ServerName: consulSNI, ALPN: c.alpn, Size: len(hello)})
		log.Printf("ok   %s: %d bytes", c.name, len(hello))
	}
	sort.Slice(manifest, func(i, j int) bool { return manifest[i].File < manifest[j].File })
	b, _ := json.MarshalIndent(manifest, "", "  ")
	if err := os.WriteFile(filepath.Join(*out, "manifest.json"), append(b, '\n'), 0o644); err != nil {
		log.Fatal(err)
	}
}

// capture runs one client and returns what it sent before going quiet.
func capture(c client) ([]byte, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	done := make(chan error, 1)
	if c.run != nil {
		go func() { done <- c.run(ctx, port) }()
	} else {
		argv := c.argv(port)
		cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
		cmd.Stdin = strings.NewReader("")
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		go func() { done <- cmd.Wait() }()
		defer cmd.Process.Kill()
	}
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(15 * time.Second))
	conn, err := ln.Accept()
	if err != nil {
		return nil, fmt.Errorf("client never connected: %w", err)
	}
	defer conn.Close()
	var got []byte
	buf := make([]byte, 64<<10)
	for {
		// The client sends its hello and then waits; a second of silence ends it.
		conn.SetReadDeadline(time.Now().Add(time.Second))
		n, err := conn.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			break
		}
	}
	if len(got) == 0 {
		return nil, fmt.Errorf("client sent nothing")
	}
	return got, nil
}

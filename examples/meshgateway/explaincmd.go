package main

import (
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/meshgate/meshgate/examples/internal/cli"
)

// explainCommand is "meshgateway explain -admin ADDR NAME...": it prints,
// for each server name, the decision the running gateway at ADDR would
// take now (its /explain, JSON), and with -refusals its last refusals.
func explainCommand(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("meshgateway explain", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("admin", "127.0.0.1:19000", "the running gateway's -admin address")
	refusals := fs.Bool("refusals", false, "also print the gateway's last refused or failed connections")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: meshgateway explain -admin ADDR [-refusals] [NAME...]\n\nPrints how the running gateway routes each server name now: its kind, layer and targets (with ejections), or the refusal's reason and rule.\n\n")
		fs.PrintDefaults()
	}
	if err := cli.Parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 && !*refusals {
		return cli.Usagef("explain: name a server name, or ask for -refusals")
	}
	client := &http.Client{Timeout: 10 * time.Second}
	get := func(path string) error {
		resp, err := client.Get("http://" + *addr + path)
		if err != nil {
			return fmt.Errorf("explain: the gateway's admin endpoint: %w", err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
		if err != nil {
			return fmt.Errorf("explain: reading %s: %w", path, err)
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("explain: %s: %s: %s", path, resp.Status, strings.TrimSpace(string(body)))
		}
		_, err = stdout.Write(body)
		return err
	}
	for _, name := range fs.Args() {
		if err := get("/explain?sni=" + url.QueryEscape(name)); err != nil {
			return err
		}
	}
	if *refusals {
		return get("/refusals")
	}
	return nil
}

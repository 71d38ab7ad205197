package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/gateway/admin"
)

// apiClient returns a client for --api-socket (before or after the command).
func apiClient(c *cli.Context) *admin.Client {
	return admin.NewClient(c.String("api-socket"))
}

func callCtx(c *cli.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(c.Context, 5*time.Minute)
}

// apiErr turns a client error into the CLI's exit codes.
func apiErr(err error) error {
	if err == nil {
		return nil
	}
	var ae *admin.APIError
	if errors.As(err, &ae) {
		return &exitError{exitFailed, ae}
	}
	return &exitError{exitNoGateway, err}
}

// volumeRef checks a TENANT/NAME argument.
func volumeRef(c *cli.Context, what string) (string, error) {
	if c.NArg() != 1 {
		return "", usageErr("%s: want exactly one TENANT/NAME argument", what)
	}
	ref := c.Args().First()
	if _, _, err := gateway.SplitRef(ref); err != nil {
		return "", usageErr("%s: %v", what, err)
	}
	return ref, nil
}

// printDone confirms a command that changed something: one line, or with
// --json the object (keys naming what changed, and a true flag saying
// what happened to it, e.g. {"deleted": true, "volume": "acme/db"}).
func printDone(c *cli.Context, obj map[string]any, format string, a ...any) error {
	if c.Bool("json") {
		return printJSON(obj)
	}
	fmt.Printf(format+"\n", a...)
	return nil
}

func printJSON(v any) error {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// table prints rows under a header, columns aligned.
func table(header []string, rows [][]string) {
	w := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(w, strings.Join(r, "\t"))
	}
	w.Flush()
}

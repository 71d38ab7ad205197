package main

import (
	"errors"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"
)

// Usage errors and the flags every client command shares.

// apiSocketFlag is --api-socket, a new instance per command (a flag that
// reads an environment variable records that it did).
func apiSocketFlag() cli.Flag {
	return &cli.StringFlag{
		Name:    "api-socket",
		Usage:   "the gateway's admin API socket",
		EnvVars: []string{"SLUICE_API_SOCKET"},
		Value:   filepath.Join(defaultDataDir, "api.sock"),
	}
}

var jsonFlag = &cli.BoolFlag{Name: "json", Usage: "print JSON for scripts"}

// daemons are the top-level commands that are not clients of a gateway's
// admin API: they take neither the client's --api-socket nor --json.
var daemons = map[string]bool{"gateway": true, "controller": true, "fd-holder": true}

// globalFlags may be given before the command or after it: interspersed
// moves them to the command, which declares them too.
var globalFlags = []string{"api-socket", "json"}

// prepareCommands makes every command report usage errors as one line
// (usageError) and gives every client command --api-socket. Client
// commands declare --json themselves (TestClientCommandsTakeGlobalFlags).
func prepareCommands(cmds []*cli.Command) {
	for _, c := range cmds {
		setUsageErrors(c)
		if !daemons[c.Name] {
			addAPISocket(c)
		}
	}
}

func setUsageErrors(c *cli.Command) {
	c.OnUsageError = usageError
	for _, sub := range c.Subcommands {
		setUsageErrors(sub)
	}
}

func addAPISocket(c *cli.Command) {
	for _, sub := range c.Subcommands {
		addAPISocket(sub)
	}
	if len(c.Subcommands) == 0 && !hasFlag(c.Flags, "api-socket") {
		c.Flags = append(c.Flags, apiSocketFlag())
	}
}

func hasFlag(flags []cli.Flag, name string) bool {
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == name {
				return true
			}
		}
	}
	return false
}

// usageError is every command's OnUsageError (an unknown flag, a flag
// without its value, a malformed value). urfave/cli would print the
// command's help and then the error; Sluice prints one line with a hint
// and exits 2.
func usageError(c *cli.Context, err error, _ bool) error {
	if name, ok := strings.CutPrefix(err.Error(), "flag provided but not defined: -"); ok {
		err = errors.New("unknown flag --" + name)
	}
	return usageErr("%w (run '%s --help')", err, helpName(c))
}

// requireFlag is the usage error of a missing required flag. (urfave/cli's
// Required prints the whole help before the error; the package test
// keeps it unused.)
func requireFlag(c *cli.Context, name string) error {
	if c.IsSet(name) {
		return nil
	}
	return usageErr("%s: --%s is required (run '%s --help')",
		strings.TrimPrefix(helpName(c), "sluice "), name, helpName(c))
}

// helpName is the command line that shows c's help, e.g. "sluice volume create".
func helpName(c *cli.Context) string {
	if c.Command != nil && c.Command.HelpName != "" {
		return c.Command.HelpName
	}
	return "sluice"
}

// oneLine joins a multi-line message (some tools' errors end in newlines
// or continue on a second line) into one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// Command sluice is Sluice's one binary: the gateway daemon and the thin
// clients of its admin API.
//
// Exit codes (scripts may rely on them):
//
//	0  success
//	1  the request was refused or failed (the message says why)
//	2  usage error: unknown command or flag, malformed argument
//	3  no gateway answers at the API socket
//	4  the gateway could not start (store, device, sockets)
package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"
)

// Exit codes; see the package doc.
const (
	exitOK        = 0
	exitFailed    = 1
	exitUsage     = 2
	exitNoGateway = 3
	exitStartup   = 4
)

// exitError carries an exit code with a one-line message.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageErr(format string, a ...any) error {
	return &exitError{exitUsage, fmt.Errorf(format, a...)}
}

const defaultDataDir = "./sluice-data"

func newApp() *cli.App {
	return &cli.App{
		Name:  "sluice",
		Usage: "a userspace software-defined storage gateway",
		Flags: []cli.Flag{
			&cli.StringFlag{
				Name:    "api-socket",
				Usage:   "the gateway's admin API socket",
				EnvVars: []string{"SLUICE_API_SOCKET"},
				Value:   filepath.Join(defaultDataDir, "api.sock"),
			},
		},
		Commands: []*cli.Command{
			gatewayCommand(),
			volumeCommand(),
			qosCommand(),
			statsCommand(),
			mountCommand(),
			umountCommand(),
			attachCommand(),
			detachCommand(),
			fsckCommand(),
			virtioCommand(),
			policyCommand(),
			filterCommand(),
			registryCommand(),
			scrubCommand(),
			keyringCommand(),
			controllerCommand(),
			sloCommand(),
			clusterCommand(),
		},
		Action:         unknownSubcommand,
		ExitErrHandler: func(*cli.Context, error) {}, // main prints and exits
		OnUsageError: func(c *cli.Context, err error, _ bool) error {
			return &exitError{exitUsage, err}
		},
	}
}

func main() {
	app := newApp()
	err := app.Run(interspersed(app, os.Args))
	if err == nil {
		os.Exit(exitOK)
	}
	fmt.Fprintln(os.Stderr, "sluice:", err)
	var ee *exitError
	if errors.As(err, &ee) {
		os.Exit(ee.code)
	}
	os.Exit(exitFailed)
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usageErr("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

// unknownSubcommand is the action of a command that only has subcommands:
// without arguments it shows help; with an unknown one it is a usage error.
func unknownSubcommand(c *cli.Context) error {
	if c.NArg() > 0 {
		return usageErr("unknown command %q (see `%s --help`)", c.Args().First(), c.Command.HelpName)
	}
	return cli.ShowSubcommandHelp(c)
}

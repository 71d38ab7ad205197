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
	app := &cli.App{
		Name:  "sluice",
		Usage: "a userspace software-defined storage gateway",
		// The client commands take these too (prepareCommands), so they
		// may come before or after the command.
		Flags: []cli.Flag{apiSocketFlag(), jsonFlag},
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
			tenantCommand(),
			runCommand(),
			controllerCommand(),
			sloCommand(),
			clusterCommand(),
			fdHolderCommand(),
		},
		Action:         unknownSubcommand,
		ExitErrHandler: func(*cli.Context, error) {}, // main prints and exits
		OnUsageError:   usageError,
	}
	prepareCommands(app.Commands)
	return app
}

func main() {
	app := newApp()
	err := app.Run(interspersed(app, os.Args))
	if err == nil {
		os.Exit(exitOK)
	}
	fmt.Fprintln(os.Stderr, "sluice:", oneLine(err.Error()))
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
		return usageErr("unknown command %q (run '%s --help')", c.Args().First(), c.Command.HelpName)
	}
	return cli.ShowSubcommandHelp(c)
}

package main

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// run runs the CLI in process as main does, and returns what the app
// itself printed and the error.
func run(args ...string) (string, error) {
	app := newApp()
	var out bytes.Buffer
	app.Writer, app.ErrWriter = &out, &out
	err := app.Run(interspersed(app, append([]string{"sluice"}, args...)))
	return out.String(), err
}

func exitCode(err error) int {
	var ee *exitError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ee):
		return ee.code
	}
	return exitFailed
}

func TestUsageErrorsExit2OnOneLine(t *testing.T) {
	cases := []struct {
		args []string
		says string
	}{
		{[]string{"volume", "list", "--bogus"}, "unknown flag --bogus (run 'sluice volume list --help')"},
		{[]string{"volume", "create", "x", "--tenant", "a", "--bogus", "1"}, "unknown flag --bogus (run 'sluice volume create --help')"},
		{[]string{"--bogus", "volume", "list"}, "unknown flag --bogus (run 'sluice --help')"},
		{[]string{"volume", "create", "x", "--tenant", "a"}, "volume create: --size is required (run 'sluice volume create --help')"},
		{[]string{"volume", "resize", "a/x"}, "volume resize: --size is required (run 'sluice volume resize --help')"},
		{[]string{"volume", "create", "x", "--tenant", "a", "--size"}, "flag needs an argument: -size (run 'sluice volume create --help')"},
		{[]string{"qos", "set", "--tenant", "a", "--priority", "high"}, "run 'sluice qos set --help'"},
		{[]string{"volume", "frobnicate"}, "unknown command \"frobnicate\" (run 'sluice volume --help')"},
	}
	for _, c := range cases {
		printed, err := run(c.args...)
		if code := exitCode(err); code != exitUsage || !strings.Contains(err.Error(), c.says) {
			t.Errorf("sluice %s: exit %d, %v; want exit 2 saying %q", strings.Join(c.args, " "), code, err, c.says)
		}
		if printed != "" {
			t.Errorf("sluice %s printed %q besides the error; want only the error line", strings.Join(c.args, " "), printed)
		}
	}
}

// Global flags count before and after the command; the command line beats
// the environment.
func TestGlobalFlagsAnywhere(t *testing.T) {
	t.Setenv("SLUICE_API_SOCKET", "/nowhere/env.sock")
	sock := filepath.Join(t.TempDir(), "api.sock")
	for _, args := range [][]string{
		{"volume", "list", "--api-socket", sock},
		{"--api-socket", sock, "volume", "list"},
		{"volume", "list", "--json", "--api-socket=" + sock},
		{"--json", "volume", "info", "a/b", "--api-socket", sock},
		{"qos", "delete", "1", "--api-socket", sock},
	} {
		_, err := run(args...)
		if exitCode(err) != exitNoGateway || !strings.Contains(err.Error(), sock) {
			t.Errorf("sluice %s: %v; want exit 3 naming %s", strings.Join(args, " "), err, sock)
		}
	}
	if _, err := run("volume", "list"); err == nil || !strings.Contains(err.Error(), "/nowhere/env.sock") {
		t.Errorf("without --api-socket: %v; want SLUICE_API_SOCKET's socket", err)
	}
}

// walk calls f for every command that has no subcommands, with its path.
func walk(cmds []*cli.Command, path string, f func(string, *cli.Command)) {
	for _, c := range cmds {
		if len(c.Subcommands) == 0 {
			f(strings.TrimSpace(path+" "+c.Name), c)
		}
		walk(c.Subcommands, path+" "+c.Name, f)
	}
}

func TestClientCommandsTakeGlobalFlags(t *testing.T) {
	app := newApp()
	walk(app.Commands, "", func(path string, c *cli.Command) {
		if daemons[strings.Fields(path)[0]] {
			return
		}
		for _, name := range globalFlags {
			if !hasFlag(c.Flags, name) {
				t.Errorf("sluice %s has no --%s: every client command prints JSON with --json and takes --api-socket", path, name)
			}
		}
	})
}

// urfave/cli's Required prints the command's help before the error; use
// requireFlag.
func TestNoRequiredFlags(t *testing.T) {
	walk(newApp().Commands, "", func(path string, c *cli.Command) {
		for _, f := range c.Flags {
			if r, ok := f.(cli.RequiredFlag); ok && r.IsRequired() {
				t.Errorf("sluice %s: --%s is Required; check it with requireFlag instead", path, f.Names()[0])
			}
		}
	})
}

func TestFormatLatency(t *testing.T) {
	for sec, want := range map[float64]string{
		0: "0ns", 850e-9: "850ns", 12.44e-6: "12.4µs", 0.9293373: "929.3ms",
		999.97e-6: "1.0ms", 1.25: "1.25s", 61: "61.00s",
	} {
		if got := formatLatency(sec); got != want {
			t.Errorf("formatLatency(%g) = %q, want %q", sec, got, want)
		}
	}
}

func TestExactSize(t *testing.T) {
	for n, want := range map[int64]string{
		1000: "1000 bytes", 100 << 40: "100 TiB (109951162777600 bytes)", 3 << 19: "1.5 MiB (1572864 bytes)",
	} {
		if got := exactSize(n); got != want {
			t.Errorf("exactSize(%d) = %q, want %q", n, got, want)
		}
	}
}

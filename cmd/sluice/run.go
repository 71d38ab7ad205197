package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/gateway/admin"
)

// shimLibName is the LD_PRELOAD library `make build` puts beside the
// sluice binary.
const shimLibName = "libsluice-shim.so"

// runArgs is every flag of `sluice run`, bound by the flag definitions.
type runArgs struct {
	Mount   string
	ShimLib string
	Print   bool
}

func runCommand() *cli.Command {
	a := &runArgs{}
	return &cli.Command{
		Name:      "run",
		Usage:     "run a program with the LD_PRELOAD shim: its file IO on a Sluice mount goes to the gateway over shared memory",
		ArgsUsage: "--mount DIR -- CMD [ARGS...]",
		Description: `Runs CMD with LD_PRELOAD set to the shim library and SLUICE_SHIM_SOCKET to the
gateway's shim socket (asked of the gateway's admin API). DIR must be an fs
mount of that gateway. Dynamically linked programs only: static binaries (Go
programs) make their system calls themselves and get the kernel's path.
SLUICE_SHIM_STATS=1 in CMD's environment prints per-call counts at its exit.
Put CMD after "--" so its own flags stay its own. See docs/SHIM.md.`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "mount", Destination: &a.Mount, Usage: "`DIR`: the Sluice fs mount the program works on"},
			&cli.StringFlag{Name: "shim-lib", Destination: &a.ShimLib, Usage: "the shim library (default: " + shimLibName + " beside the sluice binary)"},
			&cli.BoolFlag{Name: "print-env", Destination: &a.Print, Usage: "print the environment CMD would get instead of running it"},
			jsonFlag,
		},
		Action: func(c *cli.Context) error { return a.run(c) },
	}
}

// run checks the mount and the library, then replaces this process with
// CMD (its exit status and signals are CMD's own).
func (a *runArgs) run(c *cli.Context) error {
	if err := requireFlag(c, "mount"); err != nil {
		return err
	}
	if c.NArg() == 0 && !a.Print {
		return usageErr("run: want a command after --")
	}
	dir, err := filepath.Abs(a.Mount)
	if err != nil {
		return usageErr("run: --mount: %v", err)
	}
	lib, err := a.library()
	if err != nil {
		return err
	}
	ctx, cancel := callCtx(c)
	defer cancel()
	cl := apiClient(c)
	info, err := cl.Shim(ctx)
	if err != nil {
		return apiErr(err)
	}
	if err := checkMount(dir, c, cl); err != nil {
		return err
	}
	if err := checkShimSocket(info.Socket); err != nil {
		return err
	}
	env := map[string]string{"LD_PRELOAD": preload(lib, os.Getenv("LD_PRELOAD")), "SLUICE_SHIM_SOCKET": info.Socket}
	if a.Print {
		if c.Bool("json") {
			return printJSON(env)
		}
		fmt.Printf("LD_PRELOAD=%s\nSLUICE_SHIM_SOCKET=%s\n", env["LD_PRELOAD"], env["SLUICE_SHIM_SOCKET"])
		return nil
	}
	path, err := exec.LookPath(c.Args().First())
	if err != nil {
		return &exitError{exitFailed, fmt.Errorf("run: %w", err)}
	}
	environ := os.Environ()
	for k, v := range env {
		environ = append(environ, k+"="+v)
	}
	err = syscall.Exec(path, c.Args().Slice(), environ)
	return &exitError{exitFailed, fmt.Errorf("run: exec %s: %w", path, err)}
}

// library is --shim-lib, or the one beside the sluice binary.
func (a *runArgs) library() (string, error) {
	lib := a.ShimLib
	if lib == "" {
		self, err := os.Executable()
		if err != nil {
			return "", &exitError{exitFailed, fmt.Errorf("run: where is the sluice binary? %w; give --shim-lib", err)}
		}
		lib = filepath.Join(filepath.Dir(self), shimLibName)
	}
	lib, err := filepath.Abs(lib)
	if err != nil {
		return "", usageErr("run: --shim-lib: %v", err)
	}
	if _, err := os.Stat(lib); err != nil {
		return "", &exitError{exitFailed, fmt.Errorf("run: the shim library %s is missing (`make build` builds it beside the sluice binary; or give --shim-lib): %w", lib, err)}
	}
	return lib, nil
}

// checkMount refuses a directory that is not an fs mount of the gateway:
// the program would run, but nothing would take the shim's path.
func checkMount(dir string, c *cli.Context, cl *admin.Client) error {
	ctx, cancel := callCtx(c)
	defer cancel()
	ms, err := cl.Mounts(ctx)
	if err != nil {
		return apiErr(err)
	}
	for _, m := range ms {
		if m.Dir == dir {
			if m.Kind != gateway.KindFS {
				return &exitError{exitFailed, fmt.Errorf("run: %s is the mount of block volume %s; the shim serves files of fs volumes", dir, m.Volume)}
			}
			return nil
		}
	}
	return &exitError{exitFailed, fmt.Errorf("run: %s is not a mount of this gateway (`sluice mount TENANT/NAME %s` first)", dir, dir)}
}

// checkShimSocket connects to the gateway's shim socket as this user: a
// socket the program cannot reach (a directory it may not enter, a socket
// file left by a gateway that is gone) would leave the library silently
// sending every call to the kernel. A program run as another user
// (runuser) is checked only as far as this user goes: docs/SHIM.md.
func checkShimSocket(path string) error {
	if path == "" {
		return &exitError{exitFailed, fmt.Errorf("run: the gateway serves no shim socket (its shim door is off)")}
	}
	conn, err := net.DialTimeout("unixpacket", path, 5*time.Second) // the shim door is SOCK_SEQPACKET
	if err != nil {
		return &exitError{exitFailed, fmt.Errorf("run: the gateway's shim socket %s cannot be reached (%w): "+
			"the program would get the kernel's path for every call; with --shim-socket, put it where the program's user can reach it", path, err)}
	}
	conn.Close()
	return nil
}

// preload puts lib first in an LD_PRELOAD list.
func preload(lib, old string) string {
	if old == "" {
		return lib
	}
	return lib + ":" + strings.TrimPrefix(old, ":")
}

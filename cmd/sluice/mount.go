package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/gateway/admin"
)

func mountCommand() *cli.Command {
	return &cli.Command{
		Name:      "mount",
		Usage:     "mount a volume with the gateway's FUSE door (fs volumes as a filesystem, block volumes as one image file)",
		ArgsUsage: "TENANT/NAME DIR",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "read-only", Usage: "mount read-only"},
			&cli.BoolFlag{Name: "nonempty", Usage: "mount on a directory that is not empty (its contents are hidden until the umount)"},
			jsonFlag,
		},
		Action: mountAction,
	}
}

func umountCommand() *cli.Command {
	return &cli.Command{
		Name:      "umount",
		Usage:     "unmount a sluice mount (fails while files on it are open)",
		ArgsUsage: "DIR",
		Flags:     []cli.Flag{jsonFlag},
		Action:    umountAction,
	}
}

func mountAction(c *cli.Context) error {
	if c.NArg() != 2 {
		return usageErr("mount: want TENANT/NAME and DIR")
	}
	ref := c.Args().Get(0)
	if _, _, err := gateway.SplitRef(ref); err != nil {
		return usageErr("mount: %v", err)
	}
	dir, err := filepath.Abs(c.Args().Get(1))
	if err != nil {
		return usageErr("mount: %v", err)
	}
	ctx, cancel := callCtx(c)
	defer cancel()
	if !c.Bool("nonempty") {
		if err := checkEmpty(ctx, apiClient(c), dir); err != nil {
			return err
		}
	}
	m, err := apiClient(c).Mount(ctx, admin.MountRequest{Volume: ref, Dir: dir, ReadOnly: c.Bool("read-only")})
	if err != nil {
		return apiErr(err)
	}
	if c.Bool("json") {
		return printJSON(m)
	}
	fmt.Printf("mounted %s at %s\n", m.Volume, m.Dir)
	return nil
}

// umountAction asks the gateway; when no gateway answers (it died and left
// a dead mount behind), it detaches the mount itself so the directory is
// usable again.
func umountAction(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageErr("umount: want one DIR")
	}
	dir, err := filepath.Abs(c.Args().First())
	if err != nil {
		return usageErr("umount: %v", err)
	}
	ctx, cancel := callCtx(c)
	defer cancel()
	err = apiClient(c).Unmount(ctx, dir)
	if err != nil && deadMount(dir) {
		// The gateway that served it is gone (or it is not this one's).
		if uerr := unix.Unmount(dir, unix.MNT_DETACH); uerr == nil {
			return printDone(c, map[string]any{"dir": dir, "unmounted": true, "dead": true},
				"detached the dead mount at %s (its gateway is gone)", dir)
		}
	}
	// The gateway's message for a busy mount is fusermount's, over several
	// lines; this one says what to do.
	var ae *admin.APIError
	if errors.As(err, &ae) && strings.Contains(strings.ToLower(ae.Message), "busy") {
		return &exitError{exitFailed, fmt.Errorf("umount %s: the mount is busy: a process has a file open on it "+
			"(or its working directory in it); close them and try again (`fuser -m %s` lists them)", dir, dir)}
	}
	if err != nil {
		return apiErr(err)
	}
	return printDone(c, map[string]any{"dir": dir, "unmounted": true}, "unmounted %s", dir)
}

// checkEmpty refuses to mount on a directory that holds anything (the
// mount would hide it) unless it is a mount of this gateway's already,
// which the gateway reports itself. A directory that cannot be read is
// left to the gateway too.
func checkEmpty(ctx context.Context, cl *admin.Client, dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return nil
	}
	names, _ := f.Readdirnames(1)
	f.Close()
	if len(names) == 0 {
		return nil
	}
	ms, err := cl.Mounts(ctx)
	if err != nil {
		return apiErr(err)
	}
	for _, m := range ms {
		if m.Dir == dir {
			return nil
		}
	}
	return &exitError{exitFailed, fmt.Errorf("mount: %s is not empty: the mount would hide what it holds; "+
		"use an empty directory, or give --nonempty to mount over it", dir)}
}

// deadMount reports whether dir is a FUSE mount whose server has gone.
// It asks statfs, which the kernel never answers from a cache (a stat can
// be answered from attributes cached for an hour).
func deadMount(dir string) bool {
	var st unix.Statfs_t
	return errors.Is(unix.Statfs(dir, &st), unix.ENOTCONN)
}

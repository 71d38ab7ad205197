package main

import (
	"context"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/sluice-storage/sluice/gateway"
)

func fsckCommand() *cli.Command {
	return &cli.Command{
		Name:      "fsck",
		Usage:     "check a volume's metadata (entries, link counts, chunk ownership); exits 1 if damaged",
		ArgsUsage: "TENANT/NAME",
		Flags:     []cli.Flag{jsonFlag},
		Action:    fsckAction,
	}
}

func fsckAction(c *cli.Context) error {
	return checkAction(c, "fsck", apiClient(c).Fsck,
		func(r gateway.FsckReport) {
			fmt.Printf("%s (%s): %d inodes (%d directories, %d files), %d entries, %d chunks (%d short, %d patched sectors), %d pending records, %d orphans\n",
				r.Volume, r.Kind, r.Inodes, r.Dirs, r.Files, r.Dentries, r.Chunks, r.Short, r.Patches, r.Pending, r.Orphans)
			for _, p := range r.Problems {
				fmt.Println("  problem:", p)
			}
			if r.Clean() {
				fmt.Println("clean")
			}
		},
		func(r gateway.FsckReport) string { return fmt.Sprintf("%s has %d problems", r.Volume, len(r.Problems)) })
}

// checkAction runs a check of one volume (fsck, scrub) through call and
// prints its report: as JSON with --json, else with text. A report that is
// not clean exits 1 with what damage says.
func checkAction[R interface{ Clean() bool }](c *cli.Context, what string,
	call func(context.Context, string) (R, error), text func(R), damage func(R) string) error {
	ref, err := volumeRef(c, what)
	if err != nil {
		return err
	}
	ctx, cancel := callCtx(c)
	defer cancel()
	r, err := call(ctx, ref)
	if err != nil {
		return apiErr(err)
	}
	if c.Bool("json") {
		if err := printJSON(r); err != nil {
			return err
		}
	} else {
		text(r)
	}
	if !r.Clean() {
		return &exitError{exitFailed, fmt.Errorf("%s: %s", what, damage(r))}
	}
	return nil
}

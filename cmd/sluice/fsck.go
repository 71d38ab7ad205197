package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
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
	ref, err := volumeRef(c, "fsck")
	if err != nil {
		return err
	}
	ctx, cancel := callCtx(c)
	defer cancel()
	r, err := apiClient(c).Fsck(ctx, ref)
	if err != nil {
		return apiErr(err)
	}
	if c.Bool("json") {
		if err := printJSON(r); err != nil {
			return err
		}
	} else {
		fmt.Printf("%s (%s): %d inodes (%d directories, %d files), %d entries, %d chunks, %d orphans\n",
			r.Volume, r.Kind, r.Inodes, r.Dirs, r.Files, r.Dentries, r.Chunks, r.Orphans)
		for _, p := range r.Problems {
			fmt.Println("  problem:", p)
		}
	}
	if !r.Clean() {
		return &exitError{exitFailed, fmt.Errorf("fsck: %s has %d problems", r.Volume, len(r.Problems))}
	}
	if !c.Bool("json") {
		fmt.Println("clean")
	}
	return nil
}

package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

func scrubCommand() *cli.Command {
	return &cli.Command{
		Name:      "scrub",
		Usage:     "read and verify every checksummed, compressed or encrypted chunk of a volume; exits 1 if any is bad",
		ArgsUsage: "TENANT/NAME",
		Flags:     []cli.Flag{jsonFlag},
		Action:    scrubAction,
	}
}

func scrubAction(c *cli.Context) error {
	ref, err := volumeRef(c, "scrub")
	if err != nil {
		return err
	}
	ctx, cancel := callCtx(c)
	defer cancel()
	r, err := apiClient(c).Scrub(ctx, ref)
	if err != nil {
		return apiErr(err)
	}
	if c.Bool("json") {
		if err := printJSON(r); err != nil {
			return err
		}
	} else {
		fmt.Printf("%s: %d chunks, %d transformed verified (%d with a checksum), %d bad\n",
			r.Volume, r.Chunks, r.Transformed, r.Checksummed, len(r.Bad))
		for _, b := range r.Bad {
			fmt.Printf("  bad: inode %d chunk %d (offset %d, device offset %d): %s\n", b.Inode, b.Chunk, b.Offset, b.DeviceOffset, b.Error)
		}
	}
	if !r.Clean() {
		return &exitError{exitFailed, fmt.Errorf("scrub: %s has %d bad chunks", r.Volume, len(r.Bad))}
	}
	return nil
}

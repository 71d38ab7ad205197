package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/sluice-storage/sluice/gateway"
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
	return checkAction(c, "scrub", apiClient(c).Scrub,
		func(r gateway.ScrubReport) {
			fmt.Printf("%s: %d chunks, %d transformed verified (%d with a checksum), %d short read, %d bad\n",
				r.Volume, r.Chunks, r.Transformed, r.Checksummed, r.Short, len(r.Bad))
			for _, b := range r.Bad {
				fmt.Printf("  bad: inode %d chunk %d (offset %d, device offset %d): %s\n", b.Inode, b.Chunk, b.Offset, b.DeviceOffset, b.Error)
			}
		},
		func(r gateway.ScrubReport) string { return fmt.Sprintf("%s has %d bad chunks", r.Volume, len(r.Bad)) })
}

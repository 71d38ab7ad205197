package main

import (
	"fmt"

	"github.com/urfave/cli/v2"
)

func attachCommand() *cli.Command {
	return &cli.Command{
		Name:      "attach",
		Usage:     "attach a block volume as a block device of this host; prints the device",
		ArgsUsage: "TENANT/NAME",
		Flags:     []cli.Flag{jsonFlag},
		Action:    attachAction,
	}
}

func detachCommand() *cli.Command {
	return &cli.Command{
		Name:      "detach",
		Usage:     "detach a device made by attach (refused while it is mounted or in use)",
		ArgsUsage: "DEVICE",
		Flags:     []cli.Flag{jsonFlag},
		Action:    detachAction,
	}
}

func attachAction(c *cli.Context) error {
	ref, err := volumeRef(c, "attach")
	if err != nil {
		return err
	}
	ctx, cancel := callCtx(c)
	defer cancel()
	at, err := apiClient(c).Attach(ctx, ref)
	if err != nil {
		return apiErr(err)
	}
	if c.Bool("json") {
		return printJSON(at)
	}
	fmt.Println(at.Device)
	return nil
}

func detachAction(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageErr("detach: want one DEVICE")
	}
	dev := c.Args().First()
	ctx, cancel := callCtx(c)
	defer cancel()
	if err := apiClient(c).Detach(ctx, dev); err != nil {
		return apiErr(err)
	}
	return printDone(c, map[string]any{"device": dev, "detached": true}, "detached %s", dev)
}

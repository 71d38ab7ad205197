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
		Subcommands: []*cli.Command{
			{Name: "list", Usage: "list the attached devices (volume, device, method)", Flags: []cli.Flag{jsonFlag}, Action: attachList},
		},
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

func attachList(c *cli.Context) error {
	ctx, cancel := callCtx(c)
	defer cancel()
	ats, err := apiClient(c).Attachments(ctx)
	if err != nil {
		return apiErr(err)
	}
	if c.Bool("json") {
		return printJSON(ats)
	}
	rows := make([][]string, 0, len(ats))
	for _, at := range ats {
		rows = append(rows, []string{at.Volume, at.Device, at.Method})
	}
	table([]string{"VOLUME", "DEVICE", "METHOD"}, rows)
	return nil
}

package main

import (
	"fmt"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/sluice-storage/sluice/gateway/admin"
)

func virtioCommand() *cli.Command {
	return &cli.Command{
		Name:   "virtio",
		Usage:  "serve block volumes as vhost-user-blk devices (for QEMU and the Go initiator)",
		Action: unknownSubcommand,
		Subcommands: []*cli.Command{
			{
				Name: "export", Usage: "serve a block volume on a vhost-user socket; prints the socket",
				ArgsUsage: "TENANT/NAME",
				Flags:     []cli.Flag{&cli.StringFlag{Name: "socket", Usage: "socket path (default: DATA-DIR/virtio/TENANT.NAME.sock)"}, jsonFlag},
				Action:    virtioExport,
			},
			{Name: "unexport", Usage: "stop serving a volume (front-ends are disconnected)", ArgsUsage: "TENANT/NAME", Flags: []cli.Flag{jsonFlag}, Action: virtioUnexport},
			{Name: "list", Usage: "list virtio exports", Flags: []cli.Flag{jsonFlag}, Action: virtioList},
		},
	}
}

func virtioExport(c *cli.Context) error {
	ref, err := volumeRef(c, "virtio export")
	if err != nil {
		return err
	}
	socket := c.String("socket")
	if socket != "" {
		// The gateway runs elsewhere: a relative path is the caller's.
		if socket, err = filepath.Abs(socket); err != nil {
			return usageErr("--socket: %v", err)
		}
	}
	ctx, cancel := callCtx(c)
	defer cancel()
	x, err := apiClient(c).VirtioExport(ctx, admin.VirtioRequest{Volume: ref, Socket: socket})
	if err != nil {
		return apiErr(err)
	}
	if c.Bool("json") {
		return printJSON(x)
	}
	fmt.Println(x.Socket)
	return nil
}

func virtioUnexport(c *cli.Context) error {
	ref, err := volumeRef(c, "virtio unexport")
	if err != nil {
		return err
	}
	ctx, cancel := callCtx(c)
	defer cancel()
	if err := apiClient(c).VirtioUnexport(ctx, ref); err != nil {
		return apiErr(err)
	}
	return printDone(c, map[string]any{"volume": ref, "unexported": true}, "unexported %s", ref)
}

func virtioList(c *cli.Context) error {
	ctx, cancel := callCtx(c)
	defer cancel()
	xs, err := apiClient(c).VirtioExports(ctx)
	if err != nil {
		return apiErr(err)
	}
	if c.Bool("json") {
		return printJSON(xs)
	}
	rows := make([][]string, 0, len(xs))
	for _, x := range xs {
		rows = append(rows, []string{x.Volume, x.Socket})
	}
	table([]string{"VOLUME", "SOCKET"}, rows)
	return nil
}

package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/sluice-storage/sluice/gateway/admin"
)

func volumeCommand() *cli.Command {
	return &cli.Command{
		Name:   "volume",
		Usage:  "create, list, inspect, resize and delete volumes",
		Action: unknownSubcommand,
		Subcommands: []*cli.Command{
			{
				Name:      "create",
				Usage:     "create a volume",
				ArgsUsage: "NAME (or TENANT/NAME)",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "tenant", Usage: "owning tenant"},
					&cli.StringFlag{Name: "size", Usage: "size, e.g. 10G or 512MiB (required)"},
					&cli.StringFlag{Name: "kind", Value: "block", Usage: "block (a disk: NBD, attach, image mount) or fs (a filesystem: mount)"},
					&cli.StringFlag{Name: "chunk-size", Value: "64K", Usage: "allocation unit, a power of two from 4K to 4M"},
					&cli.BoolFlag{Name: "read-only", Usage: "refuse writes"},
					&cli.StringSliceFlag{Name: "label", Usage: "KEY=VALUE, repeatable"},
					jsonFlag,
				},
				Action: volumeCreate,
			},
			{Name: "list", Usage: "list volumes", Flags: []cli.Flag{jsonFlag}, Action: volumeList},
			{Name: "info", Usage: "show one volume", ArgsUsage: "TENANT/NAME", Flags: []cli.Flag{jsonFlag}, Action: volumeInfo},
			{
				Name: "resize", Usage: "grow a volume", ArgsUsage: "TENANT/NAME",
				Flags:  []cli.Flag{&cli.StringFlag{Name: "size", Usage: "new size; volumes only grow (required)"}, jsonFlag},
				Action: volumeResize,
			},
			{
				Name: "delete", Usage: "delete a volume and return its space (refused while it is mounted, attached or exported)",
				ArgsUsage: "TENANT/NAME", Flags: []cli.Flag{jsonFlag}, Action: volumeDelete,
			},
		},
	}
}

func volumeCreate(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageErr("volume create: want exactly one NAME argument")
	}
	tenant, name := c.String("tenant"), c.Args().First()
	if t, n, ok := strings.Cut(name, "/"); ok {
		if tenant != "" && tenant != t {
			return usageErr("volume create: --tenant %q disagrees with %q", tenant, name)
		}
		tenant, name = t, n
	}
	if tenant == "" {
		return usageErr("volume create: --tenant is required")
	}
	if err := requireFlag(c, "size"); err != nil {
		return err
	}
	size, err := parseSize(c.String("size"))
	if err != nil {
		return usageErr("--size: %v", err)
	}
	chunk, err := parseSize(c.String("chunk-size"))
	if err != nil {
		return usageErr("--chunk-size: %v", err)
	}
	labels := map[string]string{}
	for _, l := range c.StringSlice("label") {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return usageErr("--label %q: want KEY=VALUE", l)
		}
		labels[k] = v
	}
	ctx, cancel := callCtx(c)
	defer cancel()
	v, err := apiClient(c).CreateVolume(ctx, admin.CreateRequest{
		Tenant: tenant, Name: name, Kind: c.String("kind"), Size: size,
		ChunkSize: chunk, ReadOnly: c.Bool("read-only"), Labels: labels,
	})
	if err != nil {
		return apiErr(err)
	}
	return printVolumeChange(c, v, fmt.Sprintf("created %s (%s, %s)", v.Ref, v.Kind, formatSize(v.Size)))
}

// volumeChange is what create and resize print with --json: the volume
// and the warnings they also print on stderr (an array, maybe empty).
type volumeChange struct {
	admin.Volume
	Warnings []string `json:"warnings"`
}

func printVolumeChange(c *cli.Context, v admin.Volume, line string) error {
	warnings := overcommitWarnings(c)
	if c.Bool("json") {
		if err := printJSON(volumeChange{Volume: v, Warnings: warnings}); err != nil {
			return err
		}
	} else {
		fmt.Println(line)
	}
	for _, w := range warnings {
		fmt.Fprintln(os.Stderr, "sluice: warning:", w)
	}
	return nil
}

// overcommitWarnings warns when the volumes' sizes add up to more than the
// pool holds. Thin provisioning allows it, but writes fail once the pool
// is full. No warning when the pool's numbers cannot be had.
func overcommitWarnings(c *cli.Context) []string {
	ctx, cancel := callCtx(c)
	defer cancel()
	st, err := apiClient(c).Stats(ctx)
	if err != nil || st.Pool.Provision <= st.Pool.Size {
		return []string{}
	}
	return []string{fmt.Sprintf("the pool is overcommitted: its %d volumes provision %s, the pool holds %s; "+
		"writes fail with \"no space\" once it is full", st.Pool.Volumes, exactSize(st.Pool.Provision), exactSize(st.Pool.Size))}
}

func volumeRows(vs []admin.Volume) [][]string {
	rows := make([][]string, 0, len(vs))
	for _, v := range vs {
		mode := "rw"
		if v.ReadOnly {
			mode = "ro"
		}
		rows = append(rows, []string{v.Ref, v.Kind, formatSize(v.Size), formatSize(v.Allocated), formatSize(v.ChunkSize), mode})
	}
	return rows
}

var volumeHeader = []string{"VOLUME", "KIND", "SIZE", "ALLOCATED", "CHUNK", "MODE"}

func volumeList(c *cli.Context) error {
	ctx, cancel := callCtx(c)
	defer cancel()
	vs, err := apiClient(c).Volumes(ctx)
	if err != nil {
		return apiErr(err)
	}
	if c.Bool("json") {
		return printJSON(vs)
	}
	table(volumeHeader, volumeRows(vs))
	return nil
}

func volumeInfo(c *cli.Context) error {
	ref, err := volumeRef(c, "volume info")
	if err != nil {
		return err
	}
	ctx, cancel := callCtx(c)
	defer cancel()
	v, err := apiClient(c).Volume(ctx, ref)
	if err != nil {
		return apiErr(err)
	}
	if c.Bool("json") {
		return printJSON(v)
	}
	table(volumeHeader, volumeRows([]admin.Volume{v}))
	return nil
}

func volumeResize(c *cli.Context) error {
	ref, err := volumeRef(c, "volume resize")
	if err != nil {
		return err
	}
	if err := requireFlag(c, "size"); err != nil {
		return err
	}
	size, err := parseSize(c.String("size"))
	if err != nil {
		return usageErr("--size: %v", err)
	}
	ctx, cancel := callCtx(c)
	defer cancel()
	v, err := apiClient(c).ResizeVolume(ctx, ref, size)
	if err != nil {
		return apiErr(err)
	}
	return printVolumeChange(c, v, fmt.Sprintf("resized %s to %s", v.Ref, formatSize(v.Size)))
}

func volumeDelete(c *cli.Context) error {
	ref, err := volumeRef(c, "volume delete")
	if err != nil {
		return err
	}
	ctx, cancel := callCtx(c)
	defer cancel()
	if err := apiClient(c).DeleteVolume(ctx, ref); err != nil {
		return apiErr(err)
	}
	return printDone(c, map[string]any{"volume": ref, "deleted": true}, "deleted %s", ref)
}

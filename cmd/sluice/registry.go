package main

import (
	"sort"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/sluice-storage/sluice/gateway"
)

func registryCommand() *cli.Command {
	return &cli.Command{
		Name:   "registry",
		Usage:  "keywords policies may use: groups of tenants and volumes, file-type sets",
		Action: unknownSubcommand,
		Description: `Groups name tenants and volumes for FOR GROUP policies; file-type sets name
globs for WHERE file_type = NAME. Changing an entry recompiles every policy;
a change that would break one is refused.`,
		Subcommands: []*cli.Command{
			{Name: "list", Usage: "list filters, metrics, groups and file-type sets", Flags: []cli.Flag{jsonFlag}, Action: registryList},
			{
				Name: "set", Usage: "define or replace a group (members TENANT or TENANT/VOLUME) or a file-type set (globs)",
				ArgsUsage: "group NAME MEMBER... | file_type NAME GLOB...", Flags: []cli.Flag{jsonFlag}, Action: registrySet,
			},
			{Name: "delete", Usage: "remove a group or a file-type set", ArgsUsage: "group|file_type NAME", Flags: []cli.Flag{jsonFlag}, Action: registryDelete},
		},
	}
}

func registryKindArg(c *cli.Context, what string) (string, error) {
	kind := strings.ReplaceAll(c.Args().First(), "-", "_")
	if kind != gateway.RegistryGroup && kind != gateway.RegistryFileType {
		return "", usageErr("registry %s: kind %q: want group or file_type", what, c.Args().First())
	}
	return kind, nil
}

func registrySet(c *cli.Context) error {
	if c.NArg() < 3 {
		return usageErr("registry set: want group NAME MEMBER... or file_type NAME GLOB...")
	}
	kind, err := registryKindArg(c, "set")
	if err != nil {
		return err
	}
	args := c.Args().Slice()
	ctx, cancel := callCtx(c)
	defer cancel()
	if err := apiClient(c).SetRegistryEntry(ctx, kind, args[1], args[2:]); err != nil {
		return apiErr(err)
	}
	name := strings.ToLower(args[1])
	return printDone(c, map[string]any{"kind": kind, "name": name, "values": args[2:]},
		"%s %s: %s", kind, name, strings.Join(args[2:], " "))
}

func registryDelete(c *cli.Context) error {
	if c.NArg() != 2 {
		return usageErr("registry delete: want group NAME or file_type NAME")
	}
	kind, err := registryKindArg(c, "delete")
	if err != nil {
		return err
	}
	ctx, cancel := callCtx(c)
	defer cancel()
	if err := apiClient(c).DeleteRegistryEntry(ctx, kind, c.Args().Get(1)); err != nil {
		return apiErr(err)
	}
	return printDone(c, map[string]any{"kind": kind, "name": c.Args().Get(1), "deleted": true},
		"deleted %s %s", kind, c.Args().Get(1))
}

func registryList(c *cli.Context) error {
	ctx, cancel := callCtx(c)
	defer cancel()
	reg, err := apiClient(c).Registry(ctx)
	if err != nil {
		return apiErr(err)
	}
	if c.Bool("json") {
		return printJSON(reg)
	}
	var rows [][]string
	for _, n := range sortedNames(reg.Filters) {
		rows = append(rows, []string{"filter", n, reg.Filters[n].Kind.String()})
	}
	for _, n := range sortedNames(reg.Metrics) {
		rows = append(rows, []string{"metric", n, reg.Metrics[n].Type.String()})
	}
	for _, n := range sortedNames(reg.Groups) {
		rows = append(rows, []string{"group", n, strings.Join(reg.Groups[n], " ")})
	}
	for _, n := range sortedNames(reg.FileTypes) {
		rows = append(rows, []string{"file_type", n, strings.Join(reg.FileTypes[n], " ")})
	}
	table([]string{"KIND", "NAME", "VALUE"}, rows)
	return nil
}

func sortedNames[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

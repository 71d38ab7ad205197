package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/sluice-storage/sluice/gateway/filter"
)

func filterCommand() *cli.Command {
	return &cli.Command{
		Name:   "filter",
		Usage:  "the filters policies can set",
		Action: unknownSubcommand,
		Subcommands: []*cli.Command{
			{Name: "list", Usage: "list filters with their parameters", Flags: []cli.Flag{jsonFlag}, Action: filterList},
		},
	}
}

func filterList(c *cli.Context) error {
	ctx, cancel := callCtx(c)
	defer cancel()
	specs, err := apiClient(c).Filters(ctx)
	if err != nil {
		return apiErr(err)
	}
	if c.Bool("json") {
		return printJSON(specs)
	}
	rows := make([][]string, 0, len(specs))
	for _, s := range specs {
		params := make([]string, 0, len(s.Params))
		for _, p := range s.Params {
			params = append(params, describeParam(p))
		}
		if len(params) == 0 {
			params = append(params, "-")
		}
		rows = append(rows, []string{s.Name, s.Kind.String(), strings.Join(params, ", "), s.Description})
	}
	table([]string{"NAME", "KIND", "PARAMETERS", "DESCRIPTION"}, rows)
	return nil
}

// describeParam is "level=1..22 (3)", "algo=zstd|lz4 (zstd)", "max=bandwidth".
func describeParam(p filter.ParamSpec) string {
	var b strings.Builder
	b.WriteString(p.Name + "=")
	switch {
	case len(p.Allowed) > 0:
		b.WriteString(strings.Join(p.Allowed, "|"))
	case p.Max > 0 && p.Max < 1<<40:
		fmt.Fprintf(&b, "%s..%s", filter.FormatQuantity(p.Type, p.Min), filter.FormatQuantity(p.Type, p.Max))
	default:
		b.WriteString(p.Type.String())
	}
	if p.Default != "" {
		def := p.Default
		if p.Type.Numeric() {
			var n int64
			fmt.Sscan(def, &n)
			def = filter.FormatQuantity(p.Type, n)
		}
		fmt.Fprintf(&b, " (%s)", def)
	}
	return b.String()
}

package main

import (
	"errors"
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/sluice-storage/sluice/controller"
)

// controllerFlags are the flags of every command that talks to a
// controller. They sit on each leaf command (not its parent) so that they
// may follow positional arguments.
func controllerFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "controller", Value: controller.DefaultURL, EnvVars: []string{"SLUICE_CONTROLLER"}, Usage: "the controller's URL"},
		&cli.StringFlag{Name: "token-file", EnvVars: []string{"SLUICE_CONTROLLER_TOKEN_FILE"}, Usage: "file holding the controller's bearer token"},
	}
}

// controllerClient returns a client for --controller (and --token-file).
func controllerClient(c *cli.Context) (*controller.Client, error) {
	var token string
	if f := c.String("token-file"); f != "" {
		var err error
		if token, err = controller.ReadTokenFile(f); err != nil {
			return nil, usageErr("--token-file: %v", err)
		}
	}
	cl, err := controller.NewClient(c.String("controller"), token)
	if err != nil {
		return nil, usageErr("--controller: %v", err)
	}
	return cl, nil
}

// controllerErr turns a controller client error into the CLI's exit codes:
// a refusal is 1, no answer is 3.
func controllerErr(cl *controller.Client, err error) error {
	if err == nil {
		return nil
	}
	var ae *controller.APIError
	if errors.As(err, &ae) {
		return &exitError{exitFailed, ae}
	}
	return &exitError{exitNoGateway, fmt.Errorf("%w (start one with `sluice controller`, or set --controller / SLUICE_CONTROLLER)", err)}
}

// sloFlag is one resource's minimum or maximum flag.
type sloFlag struct {
	name  string
	res   controller.Resource
	isMax bool
}

func sloFlags() []sloFlag {
	var out []sloFlag
	for _, r := range []struct {
		flag string
		res  controller.Resource
	}{{"read-bw", controller.ReadBW}, {"write-bw", controller.WriteBW}, {"read-iops", controller.ReadIOPS}, {"write-iops", controller.WriteIOPS}} {
		out = append(out, sloFlag{"min-" + r.flag, r.res, false}, sloFlag{"max-" + r.flag, r.res, true})
	}
	return out
}

func sloCommand() *cli.Command {
	setFlags := []cli.Flag{jsonFlag}
	for _, f := range sloFlags() {
		kind, unit := "minimum", "bytes/s, e.g. 30MiB or 30MiB/s"
		if f.isMax {
			kind = "maximum"
		}
		if f.res == controller.ReadIOPS || f.res == controller.WriteIOPS {
			unit = "8 KiB-normalised IO/s"
		}
		setFlags = append(setFlags, &cli.StringFlag{Name: f.name, Usage: fmt.Sprintf("cluster-wide %s, %s", kind, unit)})
	}
	return &cli.Command{
		Name:   "slo",
		Usage:  "tenant service-level objectives, cluster-wide (held by the controller)",
		Action: unknownSubcommand,
		Description: `An SLO gives a tenant a minimum and/or a maximum of read and write bandwidth
and IOPS, summed over every gateway. The controller gives each tenant its
minimum first (where it has work), shares the rest equally among tenants that
want more, and never gives more than a maximum. A minimum the cluster cannot
hold is reported by ` + "`sluice cluster status`" + `. IOPS count 8 KiB units: a 64 KiB IO
is 8.`,
		Subcommands: []*cli.Command{
			{
				Name:      "set",
				Usage:     "create or replace a tenant's SLO (flags not given are cleared)",
				ArgsUsage: "TENANT",
				Flags:     append(setFlags, controllerFlags()...),
				Action:    sloSet,
			},
			{Name: "list", Usage: "list SLOs", Flags: append([]cli.Flag{jsonFlag}, controllerFlags()...), Action: sloList},
			{Name: "delete", Usage: "delete a tenant's SLO (the tenant becomes best effort)", ArgsUsage: "TENANT", Flags: controllerFlags(), Action: sloDelete},
		},
	}
}

func sloSet(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageErr("slo set: want exactly one TENANT argument")
	}
	slo := controller.SLO{Tenant: c.Args().First()}
	if !controller.ValidName(slo.Tenant) {
		return usageErr("slo set: tenant %q: use 1-63 letters, digits, '.', '_' or '-'", slo.Tenant)
	}
	given := false
	for _, f := range sloFlags() {
		parse := parseRate
		if f.res == controller.ReadIOPS || f.res == controller.WriteIOPS {
			parse = parseCount
		}
		v, err := positive(c, f.name, parse)
		if err != nil {
			return err
		}
		if f.isMax {
			slo.Max.Set(f.res, v)
		} else {
			slo.Min.Set(f.res, v)
		}
		given = given || c.IsSet(f.name)
	}
	if !given {
		return usageErr("slo set: give at least one --min-* or --max-* flag (see `sluice slo set --help`)")
	}
	if err := slo.Validate(); err != nil {
		return usageErr("slo set: %v", err)
	}
	cl, err := controllerClient(c)
	if err != nil {
		return err
	}
	ctx, cancel := callCtx(c)
	defer cancel()
	out, err := cl.SetSLO(ctx, slo)
	if err != nil {
		return controllerErr(cl, err)
	}
	if c.Bool("json") {
		return printJSON(out)
	}
	fmt.Printf("tenant %s: %s\n", out.Tenant, describeSLO(out))
	return nil
}

func sloList(c *cli.Context) error {
	if c.NArg() != 0 {
		return usageErr("slo list: unexpected argument %q", c.Args().First())
	}
	cl, err := controllerClient(c)
	if err != nil {
		return err
	}
	ctx, cancel := callCtx(c)
	defer cancel()
	slos, err := cl.SLOs(ctx)
	if err != nil {
		return controllerErr(cl, err)
	}
	if c.Bool("json") {
		return printJSON(slos)
	}
	rows := make([][]string, 0, len(slos))
	for _, s := range slos {
		row := []string{s.Tenant}
		for r := controller.Resource(0); r < controller.NumResources; r++ {
			row = append(row, sloRange(s, r))
		}
		rows = append(rows, row)
	}
	table([]string{"TENANT", "READ BW", "WRITE BW", "READ IOPS", "WRITE IOPS"}, rows)
	return nil
}

func sloDelete(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageErr("slo delete: want exactly one TENANT argument")
	}
	cl, err := controllerClient(c)
	if err != nil {
		return err
	}
	ctx, cancel := callCtx(c)
	defer cancel()
	if err := cl.DeleteSLO(ctx, c.Args().First()); err != nil {
		return controllerErr(cl, err)
	}
	fmt.Printf("deleted the SLO of tenant %s\n", c.Args().First())
	return nil
}

// formatRateOf prints a rate of resource r: bytes/s as a size, IOPS as a
// number.
func formatRateOf(r controller.Resource, v float64) string {
	if r == controller.ReadIOPS || r == controller.WriteIOPS {
		return fmt.Sprintf("%.0f", v)
	}
	return formatSize(int64(v)) + "/s"
}

// sloRange prints one resource of an SLO: "≥30MiB/s", "≤1GiB/s",
// "30MiB/s-1GiB/s" or "-".
func sloRange(s controller.SLO, r controller.Resource) string {
	mn, mx := s.Min.Get(r), s.Max.Get(r)
	switch {
	case mn > 0 && mx > 0:
		return formatRateOf(r, mn) + "-" + formatRateOf(r, mx)
	case mn > 0:
		return ">=" + formatRateOf(r, mn)
	case mx > 0:
		return "<=" + formatRateOf(r, mx)
	}
	return "-"
}

func describeSLO(s controller.SLO) string {
	var parts []string
	for r := controller.Resource(0); r < controller.NumResources; r++ {
		if v := sloRange(s, r); v != "-" {
			parts = append(parts, strings.ReplaceAll(r.String(), "_", " ")+" "+v)
		}
	}
	if len(parts) == 0 {
		return "no minimum, no maximum"
	}
	return strings.Join(parts, ", ")
}

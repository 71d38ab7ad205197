package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sluice-storage/sluice/controller"
	"github.com/sluice-storage/sluice/gateway/admin"
	"github.com/sluice-storage/sluice/policy"
)

// controllerFlags are the flags of every command that talks to a
// controller. They sit on each leaf command (not its parent) so that they
// may follow positional arguments.
func controllerFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "controller", Value: controller.DefaultURL, EnvVars: []string{"SLUICE_CONTROLLER"}, Usage: "the controller's URL (a replicated controller: some or all replicas' URLs, comma-separated; calls go to the leader)"},
		&cli.StringFlag{Name: "token-file", EnvVars: []string{"SLUICE_CONTROLLER_TOKEN_FILE"}, Usage: "file holding the controller's bearer token (default: ./sluice-controller/token if readable)"},
	}
}

// controllerClient returns a client for --controller (and --token-file).
// Without --controller (or SLUICE_CONTROLLER) it is the controller the
// gateway at --api-socket joined, if that gateway answers and joined one,
// and otherwise the default URL.
func controllerClient(c *cli.Context) (*controller.Client, error) {
	token, err := controller.ClientToken(c.String("token-file"))
	if err != nil {
		return nil, usageErr("--token-file: %v", err)
	}
	url := c.String("controller")
	if !c.IsSet("controller") {
		if st, ok := joinedController(c); ok {
			url = st.URL
		}
	}
	cl, err := controller.NewClient(url, token)
	if err != nil {
		return nil, usageErr("--controller: %v", err)
	}
	return cl, nil
}

// joinedController asks the gateway at --api-socket which controller it
// follows; false if it does not answer quickly or follows none.
func joinedController(c *cli.Context) (admin.ControllerStatus, bool) {
	ctx, cancel := context.WithTimeout(c.Context, 2*time.Second)
	defer cancel()
	st, err := apiClient(c).Controller(ctx)
	return st, err == nil && st.Joined && st.URL != ""
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
			{
				Name:      "apply",
				Usage:     "create or replace SLOs written as a policy: 'FOR TENANT gold DO SET bandwidth WITH read_min=30MB/s'",
				ArgsUsage: "'FOR TENANT t DO SET bandwidth|iops WITH read_min=..., ...'",
				Description: `The policy DSL's bandwidth and iops filters, for a TENANT (or a GROUP of
whole tenants, resolved with the registry of the gateway at --api-socket), are
the tenant's cluster-wide SLO: read_min, read_max, write_min and write_max per
filter (bandwidth in bytes/s, iops in 8 KiB-normalised IO/s). As with ` + "`slo set`" + `,
the SLO is replaced as a whole. The controller is the one the gateway joined
unless --controller says otherwise.`,
				Flags:  append([]cli.Flag{jsonFlag}, controllerFlags()...),
				Action: sloApply,
			},
			{Name: "list", Usage: "list SLOs", Flags: append([]cli.Flag{jsonFlag}, controllerFlags()...), Action: sloList},
			{Name: "delete", Usage: "delete a tenant's SLO (the tenant becomes best effort)", ArgsUsage: "TENANT", Flags: append([]cli.Flag{jsonFlag}, controllerFlags()...), Action: sloDelete},
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
	return printDone(c, map[string]any{"tenant": c.Args().First(), "deleted": true}, "deleted the SLO of tenant %s", c.Args().First())
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

func sloApply(c *cli.Context) error {
	if c.NArg() == 0 {
		return usageErr("slo apply: give the policy, e.g. 'FOR TENANT gold DO SET bandwidth WITH read_min=30MB/s'")
	}
	text := strings.Join(c.Args().Slice(), " ")
	p, err := policy.Parse(text)
	if err != nil {
		return usageErr("slo apply: %v", err)
	}
	reg := policy.NewRegistry()
	if p.Target.Kind == policy.TargetGroup {
		ctx, cancel := context.WithTimeout(c.Context, 5*time.Second)
		r, err := apiClient(c).Registry(ctx)
		cancel()
		if err != nil {
			return apiErr(fmt.Errorf("slo apply: a GROUP target needs the gateway's registry: %w", err))
		}
		reg = &r
	}
	rule, err := policy.CompilePolicy(p, reg)
	if err != nil {
		return usageErr("slo apply: %v", err)
	}
	slos, err := slosFromRule(rule)
	if err != nil {
		return usageErr("slo apply: %v", err)
	}
	cl, err := controllerClient(c)
	if err != nil {
		return err
	}
	ctx, cancel := callCtx(c)
	defer cancel()
	out := make([]controller.SLO, 0, len(slos))
	for _, s := range slos {
		got, err := cl.SetSLO(ctx, s)
		if err != nil {
			return controllerErr(cl, err)
		}
		out = append(out, got)
	}
	if c.Bool("json") {
		return printJSON(out)
	}
	for _, s := range out {
		fmt.Printf("tenant %s: %s (controller %s)\n", s.Tenant, describeSLO(s), cl.URL())
	}
	return nil
}

// slosFromRule turns a compiled policy into SLOs: a static policy for a
// TENANT, or a GROUP whose members are whole tenants, whose actions are
// only bandwidth and iops with per-direction parameters.
func slosFromRule(r policy.Rule) ([]controller.SLO, error) {
	if r.When != nil || len(r.Where) > 0 {
		return nil, fmt.Errorf("an SLO holds all the time for all of a tenant's IO: no WHERE or WHEN")
	}
	var tenants []string
	switch r.Target.Kind {
	case policy.TargetTenant:
		tenants = []string{r.Target.Tenant}
	case policy.TargetGroup:
		for _, m := range r.Target.Members {
			if strings.Contains(m, "/") {
				return nil, fmt.Errorf("group %s has the volume %s: SLOs are per tenant, cluster-wide", r.Target.Group, m)
			}
			tenants = append(tenants, m)
		}
	default:
		return nil, fmt.Errorf("SLOs are per tenant, cluster-wide: use FOR TENANT or FOR GROUP, not FOR %s", strings.ToUpper(string(r.Target.Kind)))
	}
	var lo, hi controller.Rates
	for _, a := range r.Actions {
		var read, write controller.Resource
		switch a.Filter {
		case "bandwidth":
			read, write = controller.ReadBW, controller.WriteBW
		case "iops":
			read, write = controller.ReadIOPS, controller.WriteIOPS
		default:
			return nil, fmt.Errorf("filter %s is not an SLO (only bandwidth and iops are); add it with `sluice policy add`", a.Filter)
		}
		for k, v := range a.Params {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return nil, fmt.Errorf("%s %s=%q: not a number", a.Filter, k, v)
			}
			switch k {
			case "read_min":
				lo.Set(read, n)
			case "write_min":
				lo.Set(write, n)
			case "read_max":
				hi.Set(read, n)
			case "write_max":
				hi.Set(write, n)
			default:
				return nil, fmt.Errorf("%s %s: the controller shares reads and writes apart; use read_%s and write_%s", a.Filter, k, k, k)
			}
		}
	}
	out := make([]controller.SLO, 0, len(tenants))
	for _, t := range tenants {
		s := controller.SLO{Tenant: t, Min: lo, Max: hi}
		if err := s.Validate(); err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

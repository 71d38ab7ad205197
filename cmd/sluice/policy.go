package main

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/policy"
)

func policyCommand() *cli.Command {
	return &cli.Command{
		Name:   "policy",
		Usage:  "filter policies: compression, encryption, checksums, caching per tenant, volume or file",
		Action: unknownSubcommand,
		Description: `A policy says which filters the data of a target goes through:

  FOR VOLUME acme/db DO SET compression WITH algo=zstd, SET encryption
  FOR TENANT acme WHERE file_type = DOCS DO SET compression
  FOR VOLUME acme/db WHEN read_iops > 5000 DO SET cache WITH size=64MiB TRANSIENT

The most specific target wins (FILE over VOLUME over TENANT over GROUP); the
SETs of one policy run in written order on write and are undone in reverse
on read. Chunks remember how they were written, so changing a policy never
makes old data unreadable. WHEN policies are switched on by an automation
controller when their condition holds (TRANSIENT: only while it holds).
See ` + "`sluice filter list`" + ` for the filters and their parameters.`,
		Subcommands: []*cli.Command{
			{
				Name: "add", Usage: "compile and add a policy; prints the compiled rule", ArgsUsage: "'FOR ...'",
				Flags: []cli.Flag{jsonFlag}, Action: policyAdd,
			},
			{Name: "list", Usage: "list policies and whether each is in force", Flags: []cli.Flag{jsonFlag}, Action: policyList},
			{Name: "delete", Usage: "delete a policy (data written under it stays readable)", ArgsUsage: "ID", Flags: []cli.Flag{jsonFlag}, Action: policyDelete},
		},
	}
}

func policyAdd(c *cli.Context) error {
	if c.NArg() == 0 {
		return usageErr("policy add: give the policy, e.g. 'FOR VOLUME acme/db DO SET compression'")
	}
	text := strings.Join(c.Args().Slice(), " ")
	// Syntax errors are the caller's: report them here, exit 2.
	if _, err := policy.Parse(text); err != nil {
		return usageErr("policy add: %v", err)
	}
	ctx, cancel := callCtx(c)
	defer cancel()
	p, err := apiClient(c).AddPolicy(ctx, text)
	if err != nil {
		return apiErr(err)
	}
	if c.Bool("json") {
		return printJSON(p)
	}
	fmt.Printf("policy %d: %s\n", p.ID, p.Compiled)
	fmt.Printf("  target %s, %s, %s\n", p.Target, p.Kind, stateOf(p))
	return nil
}

func stateOf(p gateway.PolicyStatus) string {
	switch {
	case p.Kind == "static":
		return "in force"
	case p.Active:
		return "active (condition held)"
	}
	return "inactive (waiting for its condition)"
}

func policyList(c *cli.Context) error {
	ctx, cancel := callCtx(c)
	defer cancel()
	ps, err := apiClient(c).Policies(ctx)
	if err != nil {
		return apiErr(err)
	}
	if c.Bool("json") {
		return printJSON(ps)
	}
	rows := make([][]string, 0, len(ps))
	for _, p := range ps {
		state := "static"
		if p.Kind != "static" {
			state = "inactive"
			if p.Active {
				state = "active"
			}
			if p.Since != nil {
				state += " since " + p.Since.Local().Format(time.TimeOnly)
			}
		}
		rows = append(rows, []string{strconv.FormatUint(p.ID, 10), p.Target, state, formatMetrics(p.Metrics), p.Compiled})
	}
	table([]string{"ID", "TARGET", "STATE", "METRICS", "POLICY"}, rows)
	return nil
}

// formatMetrics shows a WHEN policy's last evaluated metrics.
func formatMetrics(m map[string]float64) string {
	if len(m) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%.0f", k, m[k]))
	}
	return strings.Join(parts, " ")
}

func policyDelete(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageErr("policy delete: want exactly one policy ID")
	}
	id, err := strconv.ParseUint(c.Args().First(), 10, 64)
	if err != nil {
		return usageErr("policy delete: policy ID %q is not a number", c.Args().First())
	}
	ctx, cancel := callCtx(c)
	defer cancel()
	if err := apiClient(c).DeletePolicy(ctx, id); err != nil {
		return apiErr(err)
	}
	return printDone(c, map[string]any{"id": id, "deleted": true}, "deleted policy %d", id)
}

package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/gateway/qos"
)

func qosCommand() *cli.Command {
	return &cli.Command{
		Name:   "qos",
		Usage:  "rate limits, reservations and weights per tenant or volume (IOFlow queues)",
		Action: unknownSubcommand,
		Description: `A rule matches a tenant's or a volume's IO (optionally one operation or door)
and gives it a queue: limits are hard caps; a reservation is a minimum under
contention; weight shares what is left. The most specific rule wins (file
over volume over tenant, one op over all ops, one door over all doors); among
equally specific rules (two globs matching one file) the highest priority,
then the lowest id. IOPS count 8 KiB units: a 64 KiB IO is 8.
Changes apply to running IO within a second.`,
		Subcommands: []*cli.Command{
			{
				Name:  "set",
				Usage: "create a rule, or replace the limits of the rule with the same target and op",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "tenant", Usage: "every volume of tenant T, as one shared queue"},
					&cli.StringFlag{Name: "volume", Usage: "volume TENANT/NAME"},
					&cli.StringFlag{Name: "file", Usage: "with --volume: only files whose path matches this glob (fs volumes), e.g. '*.log'"},
					&cli.StringFlag{Name: "op", Usage: "read or write (default: every operation)"},
					&cli.StringFlag{Name: "door", Usage: "nbd, fuse, virtio or shim (default: every door)"},
					&cli.StringFlag{Name: "iops", Usage: "limit in 8 KiB-normalised IO/s"},
					&cli.StringFlag{Name: "bw", Usage: "limit in bytes/s, e.g. 50MiB or 50MiB/s"},
					&cli.StringFlag{Name: "burst", Usage: "how much of the limits an idle queue may bank, e.g. 2s (default 100ms)"},
					&cli.StringFlag{Name: "reservation-iops", Usage: "minimum IO/s under contention"},
					&cli.StringFlag{Name: "reservation-bw", Usage: "minimum bytes/s under contention"},
					&cli.StringFlag{Name: "weight", Usage: "share of spare capacity (default 1)"},
					&cli.IntFlag{Name: "priority", Usage: "served first among queues competing for spare capacity"},
					jsonFlag,
				},
				Action: qosSet,
			},
			{Name: "list", Usage: "list rules with their queue counters", Flags: []cli.Flag{jsonFlag}, Action: qosList},
			{Name: "delete", Usage: "delete a rule (its waiting IO is released)", ArgsUsage: "ID", Flags: []cli.Flag{jsonFlag}, Action: qosDelete},
		},
	}
}

// positive parses a flag that, when given, must be a positive finite number.
func positive(c *cli.Context, name string, parse func(string) (float64, error)) (float64, error) {
	if !c.IsSet(name) {
		return 0, nil
	}
	v, err := parse(c.String(name))
	if err != nil {
		return 0, usageErr("--%s: %v", name, err)
	}
	if !(v > 0) || v > 1e15 {
		return 0, usageErr("--%s %s: must be a positive number (omit the flag for none)", name, c.String(name))
	}
	return v, nil
}

func parseCount(s string) (float64, error) {
	v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a number", s)
	}
	return v, nil
}

func parseRate(s string) (float64, error) {
	n, err := parseSize(strings.TrimSuffix(strings.TrimSpace(s), "/s"))
	return float64(n), err
}

func qosSet(c *cli.Context) error {
	if c.NArg() != 0 {
		return usageErr("qos set: unexpected argument %q", c.Args().First())
	}
	var r gateway.QoSRule
	switch t, v := c.String("tenant"), c.String("volume"); {
	case t != "" && v != "":
		return usageErr("qos set: give --tenant or --volume, not both")
	case t != "":
		r.Tenant = t
	case v != "":
		tenant, name, err := gateway.SplitRef(v)
		if err != nil {
			return usageErr("--volume: %v", err)
		}
		r.Tenant, r.Volume = tenant, name
	default:
		return usageErr("qos set: give --tenant T or --volume T/V")
	}
	r.Op, r.Door, r.File = c.String("op"), c.String("door"), c.String("file")
	var l qos.Limits
	var err error
	if l.IOPS, err = positive(c, "iops", parseCount); err != nil {
		return err
	}
	if l.BPS, err = positive(c, "bw", parseRate); err != nil {
		return err
	}
	if l.ReservationIOPS, err = positive(c, "reservation-iops", parseCount); err != nil {
		return err
	}
	if l.ReservationBPS, err = positive(c, "reservation-bw", parseRate); err != nil {
		return err
	}
	if l.Weight, err = positive(c, "weight", parseCount); err != nil {
		return err
	}
	if c.IsSet("burst") {
		if l.Burst, err = time.ParseDuration(c.String("burst")); err != nil || l.Burst <= 0 {
			return usageErr("--burst %q: want a positive duration such as 500ms or 2s", c.String("burst"))
		}
	}
	l.Priority = c.Int("priority")
	ctx, cancel := callCtx(c)
	defer cancel()
	out, err := apiClient(c).SetQoSRule(ctx, gateway.QoSRule{Tenant: r.Tenant, Volume: r.Volume, File: r.File, Op: r.Op, Door: r.Door, Limits: l})
	if err != nil {
		return apiErr(err)
	}
	if c.Bool("json") {
		return printJSON(out)
	}
	fmt.Printf("rule %d: %s %s %s\n", out.ID, out.Target(), opName(out.Op), describeLimits(out.Limits))
	return nil
}

func opName(op string) string {
	if op == "" {
		return "all-ops"
	}
	return op
}

func describeLimits(l qos.Limits) string {
	var parts []string
	add := func(f string, a ...any) { parts = append(parts, fmt.Sprintf(f, a...)) }
	if l.IOPS > 0 {
		add("iops<=%g", l.IOPS)
	}
	if l.BPS > 0 {
		add("bw<=%s/s", formatSize(int64(l.BPS)))
	}
	if l.ReservationIOPS > 0 {
		add("iops>=%g", l.ReservationIOPS)
	}
	if l.ReservationBPS > 0 {
		add("bw>=%s/s", formatSize(int64(l.ReservationBPS)))
	}
	if l.Weight > 0 {
		add("weight=%g", l.Weight)
	}
	if l.Priority != 0 {
		add("priority=%d", l.Priority)
	}
	if l.Burst > 0 {
		add("burst=%v", l.Burst)
	}
	return strings.Join(parts, " ")
}

func qosList(c *cli.Context) error {
	ctx, cancel := callCtx(c)
	defer cancel()
	rules, err := apiClient(c).QoSRules(ctx)
	if err != nil {
		return apiErr(err)
	}
	if c.Bool("json") {
		return printJSON(rules)
	}
	table(qosHeader, qosRows(rules))
	return nil
}

var qosHeader = []string{"ID", "TARGET", "OP", "DOOR", "SETTINGS", "ADMITTED", "BYTES", "THROTTLED", "WAITING"}

func qosRows(rules []gateway.QoSRuleStats) [][]string {
	rows := make([][]string, 0, len(rules))
	for _, r := range rules {
		door := r.Door
		if door == "" {
			door = "all"
		}
		rows = append(rows, []string{fmt.Sprint(r.ID), r.Target(), opName(r.Op), door, describeLimits(r.Limits),
			fmt.Sprint(r.Stats.AdmittedOps), formatSize(int64(r.Stats.AdmittedBytes)),
			r.Stats.ThrottledTime.Round(time.Millisecond).String(), fmt.Sprint(r.Stats.Depth)})
	}
	return rows
}

func qosDelete(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageErr("qos delete: want exactly one rule ID")
	}
	id, err := strconv.ParseUint(c.Args().First(), 10, 64)
	if err != nil {
		return usageErr("qos delete: rule ID %q is not a number", c.Args().First())
	}
	ctx, cancel := callCtx(c)
	defer cancel()
	if err := apiClient(c).DeleteQoSRule(ctx, id); err != nil {
		return apiErr(err)
	}
	return printDone(c, map[string]any{"id": id, "deleted": true}, "deleted rule %d", id)
}

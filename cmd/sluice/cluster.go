package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sluice-storage/sluice/controller"
	"github.com/sluice-storage/sluice/gateway/admin"
)

func clusterCommand() *cli.Command {
	return &cli.Command{
		Name:   "cluster",
		Usage:  "the cluster as the controller sees it",
		Action: unknownSubcommand,
		Subcommands: []*cli.Command{
			{
				Name:  "status",
				Usage: "gateways, tenants, and each tenant's SLO against what it achieved",
				Description: `Asks the controller (--controller or SLUICE_CONTROLLER; without them, the
controller the gateway at --api-socket joined, and the default URL if it joined
none). Rates are summed over live gateways from their last one-second report.
With several controller URLs (a replicated controller), the leader is asked;
the first lines name the leader, the replicas and, on etcd, its health.
A tenant is "below" when it achieved less than 90 % of the part of its minimum
it asked for. When the gateway at --api-socket follows a controller, a last
line shows its state: following (assignments in force) or static rules.`,
				Flags:  append([]cli.Flag{jsonFlag}, controllerFlags()...),
				Action: clusterStatus,
			},
		},
	}
}

func clusterStatus(c *cli.Context) error {
	if c.NArg() != 0 {
		return usageErr("cluster status: unexpected argument %q", c.Args().First())
	}
	cl, err := controllerClient(c)
	if err != nil {
		return err
	}
	ctx, cancel := callCtx(c)
	defer cancel()
	st, err := cl.Status(ctx)
	if err != nil {
		return controllerErr(cl, err)
	}
	if c.Bool("json") {
		return printJSON(st)
	}
	round := "no round yet"
	if !st.Round.IsZero() {
		round = "last round " + agoString(st.Round)
	}
	fmt.Printf("controller %s: epoch %s, %s, algorithm %s\n", cl.URL(), controller.FormatEpoch(st.Epoch), round, st.Algorithm)
	fmt.Println(describeReplicas(st))
	if st.Etcd != nil {
		fmt.Println(describeEtcd(*st.Etcd))
	}
	fmt.Println()

	rows := make([][]string, 0, len(st.Gateways))
	for _, g := range st.Gateways {
		state, last := "silent", "never"
		if g.Live {
			state = "live"
		}
		if !g.LastReport.IsZero() {
			last = agoString(g.LastReport)
		}
		sync := "static rules"
		switch {
		case g.Epoch == st.Epoch && g.Epoch != 0:
			sync = "current"
		case g.Epoch != 0:
			sync = "previous"
		}
		rows = append(rows, []string{g.ID, state, last, fmt.Sprint(g.Tenants),
			rateOverCapacity(controller.ReadBW, g.Achieved.ReadBPS, g.Capacity.ReadBPS),
			rateOverCapacity(controller.WriteBW, g.Achieved.WriteBPS, g.Capacity.WriteBPS),
			rateOverCapacity(controller.ReadIOPS, g.Achieved.ReadIOPS, g.Capacity.ReadIOPS),
			rateOverCapacity(controller.WriteIOPS, g.Achieved.WriteIOPS, g.Capacity.WriteIOPS), sync})
	}
	table([]string{"GATEWAY", "STATE", "LAST REPORT", "TENANTS", "READ BW", "WRITE BW", "READ IOPS", "WRITE IOPS", "ASSIGNMENTS"}, rows)
	fmt.Println()

	rows = rows[:0]
	for _, t := range st.Tenants {
		row := []string{t.Tenant, fmt.Sprint(t.Gateways)}
		var below []string
		for r := controller.Resource(0); r < controller.NumResources; r++ {
			slo := "-"
			if t.HasSLO {
				slo = sloRange(controller.SLO{Min: t.Min, Max: t.Max}, r)
			}
			row = append(row, formatRateOf(r, t.Achieved.Get(r))+" ("+slo+")")
			if asked := min(t.Min.Get(r), t.Demand.Get(r)); asked > 0 && t.Achieved.Get(r) < 0.9*asked {
				below = append(below, r.String())
			}
		}
		state := "ok"
		switch {
		case len(below) > 0:
			state = "below minimum: " + strings.Join(below, ", ")
		case !t.HasSLO:
			state = "best effort"
		}
		rows = append(rows, append(row, state))
	}
	table([]string{"TENANT", "GATEWAYS", "READ BW (SLO)", "WRITE BW (SLO)", "READ IOPS (SLO)", "WRITE IOPS (SLO)", "STATE"}, rows)
	if len(st.Shortfalls) > 0 {
		fmt.Println()
		for _, s := range st.Shortfalls {
			r := resourceNamed(s.Resource)
			fmt.Printf("minimum not held: tenant %s %s: wants %s, the cluster can place %s: %s\n",
				s.Tenant, s.Resource, formatRateOf(r, s.Want), formatRateOf(r, s.Placed), s.Reason)
		}
	}
	if js, ok := joinedController(c); ok {
		fmt.Println()
		fmt.Println(describeJoined(js))
	}
	return nil
}

// describeReplicas is one line on the leader and the replicas.
func describeReplicas(st controller.Status) string {
	leader := "no leader elected right now"
	if st.Leader != "" {
		leader = "leader " + st.Leader
		if st.Term != 0 {
			leader += fmt.Sprintf(" (term %d)", st.Term)
		}
	}
	reps := make([]string, 0, len(st.Replicas))
	for _, r := range st.Replicas {
		reps = append(reps, r.URL)
	}
	line := leader + "; replicas: " + strings.Join(reps, ", ")
	if st.Replica != "" && st.Replica != st.Leader {
		line += "; answered by follower " + st.Replica + " (the leader did not answer: no gateway reports here)"
	}
	return line
}

// describeEtcd is one line on etcd's health, and one per unhealthy
// endpoint.
func describeEtcd(e controller.EtcdStatus) string {
	ok := 0
	var bad []string
	for _, ep := range e.Endpoints {
		if ep.Healthy {
			ok++
			continue
		}
		bad = append(bad, fmt.Sprintf("\n  etcd %s: %s", ep.Endpoint, ep.Error))
	}
	state := "healthy"
	if !e.Healthy {
		state = "UNHEALTHY"
	}
	return fmt.Sprintf("etcd: %s, %d of %d endpoints answer, prefix %s%s", state, ok, len(e.Endpoints), e.Prefix, strings.Join(bad, ""))
}

// describeJoined is one line on the local gateway's follower.
func describeJoined(js admin.ControllerStatus) string {
	contact := "never heard from it"
	if !js.LastContact.IsZero() {
		contact = "last contact " + agoString(js.LastContact)
	}
	state := "static rules (grace period over or no set yet)"
	if js.Following {
		state = fmt.Sprintf("following epoch %s, %d tenants assigned", js.EpochText, len(js.Assignments.Tenants))
	} else if js.Epoch != 0 {
		state = fmt.Sprintf("static rules since %s (last epoch %s)", agoString(js.Assignments.Since), js.EpochText)
	}
	at := js.URL
	if js.Leader != "" && js.Leader != js.URL {
		at = js.Leader
	}
	return fmt.Sprintf("this gateway (%s at %s): %s; %s", js.GatewayID, at, state, contact)
}

// rateOverCapacity prints "achieved / capacity" ("?" for an unknown capacity).
func rateOverCapacity(r controller.Resource, achieved, capacity float64) string {
	c := "?"
	if capacity > 0 {
		c = formatRateOf(r, capacity)
	}
	return formatRateOf(r, achieved) + " / " + c
}

func resourceNamed(name string) controller.Resource {
	for r := controller.Resource(0); r < controller.NumResources; r++ {
		if r.String() == name {
			return r
		}
	}
	return controller.ReadBW
}

func agoString(t time.Time) string {
	d := time.Since(t)
	if d < 0 {
		d = 0
	}
	return d.Round(100*time.Millisecond).String() + " ago"
}

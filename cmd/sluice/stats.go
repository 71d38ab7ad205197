package main

import (
	"fmt"

	"github.com/sluice-storage/sluice/gateway/admin"

	"github.com/urfave/cli/v2"
)

func statsCommand() *cli.Command {
	return &cli.Command{
		Name:   "stats",
		Usage:  "show pool usage and per-volume counters",
		Flags:  []cli.Flag{jsonFlag},
		Action: stats,
	}
}

func stats(c *cli.Context) error {
	ctx, cancel := callCtx(c)
	defer cancel()
	st, err := apiClient(c).Stats(ctx)
	if err != nil {
		return apiErr(err)
	}
	if c.Bool("json") {
		return printJSON(st)
	}
	p := st.Pool
	fmt.Printf("pool %s: %s used of %s, %d volumes provisioned %s\n\n",
		p.UUID, formatSize(p.Used), formatSize(p.Size), p.Volumes, formatSize(p.Provision))
	var rows [][]string
	for _, v := range st.Volumes {
		if len(v.Ops) == 0 {
			rows = append(rows, []string{v.Ref, "-", "-", "0", "0", "0", "-"})
		}
		for _, o := range v.Ops {
			rows = append(rows, []string{v.Ref, o.Door, o.Op, fmt.Sprint(o.Ops), formatSize(int64(o.Bytes)),
				fmt.Sprint(o.Errors), formatLatency(o.MeanLatency)})
		}
	}
	table([]string{"VOLUME", "DOOR", "OP", "OPS", "BYTES", "ERRORS", "MEAN LATENCY"}, rows)
	if len(st.Queues) > 0 {
		fmt.Println()
		table(qosHeader, qosRows(st.Queues))
	}
	if st.Device != nil {
		printDevice(st.Device)
	}
	return nil
}

// printDevice prints the store's device's own stats (an SPDK bdev's).
func printDevice(d *admin.DeviceStats) {
	state := "connected"
	if !d.Connected {
		state = "reconnecting"
	}
	fmt.Printf("\ndevice %s bdev %s (controller %s): %s, %d reconnects\n", d.Kind, d.Bdev, d.Controller, state, d.Reconnects)
	if d.SPDK == nil {
		fmt.Printf("SPDK iostat unavailable: %s\n", d.Error)
		return
	}
	s := d.SPDK
	table([]string{"SPDK OP", "OPS", "BYTES", "MEAN LATENCY"}, [][]string{
		{"read", fmt.Sprint(s.ReadOps), formatSize(int64(s.BytesRead)), formatLatency(s.MeanReadLatency)},
		{"write", fmt.Sprint(s.WriteOps), formatSize(int64(s.BytesWritten)), formatLatency(s.MeanWriteLatency)},
		{"unmap", fmt.Sprint(s.UnmapOps), formatSize(int64(s.BytesUnmapped)), formatLatency(s.MeanUnmapLatency)},
	})
}

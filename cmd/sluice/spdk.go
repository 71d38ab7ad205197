package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/sluice-storage/sluice/gateway/admin"
	"github.com/sluice-storage/sluice/spdkbackend"
	"github.com/sluice-storage/sluice/spdkbackend/launch"
)

// spdkArgs are the flags of the SPDK device (--device spdk:...) and of the
// target the gateway may launch.
type spdkArgs struct {
	Launch, Config, Cores, Mem string
	// IOTimeout and ReconnectTimeout are the device's fault bounds
	// (spdkbackend.Options; docs/SPDK.md, "Fault policy").
	IOTimeout, ReconnectTimeout time.Duration

	// Set by check.
	uri    *spdkbackend.URI // nil: the device is not an SPDK bdev
	memMiB int
}

func spdkFlags(s *spdkArgs) []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "spdk-launch", Destination: &s.Launch, Usage: "`PATH` of an SPDK target binary (spdk_tgt or vhost) or of an SPDK directory (its bin/spdk_tgt) to start as a child for --device spdk:..., with its RPC socket in the data directory; stopped on exit"},
		&cli.StringFlag{Name: "spdk-config", Destination: &s.Config, Usage: "`FILE` of SPDK JSON config (save_config's format) the launched target loads at start (--json): its bdevs, an NVMe controller"},
		&cli.StringFlag{Name: "spdk-cores", Value: "0x1", Destination: &s.Cores, Usage: "core mask of the launched SPDK target's reactors (-m)"},
		&cli.StringFlag{Name: "spdk-mem", Value: "256M", Destination: &s.Mem, Usage: "huge-page memory of the launched SPDK target (-s)"},
		&cli.DurationFlag{Name: "spdk-io-timeout", Value: 30 * time.Second, Destination: &s.IOTimeout, Usage: "how long one request may wait for the SPDK target before the device counts it gone and reconnects (1s..10m)"},
		&cli.DurationFlag{Name: "spdk-reconnect-timeout", Value: 60 * time.Second, Destination: &s.ReconnectTimeout, Usage: "how long requests wait for a gone SPDK target to come back before they fail with EIO (1s..1h)"},
	}
}

// check parses --device spdk:... and the launch flags.
func (s *spdkArgs) check(device, dataDir string) error {
	if !spdkbackend.IsURI(device) {
		if s.Launch != "" || s.Config != "" {
			return usageErr("--spdk-launch and --spdk-config need --device spdk:RPC_SOCKET?bdev=NAME")
		}
		return nil
	}
	u, err := spdkbackend.ParseURI(device)
	if err != nil {
		return usageErr("--device: %v", err)
	}
	if s.Config != "" && s.Launch == "" {
		return usageErr("--spdk-config is for the target --spdk-launch starts")
	}
	if u.Socket == "" {
		u.Socket = spdkbackend.DefaultRPCSocket
		if s.Launch != "" {
			abs, err := filepath.Abs(filepath.Join(dataDir, "spdk", "rpc.sock"))
			if err != nil {
				return usageErr("--data-dir: %v", err)
			}
			u.Socket = abs
		}
	}
	if len(u.Socket) > 107 {
		return usageErr("the SPDK RPC socket path %s is longer than a unix socket's 107 bytes: name a shorter one in --device spdk:PATH?bdev=%s", u.Socket, u.Bdev)
	}
	mem, err := parseSize(s.Mem)
	if err != nil || mem < 64<<20 || mem%(1<<20) != 0 {
		return usageErr("--spdk-mem %q: want a whole number of MiB, at least 64M", s.Mem)
	}
	s.memMiB = int(mem >> 20)
	if s.IOTimeout < time.Second || s.IOTimeout > 10*time.Minute {
		return usageErr("--spdk-io-timeout %v: want 1s to 10m", s.IOTimeout)
	}
	if s.ReconnectTimeout < time.Second || s.ReconnectTimeout > time.Hour {
		return usageErr("--spdk-reconnect-timeout %v: want 1s to 1h", s.ReconnectTimeout)
	}
	if s.Launch != "" {
		if _, err := launch.ResolveProgram(s.Launch); err != nil {
			return usageErr("--spdk-launch: %v", err)
		}
	}
	s.uri = &u
	return nil
}

// openSPDK launches the target if asked and opens the SPDK device on it.
// The launched target (nil if none) is returned even when the device
// fails to open, for the caller to stop.
func openSPDK(ctx context.Context, s *spdkArgs, dataDir string, log *slog.Logger) (*launch.Supervisor, *spdkbackend.Device, error) {
	var tg *launch.Target
	if s.Launch != "" {
		if err := os.MkdirAll(filepath.Dir(s.uri.Socket), 0o700); err != nil {
			return nil, nil, fmt.Errorf("SPDK RPC socket directory: %w", err)
		}
		var err error
		tg, err = launch.Start(ctx, launch.Options{
			Program: s.Launch, RPCSocket: s.uri.Socket, CoreMask: s.Cores, MemMiB: s.memMiB,
			Config: s.Config, LogPath: filepath.Join(dataDir, "spdk.log"), Logger: log,
		})
		if err != nil {
			return nil, nil, err
		}
	}
	var sup *launch.Supervisor
	if tg != nil {
		// A target the gateway launched is the gateway's to keep running.
		sup = launch.Supervise(tg, launch.DefaultMaxRestarts)
	}
	dev, err := spdkbackend.Open(ctx, spdkbackend.Options{
		Socket: s.uri.Socket, Bdev: s.uri.Bdev, Controller: spdkbackend.ControllerName(dataDir), Logger: log,
		IOTimeout: s.IOTimeout, ReconnectTimeout: s.ReconnectTimeout,
	})
	if err != nil {
		return sup, nil, fmt.Errorf("SPDK device %s: %w", s.uri, err)
	}
	return sup, dev, nil
}

// spdkDeviceDoor puts the SPDK device's state and SPDK's own counters of
// its bdev in GET /v1/stats.
type spdkDeviceDoor struct{ dev *spdkbackend.Device }

func (s spdkDeviceDoor) DeviceStats(ctx context.Context) admin.DeviceStats {
	d := s.dev
	ds := admin.DeviceStats{Kind: "spdk", Bdev: d.Bdev().Name, Controller: d.Controller(), Connected: d.Connected(), Reconnects: d.Reconnects()}
	st, rate, err := d.Iostat(ctx)
	if err != nil {
		ds.Error = err.Error()
		return ds
	}
	mean := func(ticks, ops uint64) float64 {
		if ops == 0 || rate == 0 {
			return 0
		}
		return float64(ticks) / float64(rate) / float64(ops)
	}
	ds.SPDK = &admin.SPDKIostat{
		ReadOps: st.NumReadOps, BytesRead: st.BytesRead, MeanReadLatency: mean(st.ReadLatencyTicks, st.NumReadOps),
		WriteOps: st.NumWriteOps, BytesWritten: st.BytesWritten, MeanWriteLatency: mean(st.WriteLatencyTicks, st.NumWriteOps),
		UnmapOps: st.NumUnmapOps, BytesUnmapped: st.BytesUnmapped, MeanUnmapLatency: mean(st.UnmapLatencyTicks, st.NumUnmapOps),
	}
	return ds
}

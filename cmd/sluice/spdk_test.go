package main

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/spdkbackend"
)

// TestSPDKArgs: how --device spdk:... and the launch flags are checked,
// and which RPC socket they end up naming.
func TestSPDKArgs(t *testing.T) {
	data := t.TempDir()
	sh := "/bin/sh" // an executable file stands in for spdk_tgt
	def := spdkArgs{IOTimeout: 30 * time.Second, ReconnectTimeout: time.Minute}
	for _, c := range []struct {
		device string
		s      spdkArgs
		sock   string // "" : not an SPDK device
		err    string
	}{
		{device: "/dev/sdb", s: spdkArgs{Mem: "256M"}},
		{device: "spdk:/run/spdk.sock?bdev=Nvme0n1", s: spdkArgs{Mem: "256M"}, sock: "/run/spdk.sock"},
		{device: "spdk:?bdev=M0", s: spdkArgs{Mem: "256M"}, sock: spdkbackend.DefaultRPCSocket},
		{device: "spdk:?bdev=M0", s: spdkArgs{Launch: sh, Mem: "512M"}, sock: filepath.Join(data, "spdk", "rpc.sock")},
		{device: "/dev/sdb", s: spdkArgs{Launch: sh, Mem: "256M"}, err: "need --device spdk:"},
		{device: "spdk:?bdev=M0", s: spdkArgs{Config: "c.json", Mem: "256M"}, err: "--spdk-config is for the target --spdk-launch starts"},
		{device: "spdk:sock?bdev=M0", s: spdkArgs{Mem: "256M"}, err: "not an absolute path"},
		{device: "spdk:?bdev=M0", s: spdkArgs{Mem: "10M"}, err: "--spdk-mem"},
		{device: "spdk:?bdev=M0", s: spdkArgs{Launch: "/nonexistent/spdk_tgt", Mem: "256M"}, err: "--spdk-launch"},
		{device: "spdk:?bdev=M0", s: spdkArgs{Launch: sh, Mem: "256M"}, err: "longer than a unix socket's"},
		{device: "spdk:?bdev=M0", s: spdkArgs{Mem: "256M", IOTimeout: time.Millisecond}, err: "--spdk-io-timeout"},
		{device: "spdk:?bdev=M0", s: spdkArgs{Mem: "256M", ReconnectTimeout: 2 * time.Hour}, err: "--spdk-reconnect-timeout"},
		{device: "spdk:?bdev=M0", s: spdkArgs{Mem: "256M", IOTimeout: 5 * time.Second, ReconnectTimeout: 10 * time.Second}, sock: spdkbackend.DefaultRPCSocket},
	} {
		// The flags' defaults where a case leaves a timeout out.
		if c.s.IOTimeout == 0 {
			c.s.IOTimeout = def.IOTimeout
		}
		if c.s.ReconnectTimeout == 0 {
			c.s.ReconnectTimeout = def.ReconnectTimeout
		}
		dir := data
		if strings.Contains(c.err, "longer") {
			dir = "/" + strings.Repeat("d", 100)
		}
		err := c.s.check(c.device, dir)
		switch {
		case c.err != "":
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s %+v: %v; want an error with %q", c.device, c.s, err, c.err)
			}
		case err != nil:
			t.Errorf("%s %+v: %v", c.device, c.s, err)
		case c.sock == "" && c.s.uri != nil, c.sock != "" && (c.s.uri == nil || c.s.uri.Socket != c.sock):
			t.Errorf("%s %+v: uri %+v; want socket %q", c.device, c.s, c.s.uri, c.sock)
		}
	}
}

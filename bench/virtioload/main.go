// Command virtioload is bench/virtio.sh's load generator. fio cannot drive
// our Go initiator, so one small Go program runs the same jobs against
// three targets, with the same worker loop and the same measurements:
//
//	virtioload -target inproc -dir DATA-DIR -volume T/V JOBS...   Volume.Do in this process (the limit)
//	virtioload -target inproc -dir DATA-DIR -volume T/V -file NAME JOBS...
//	                                               the same on file NAME in the root of fs volume T/V,
//	                                               as the shim door calls it (bench/shim.sh)
//	virtioload -target virtio -socket S -wait MODE -pid P JOBS... our initiator → a gateway's vhost-user socket
//	virtioload -target nbd -socket S -volume T/V -pid P JOBS...   a minimal NBD client on a unix socket
//	virtioload -target inproc -dir D -device spdk:SOCK?bdev=B -pid SPDK JOBS...
//	                                               the store on an SPDK bdev (bench/spdk.sh)
//	virtioload -target virtio -socket S -hugepages -pid SPDK JOBS...
//	                                               our initiator → SPDK's vhost target
//
// A job is RW:BS:QD[:RATE], RW one of randread, randwrite, read, write
// (sequential), BS like 4k or 1m, QD the number of concurrent workers, RATE
// an optional IOPS cap (QD 1 only; the idle-ish point). -fill writes the
// whole volume once with 1 MiB writes before the jobs, so reads hit data.
//
// One line per job on stdout:
//
//	JOB IOS SECONDS IOPS MB/S MEAN_US P99_US CPU_SELF_S CPU_PEER_S
//
// CPU_SELF_S is getrusage(RUSAGE_SELF) user+system; CPU_PEER_S is the sum
// of /proc/PID/task/*/schedstat run time of -pid (the gateway, the SPDK
// target: a comma-separated list), 0 without.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/spdkbackend"
	"github.com/sluice-storage/sluice/virtio"
)

// target is what a worker calls: one IO at a time per worker.
type target interface {
	io(ctx context.Context, write bool, buf []byte, off int64) error
	size() int64
	close() error
}

type job struct {
	name  string
	write bool
	rand  bool
	bs    int
	qd    int
	rate  float64
}

func main() {
	var (
		kind    = flag.String("target", "", "inproc, virtio or nbd")
		dir     = flag.String("dir", "", "inproc: the gateway's data directory (no gateway may run on it)")
		socket  = flag.String("socket", "", "virtio: vhost-user socket; nbd: NBD unix socket")
		volume  = flag.String("volume", "bench/bench", "inproc and nbd: the volume (T/V)")
		file    = flag.String("file", "", "inproc: a file in the root directory of an fs volume, not the volume itself")
		wait    = flag.String("wait", "adaptive", "virtio: initiator wait mode (adaptive, eventfd, poll)")
		pids    = flag.String("pid", "", "the gateway's pid (and the SPDK target's, comma-separated), for their CPU time")
		device  = flag.String("device", "", "inproc: the store's device, spdk:SOCK?bdev=NAME (default: DATA-DIR/pool)")
		huge    = flag.Bool("hugepages", false, "virtio: shared memory in 2 MiB huge pages (SPDK's vhost target needs them)")
		runtime = flag.Duration("runtime", 5*time.Second, "time per job")
		fill    = flag.Bool("fill", false, "write the whole volume once before the jobs")
	)
	flag.Parse()
	var pid []int
	for _, f := range strings.FieldsFunc(*pids, func(r rune) bool { return r == ',' }) {
		n, err := strconv.Atoi(f)
		if err != nil {
			fmt.Fprintln(os.Stderr, "virtioload: -pid:", err)
			os.Exit(2)
		}
		pid = append(pid, n)
	}
	if err := run(*kind, *dir, *socket, *volume, *file, *wait, *device, *huge, pid, *runtime, *fill, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "virtioload:", err)
		os.Exit(1)
	}
}

func run(kind, dir, socket, volume, file, wait, device string, huge bool, pid []int, runtime time.Duration, fill bool, specs []string) error {
	ctx := context.Background()
	jobs := make([]job, 0, len(specs))
	for _, s := range specs {
		j, err := parseJob(s)
		if err != nil {
			return err
		}
		jobs = append(jobs, j)
	}
	t, err := open(ctx, kind, dir, socket, volume, file, wait, device, huge)
	if err != nil {
		return err
	}
	defer t.close()
	if fill {
		if err := fillTarget(ctx, t); err != nil {
			return fmt.Errorf("fill: %w", err)
		}
	}
	for _, j := range jobs {
		r, err := runJob(ctx, t, j, runtime, pid)
		if err != nil {
			return fmt.Errorf("%s: %w", j.name, err)
		}
		fmt.Println(r)
	}
	return nil
}

func open(ctx context.Context, kind, dir, socket, volume, file, wait, device string, huge bool) (target, error) {
	quiet := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	switch kind {
	case "inproc":
		cfg := gateway.Config{DataDir: dir, Device: filepath.Join(dir, "pool"), Logger: quiet, AutomationInterval: -1}
		if device != "" {
			u, err := spdkbackend.ParseURI(device)
			if err != nil {
				return nil, err
			}
			dev, err := spdkbackend.Open(ctx, spdkbackend.Options{Socket: u.Socket, Bdev: u.Bdev, Controller: spdkbackend.ControllerName(dir), Logger: quiet})
			if err != nil {
				return nil, err
			}
			cfg.Device, cfg.Dev = "", dev
		}
		g, err := gateway.Open(ctx, cfg)
		if err != nil {
			return nil, err
		}
		v, err := g.Volume(volume)
		if err != nil {
			g.Close()
			return nil, err
		}
		if file == "" {
			return &inproc{g: g, v: v}, nil
		}
		a, err := v.Namespace().Lookup(ctx, gateway.RootIno, file)
		if err == nil {
			a, err = v.Namespace().Open(ctx, a.Ino) // as the mount holds it open for the shim's fd
		}
		if err != nil {
			g.Close()
			return nil, err
		}
		return &inprocFile{inproc: inproc{g: g, v: v}, ino: a.Ino, path: file, length: a.Size}, nil
	case "virtio":
		mode, err := virtio.ParseWaitMode(wait)
		if err != nil {
			return nil, err
		}
		c, err := virtio.Dial(ctx, socket, virtio.Options{Wait: virtio.WaitOptions{Mode: mode}, HugePages: huge, Logger: quiet})
		if err != nil {
			return nil, err
		}
		return &vclient{c}, nil
	case "nbd":
		return dialNBD(socket, volume)
	}
	return nil, fmt.Errorf("-target %q: want inproc, virtio or nbd", kind)
}

func parseJob(s string) (job, error) {
	f := strings.Split(s, ":")
	if len(f) < 3 || len(f) > 4 {
		return job{}, fmt.Errorf("job %q: want RW:BS:QD[:RATE]", s)
	}
	j := job{name: s}
	switch f[0] {
	case "randread":
		j.rand = true
	case "randwrite":
		j.rand, j.write = true, true
	case "read":
	case "write":
		j.write = true
	default:
		return job{}, fmt.Errorf("job %q: unknown RW %q", s, f[0])
	}
	bs := strings.ToLower(f[1])
	mult := 1
	switch {
	case strings.HasSuffix(bs, "k"):
		mult, bs = 1<<10, strings.TrimSuffix(bs, "k")
	case strings.HasSuffix(bs, "m"):
		mult, bs = 1<<20, strings.TrimSuffix(bs, "m")
	}
	n, err := strconv.Atoi(bs)
	if err != nil || n <= 0 || n*mult%4096 != 0 {
		return job{}, fmt.Errorf("job %q: bad block size", s)
	}
	j.bs = n * mult
	if j.qd, err = strconv.Atoi(f[2]); err != nil || j.qd < 1 {
		return job{}, fmt.Errorf("job %q: bad queue depth", s)
	}
	if len(f) == 4 {
		if j.rate, err = strconv.ParseFloat(f[3], 64); err != nil || j.rate <= 0 || j.qd != 1 {
			return job{}, fmt.Errorf("job %q: a rate needs QD 1 and a positive number", s)
		}
	}
	return j, nil
}

func fillTarget(ctx context.Context, t target) error {
	buf := make([]byte, 1<<20)
	fillRandom(buf, 1)
	for off := int64(0); off < t.size(); off += int64(len(buf)) {
		if err := t.io(ctx, true, buf[:min(int64(len(buf)), t.size()-off)], off); err != nil {
			return err
		}
	}
	return nil
}

func fillRandom(b []byte, seed uint64) {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	for i := 0; i+8 <= len(b); i += 8 {
		v := r.Uint64()
		for k := range 8 {
			b[i+k] = byte(v >> (8 * k))
		}
	}
}

// runJob runs j for d and returns its result line.
func runJob(ctx context.Context, t target, j job, d time.Duration, pid []int) (string, error) {
	blocks := t.size() / int64(j.bs)
	if blocks < 1 {
		return "", errors.New("volume smaller than the block size")
	}
	var (
		seq   atomic.Int64
		wg    sync.WaitGroup
		lats  = make([][]time.Duration, j.qd)
		errs  = make([]error, j.qd)
		stop  atomic.Bool
		start = time.Now()
	)
	self0, peer0 := selfCPU(), peerCPU(pid)
	var ws0 virtio.WaitStats
	if v, ok := t.(*vclient); ok {
		ws0 = v.c.WaitStats()
	}
	for w := range j.qd {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, j.bs)
			fillRandom(buf, uint64(w)+2)
			r := rand.New(rand.NewPCG(uint64(w), 42))
			l := make([]time.Duration, 0, 1<<16)
			next := time.Now()
			interval := time.Duration(0)
			if j.rate > 0 {
				interval = time.Duration(float64(time.Second) / j.rate)
			}
			for !stop.Load() {
				if interval > 0 {
					// Pace to the rate; after falling behind by more than
					// one interval, restart the schedule (no catch-up burst).
					next = next.Add(interval)
					if wait := time.Until(next); wait > 0 {
						time.Sleep(wait)
					} else if wait < -interval {
						next = time.Now()
					}
				}
				var blk int64
				if j.rand {
					blk = r.Int64N(blocks)
				} else {
					blk = seq.Add(1) % blocks
				}
				t0 := time.Now()
				if err := t.io(ctx, j.write, buf, blk*int64(j.bs)); err != nil {
					errs[w] = err
					stop.Store(true)
					break
				}
				l = append(l, time.Since(t0))
			}
			lats[w] = l
		}()
	}
	time.Sleep(d)
	stop.Store(true)
	wg.Wait()
	el := time.Since(start)
	self, peer := selfCPU()-self0, peerCPU(pid)-peer0
	if err := errors.Join(errs...); err != nil {
		return "", err
	}
	all := slices.Concat(lats...)
	slices.Sort(all)
	n := len(all)
	if n == 0 {
		return "", errors.New("no IO completed")
	}
	if v, ok := t.(*vclient); ok {
		// The initiator's pollers, per IO, for tuning (stderr).
		ws, f := v.c.WaitStats(), float64(n)
		fmt.Fprintf(os.Stderr, "%s initiator per IO: wakeups %.3f blocks %.3f naps %.3f contended %.3f\n", j.name,
			float64(ws.Wakeups-ws0.Wakeups)/f, float64(ws.Blocks-ws0.Blocks)/f, float64(ws.Naps-ws0.Naps)/f, float64(ws.Contended-ws0.Contended)/f)
	}
	var sum time.Duration
	for _, x := range all {
		sum += x
	}
	p99 := all[min(n-1, n*99/100)]
	iops := float64(n) / el.Seconds()
	return fmt.Sprintf("%s %d %.3f %.0f %.1f %.2f %.2f %.4f %.4f", j.name, n, el.Seconds(), iops,
		iops*float64(j.bs)/1e6, us(sum/time.Duration(n)), us(p99), self.Seconds(), peer.Seconds()), nil
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

func selfCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// peerCPU sums the run time of every thread of pid (schedstat is in
// nanoseconds; /proc/PID/stat would give 10 ms ticks). Threads that exit
// during a job are lost; Go rarely ends threads.
func peerCPU(pids []int) time.Duration {
	var tasks []string
	for _, pid := range pids {
		t, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/schedstat", pid))
		tasks = append(tasks, t...)
	}
	var sum time.Duration
	for _, p := range tasks {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		f := strings.Fields(string(b))
		if len(f) > 0 {
			if ns, err := strconv.ParseInt(f[0], 10, 64); err == nil {
				sum += time.Duration(ns)
			}
		}
	}
	return sum
}

// inproc calls Volume.Do: no door, no copy, no other process.
type inproc struct {
	g *gateway.Gateway
	v *gateway.Volume
}

func (p *inproc) io(ctx context.Context, write bool, buf []byte, off int64) error {
	req := gateway.Request{Op: gateway.OpRead, Offset: off, Buf: buf}
	if write {
		req.Op = gateway.OpWrite
	}
	return p.v.Do(ctx, &req)
}

func (p *inproc) size() int64 { return p.v.Size() }
func (p *inproc) close() error {
	return p.g.Close()
}

// inprocFile is Volume.Do on one file of an fs volume, each IO as the
// shim door makes it: the file's length read first, then the request
// with the file's inode and path.
type inprocFile struct {
	inproc
	ino    uint64
	path   string
	length int64
}

func (p *inprocFile) io(ctx context.Context, write bool, buf []byte, off int64) error {
	if _, err := p.v.Namespace().Length(ctx, p.ino); err != nil {
		return err
	}
	req := gateway.Request{Op: gateway.OpRead, Offset: off, Buf: buf, Inode: p.ino, Path: p.path, Door: gateway.DoorShim}
	if write {
		req.Op = gateway.OpWrite
	}
	return p.v.Do(ctx, &req)
}

func (p *inprocFile) size() int64 { return p.length }

// vclient is our initiator.
type vclient struct{ c *virtio.Client }

func (v *vclient) io(ctx context.Context, write bool, buf []byte, off int64) error {
	req := gateway.Request{Op: gateway.OpRead, Offset: off, Buf: buf}
	if write {
		req.Op = gateway.OpWrite
	}
	return v.c.Do(ctx, &req)
}

func (v *vclient) size() int64  { return v.c.Size() }
func (v *vclient) close() error { return v.c.Close() }

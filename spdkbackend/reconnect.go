package spdkbackend

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/spdkbackend/rpc"
	"github.com/sluice-storage/sluice/virtio"
)

// Reconnect back-off: the first attempt at once, then doubling up to
// maxBackoff, so a target that is back is found within a couple of seconds
// and one that is not costs a probe every two seconds.
const (
	minBackoff = 50 * time.Millisecond
	maxBackoff = 2 * time.Second
	// attemptTimeout bounds one reconnect attempt (the RPC calls and the
	// vhost-user handshake): a paused target must not stall the loop for a
	// whole RPCTimeout.
	attemptTimeout = 5 * time.Second
)

// ErrUnreachable is wrapped (with gateway.ErrIO) by the error of a call
// that gave up waiting for the target to come back.
var ErrUnreachable = errors.New("SPDK target unreachable")

// client returns the connection to use, waiting while the device
// reconnects: until *giveUp, which it sets to ReconnectTimeout from now
// when the call has not met the outage before.
func (d *Device) client(giveUp *time.Time) (*virtio.Client, uint64, error) {
	for {
		d.mu.Lock()
		c, gen, ready := d.cur, d.gen, d.ready
		d.mu.Unlock()
		if c != nil {
			return c, gen, nil
		}
		if giveUp.IsZero() {
			*giveUp = time.Now().Add(d.opt.ReconnectTimeout)
		}
		t := time.NewTimer(time.Until(*giveUp))
		select {
		case <-ready:
			t.Stop()
		case <-d.ctx.Done():
			t.Stop()
			return nil, 0, fmt.Errorf("spdkbackend: device closed: %w", gateway.ErrClosed)
		case <-t.C:
			return nil, 0, context.DeadlineExceeded
		}
	}
}

// lost marks connection gen as failed (cause says why) and starts the
// reconnect loop, unless another call already did or the device is
// closing.
func (d *Device) lost(gen uint64, cause error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cur == nil || gen != d.gen || d.ctx.Err() != nil {
		return
	}
	old := d.cur
	d.cur = nil
	d.ready = make(chan struct{})
	d.loopDone = make(chan struct{})
	go d.reconnect(old, cause, d.loopDone)
}

// connFault reports whether err means the connection (not the request) is
// bad: the initiator saw the connection die (gateway.ErrClosed), or the
// request got no answer within IOTimeout (a stopped or wedged target).
func connFault(ctx context.Context, err error) bool {
	return errors.Is(err, gateway.ErrClosed) || (errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil)
}

// do runs op on the current connection and, when the connection fails
// under it, waits for the reconnect and runs it again: every operation of
// the device is idempotent on a block device (a write of the same bytes to
// the same place, a flush, a discard), so running one twice is safe, and
// whole-call retry re-reads partial blocks on the new connection. A call
// gives up with ErrUnreachable (and gateway.ErrIO) once ReconnectTimeout
// has passed since it first found the connection bad.
func (d *Device) do(op func(ctx context.Context, c *virtio.Client) error) error {
	var giveUp time.Time // set when this call first meets the outage
	var cause error
	for {
		c, gen, err := d.client(&giveUp)
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("%w at %s: not back within %v (%v): %w", ErrUnreachable, d.opt.Socket, d.opt.ReconnectTimeout, cause, gateway.ErrIO)
		}
		if err != nil {
			return err
		}
		ictx, cancel := context.WithTimeout(context.Background(), d.opt.IOTimeout)
		err = op(ictx, c)
		fault := err != nil && connFault(ictx, err)
		cancel()
		if !fault || d.ctx.Err() != nil {
			return err
		}
		cause = err
		d.lost(gen, err)
		if giveUp.IsZero() {
			giveUp = time.Now().Add(d.opt.ReconnectTimeout)
		}
		if time.Now().After(giveUp) {
			return fmt.Errorf("%w at %s: %v: %w", ErrUnreachable, d.opt.Socket, cause, gateway.ErrIO)
		}
		d.stats.retries.Add(1)
	}
}

// isDown reports whether the device has no connection now.
func (d *Device) isDown() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cur == nil
}

// reconnect closes the failed connection and attaches again until it
// works or the device is closed.
func (d *Device) reconnect(old *virtio.Client, cause error, done chan struct{}) {
	defer close(done)
	d.log.Warn("SPDK target connection lost; reconnecting", "err", cause)
	// Close stops the queues (on a live but stopped target that costs the
	// initiator's control timeout) and waits for every IO call on the old
	// connection to return; those are bounded by IOTimeout.
	old.Close()
	start := time.Now()
	backoff := minBackoff
	for attempt := 1; ; attempt++ {
		c, err := d.reattach()
		if err == nil {
			d.mu.Lock()
			d.cur = c
			d.gen++
			close(d.ready)
			d.mu.Unlock()
			d.stats.reconnects.Add(1)
			d.log.Info("SPDK target connection restored", "attempts", attempt, "took", time.Since(start).Round(time.Millisecond))
			return
		}
		if d.ctx.Err() != nil {
			return
		}
		if attempt == 1 || attempt%10 == 0 {
			d.log.Warn("SPDK target not back yet", "attempt", attempt, "err", err)
		}
		select {
		case <-d.ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, maxBackoff)
	}
}

// reattach is one reconnect attempt: the RPC socket answers, the bdev is
// there (it belongs to the target's configuration, which re-creates it, or
// to its operator: the device waits for it and never creates it), the same
// size and block size as before; then the device's controller is created
// afresh and the initiator dials it.
//
// A controller of our name that is still there (the target was stopped,
// not restarted) is deleted first. That is a barrier: SPDK refuses to
// delete a controller while a session of it has requests in flight, so
// once it is gone nothing sent on the old connection can still land after
// what the new one writes.
func (d *Device) reattach() (*virtio.Client, error) {
	ctx, cancel := context.WithTimeout(d.ctx, attemptTimeout)
	defer cancel()
	opt := d.opt
	bdevs, err := d.rc.BdevGetBdevs(ctx, rpc.GetBdevs{Name: opt.Bdev})
	if err != nil {
		return nil, fmt.Errorf("bdev_get_bdevs %s: %w", opt.Bdev, err)
	}
	if len(bdevs) != 1 {
		return nil, fmt.Errorf("bdev_get_bdevs %s answered %d bdevs", opt.Bdev, len(bdevs))
	}
	if b := bdevs[0]; b.Size() != d.bdev.Size() || b.BlockSize != d.bdev.BlockSize {
		return nil, fmt.Errorf("bdev %s is now %d blocks of %d bytes, was %d of %d: not the store's", b.Name, b.NumBlocks, b.BlockSize, d.bdev.NumBlocks, d.bdev.BlockSize)
	}
	ctrls, err := d.rc.VhostGetControllers(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("vhost_get_controllers: %w", err)
	}
	for _, c := range ctrls {
		if c.Ctrlr == opt.Controller {
			if err := d.rc.VhostDeleteController(ctx, opt.Controller); err != nil {
				return nil, fmt.Errorf("delete the old vhost controller %s: %w", opt.Controller, err)
			}
		}
	}
	if err := d.rc.VhostCreateBlkController(ctx, rpc.VhostBlkController{Ctrlr: opt.Controller, DevName: opt.Bdev}); err != nil {
		return nil, fmt.Errorf("vhost_create_blk_controller %s: %w", opt.Controller, err)
	}
	c, err := d.dial(ctx)
	if err != nil {
		return nil, err
	}
	if c.Size() < d.size || c.ReadOnly() {
		c.Close()
		return nil, fmt.Errorf("vhost controller %s offers %d bytes (read-only %v); the store needs %d writable", opt.Controller, c.Size(), c.ReadOnly(), d.size)
	}
	return c, nil
}

// dial connects the initiator to the device's controller.
func (d *Device) dial(ctx context.Context) (*virtio.Client, error) {
	opt := d.opt
	ctrls, err := d.rc.VhostGetControllers(ctx, opt.Controller)
	if err != nil || len(ctrls) != 1 || ctrls[0].Socket == "" {
		return nil, fmt.Errorf("vhost controller %s: no socket (%d controllers): %v", opt.Controller, len(ctrls), err)
	}
	c, err := virtio.Dial(ctx, ctrls[0].Socket, virtio.Options{HugePages: true, Queues: opt.Queues, QueueDepth: opt.QueueDepth, MaxIO: opt.MaxIO, Logger: opt.Logger})
	if err != nil {
		return nil, fmt.Errorf("connect to SPDK vhost controller %s: %w", ctrls[0].Socket, err)
	}
	return c, nil
}

// Reconnects is how many times the device has reconnected to its target.
func (d *Device) Reconnects() uint64 { return d.stats.reconnects.Load() }

// Connected reports whether the device has a connection to its target now.
func (d *Device) Connected() bool { return !d.isDown() }

// Iostat asks the target for its own counters of the device's bdev
// (bdev_get_iostat), and its tick rate, to turn latency ticks into time.
func (d *Device) Iostat(ctx context.Context) (rpc.BdevIostat, uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, attemptTimeout)
	defer cancel()
	st, err := d.rc.BdevGetIostat(ctx, d.opt.Bdev)
	if err != nil {
		return rpc.BdevIostat{}, 0, fmt.Errorf("bdev_get_iostat %s: %w", d.opt.Bdev, err)
	}
	if len(st.Bdevs) != 1 {
		return rpc.BdevIostat{}, 0, fmt.Errorf("bdev_get_iostat %s answered %d bdevs", d.opt.Bdev, len(st.Bdevs))
	}
	return st.Bdevs[0], st.TickRate, nil
}

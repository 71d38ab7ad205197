package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sluice-storage/sluice/attach"
	"github.com/sluice-storage/sluice/fuse"
	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/gateway/admin"
	"github.com/sluice-storage/sluice/nbd"
	"github.com/sluice-storage/sluice/shim"
	"github.com/sluice-storage/sluice/spdkbackend"
	"github.com/sluice-storage/sluice/spdkbackend/launch"
	"github.com/sluice-storage/sluice/virtio"
)

// daemon is a running gateway: the store and the doors in front of it.
// start opens them in dependency order, the API socket last (its
// appearance tells scripts the gateway is ready); stop closes whatever
// start opened, in the order written there.
type daemon struct {
	args *gatewayArgs
	log  *slog.Logger
	svc  *service // the service manager's side (LISTEN_FDS, notify)

	pre       *started            // lock, keyring, listeners (preflight)
	spdk      *launch.Supervisor  // nil unless --spdk-launch
	spdkDev   *spdkbackend.Device // nil unless --device spdk:...
	g         *gateway.Gateway
	reg       *prometheus.Registry
	nbdDoor   *nbd.Server // the NBD door's TCP and unix listeners
	metrics   *http.Server
	mounts    *fuse.Manager
	attachSrv *nbd.Server // attached nbd devices' own server (no --nbd-read-only)
	attacher  *attach.Attacher
	virtio    *virtio.Exports
	shim      *shim.Server // nil: --shim-socket none
	join      *joined      // nil unless --controller
	api       *http.Server
	// handingOver: stop leaves every socket path in place (the new
	// process serves the same sockets) and detaches the FUSE mounts
	// (detached) instead of unmounting them.
	handingOver bool
	detached    []fuse.Detached
	// handedVirtio: on a handover, the virtio exports stop keeping their
	// listening sockets, for the new process.
	handedVirtio []virtio.HandedExport
	// took: what this process took over (--takeover), nil otherwise;
	// start adopts its FUSE mounts (adopted: their directories).
	took          *takenOver
	adopted       []string
	adoptedVirtio int
	adoptedVConns int
	// keeper keeps the FUSE mounts' sessions for a crash resume
	// (--fuse-resume; nil without); held: the sessions a gateway that
	// died left in the holder, resumed by start.
	keeper *keeper
	held   []heldSession
}

// start opens everything; on an error the caller runs stop, which closes
// what was opened.
func (d *daemon) start(ctx context.Context) error {
	a, log := d.args, d.log
	// Everything that can be checked is checked before the store is
	// opened (which creates the pool file on a first start).
	var err error
	if d.pre, err = preflight(a, d.svc); err != nil {
		return err
	}
	cfg := gateway.Config{DataDir: a.DataDir, Device: a.Device, PoolSize: a.poolSize, QoSSlots: a.QoSSlots,
		QoSCapacityIOPS: a.QoSCapacityIOPS, QoSCostUnit: a.costUnit, Keyring: d.pre.keyring, Logger: log}
	if d.took != nil {
		// Files unlinked while open on a handed-over mount stay until
		// the adopted handles release them.
		cfg.KeepOrphans = d.took.openInodes()
	}
	stored := d.svc.takeFUSEFDs() // FUSE sessions the fd store kept
	switch {
	case a.FUSEResume:
		d.keeper = newKeeper(a.DataDir, log)
		// +1: the API socket, made last (not in byName yet).
		room, told := d.svc.fuseStoreRoom(len(d.pre.byName) + 1)
		d.keeper.useStore(d.svc.notify, told, room, log)
		if d.took != nil {
			closeFiles(stored) // the running gateway handed its mounts over
			break
		}
		if d.held, err = d.keeper.findHeld(stored); err != nil {
			log.Warn("crash resume: the fd holder did not answer; no FUSE mount of the holder is resumed", "err", err)
		}
		// Files unlinked while open may still be open in the kernel:
		// kept until released (or the next start).
		cfg.KeepOrphans = keepAllOrphans(d.held, cfg.KeepOrphans)
	case d.took != nil:
		closeFiles(stored)
	default:
		endStoredSessions(d.svc.notify, stored, log)
	}
	if a.SPDK.uri != nil {
		// The SPDK device replaces the pool file; the gateway owns it
		// from here (gateway.Open closes it if it fails).
		var dev *spdkbackend.Device
		if d.spdk, dev, err = openSPDK(ctx, &a.SPDK, a.DataDir, log); err != nil {
			return err
		}
		cfg.Dev = dev
		d.spdkDev = dev
	}
	d.g, err = gateway.Open(ctx, cfg)
	if err != nil {
		return err
	}
	go reloadOnHangup(ctx, d.g, log)
	d.reg = prometheus.NewRegistry()
	d.reg.MustRegister(gateway.NewCollector(d.g), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if d.spdkDev != nil {
		d.reg.MustRegister(spdkbackend.NewCollector(d.spdkDev))
	}

	d.nbdDoor = nbd.NewServer(nbdExports{d.g}, nbd.Options{ReadOnly: a.NBDReadOnly, SpinMax: spinOption(a.NBDSpin), Logger: log})
	for _, l := range d.pre.nbd {
		go d.serveNBD(ctx, l)
	}
	if d.pre.metrics != nil {
		d.metrics = d.metricsServer()
		go d.metrics.Serve(d.pre.metrics)
	}
	d.mounts = fuse.NewManager(d.g, log)
	if d.keeper != nil {
		d.mounts.SetKeeper(d.keeper)
		if d.took != nil {
			d.took.setEpochs(d.keeper)
		}
	}
	if len(d.held) > 0 {
		// Before the shim door and the API, as adopted mounts.
		dirs := resumeHeld(ctx, d.mounts, d.keeper, d.held)
		log.Info("crash resume", "fuse_mounts_resumed", len(dirs), "fuse_sessions_held", len(d.held), "dirs", dirs)
		d.held = nil
	}
	if d.took != nil {
		// Before the shim door: its clients register files of these
		// mounts again.
		d.adopted = d.took.adoptFUSE(ctx, d)
	}
	d.attachSrv = nbd.NewServer(nbdExports{d.g}, nbd.Options{SpinMax: spinOption(a.NBDSpin), Logger: log})
	d.attacher, err = attach.New(d.g, d.mounts, attach.Options{Dir: filepath.Join(a.DataDir, "attach"), Method: a.AttachMethod, NBD: d.attachSrv,
		NBDTimeout: a.AttachNBDTimeout, NBDReconnectTimeout: a.AttachNBDReconnect, Handed: d.took.handedAttachments(), Logger: log})
	if err != nil {
		return err
	}
	d.virtio, err = virtio.NewExports(d.g, filepath.Join(a.DataDir, "virtio"), virtio.ServerOptions{Wait: virtio.WaitOptions{Mode: a.virtioWait}, Logger: log})
	if err != nil {
		return err
	}
	if d.took != nil {
		d.adoptedVirtio, d.adoptedVConns = d.took.adoptVirtio(d)
	}
	// After the handed-over ones: the exports the last gateway had that
	// were not handed over (a crash, a stop) get their sockets again.
	if n, err := d.virtio.Restore(ctx); err != nil {
		log.Error("virtio exports not restored", "err", err)
	} else if n > 0 {
		log.Info("virtio exports restored", "exports", n)
	}
	doors := admin.Doors{Mounts: mountDoor{d.mounts}, Attachments: attachDoor{d.attacher}, Virtio: virtioDoor{d.virtio}}
	if d.spdkDev != nil {
		doors.Device = spdkDeviceDoor{d.spdkDev}
	}
	if d.pre.shim != nil {
		d.shim = shim.NewServer(shimMounts{d.mounts}, shim.Options{Logger: log})
		d.reg.MustRegister(shim.NewCollector(d.shim))
		go d.shim.Serve(ctx, d.pre.shim)
		doors.Shim = shimDoor{d.shim, a.ShimSocket}
	}
	if a.join.url != "" {
		if d.join, err = joinController(ctx, d.g, a.join, a.APISocket, log); err != nil {
			return err
		}
		doors.Controller = d.join
	}

	// Last: the API socket, whose appearance tells scripts we are ready
	// (an inherited one exists already: it is served from here on, and
	// the service manager is told READY=1 after this).
	apiL := d.pre.api
	if apiL == nil {
		if apiL, err = listenUnix(a.APISocket, 0o600); err != nil {
			return fmt.Errorf("API socket: %w", err)
		}
	}
	d.pre.byName[fdAPI] = apiL
	d.api = &http.Server{Handler: admin.NewHandler(d.g, d.reg, log, doors), ReadHeaderTimeout: 10 * time.Second}
	go d.api.Serve(apiL)
	return nil
}

func (d *daemon) serveNBD(ctx context.Context, l net.Listener) {
	var err error
	if _, tcp := l.Addr().(*net.TCPAddr); tcp && d.pre.tls != nil {
		err = d.nbdDoor.ServeTLS(ctx, l, d.pre.tls)
	} else {
		err = d.nbdDoor.Serve(ctx, l)
	}
	if err != nil && ctx.Err() == nil {
		d.log.Error("NBD server stopped", "listen", l.Addr().String(), "err", err)
	}
}

func (d *daemon) metricsServer() *http.Server {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(d.reg, promhttp.HandlerOpts{}))
	if d.args.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	}
	return &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
}

// stop closes what start opened, in this order:
//
//  1. the admin API (no new commands) and its socket;
//  2. the NBD door: in-flight requests drain, connections close (on a
//     handover, handOver has stopped it before, keeping the connections
//     it can hand over);
//  3. the metrics listener;
//  4. the controller agent (before the store it reports on);
//  5. the shim door: requests in flight finish, channels close and the
//     fds they registered (files of the FUSE mounts) are closed;
//  6. virtio exports (their connections drain and close; on a handover
//     each keeps its listening socket, bound, for the new process);
//  7. attachments: each attached device is flushed and released, logged
//     as abandoned if something still uses it; then their NBD server;
//  8. FUSE mounts (on a handover: detached at a request boundary and
//     kept for the new process, fuse.Manager.DetachAll; after the shim
//     door, whose closes of files on them may wait for their answer);
//  9. the store (flush, close badger and the device; the SPDK device
//     deletes its vhost controller);
//  10. the SPDK target, if the gateway launched it (SIGTERM, SIGKILL
//     after 10 s);
//  11. the data directory's lock, last, so no second gateway opens the
//     store before this one has closed it.
func (d *daemon) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if d.api != nil {
		d.api.Shutdown(ctx)
		d.removeSocket(fdAPI, d.args.APISocket)
	}
	if d.nbdDoor != nil {
		// On a handover handOver has stopped it already: nothing is left.
		if err := d.nbdDoor.Shutdown(ctx); err != nil {
			d.log.Warn("NBD drain incomplete", "err", err)
		}
	}
	if d.metrics != nil {
		d.metrics.Shutdown(ctx)
	}
	if d.join != nil {
		d.join.close()
	}
	if d.shim != nil {
		if err := d.shim.Shutdown(ctx); err != nil {
			d.log.Warn("shim door drain incomplete", "err", err)
		}
	}
	if d.virtio != nil {
		if d.handingOver {
			d.handedVirtio = d.virtio.HandOver(context.Background())
		} else {
			d.virtio.Close(context.Background())
		}
	}
	if d.attacher != nil {
		d.attacher.Close()
	}
	if d.attachSrv != nil {
		actx, acancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := d.attachSrv.Shutdown(actx); err != nil {
			d.log.Warn("attached devices' NBD connections did not drain", "err", err)
		}
		acancel()
	}
	if d.mounts != nil {
		if d.handingOver {
			d.detached = d.mounts.DetachAll(ctx) // bounded as the other drains (30 s)
		}
		d.mounts.Close()
	}
	if d.keeper != nil {
		d.keeper.close()
	}
	if d.g != nil {
		if err := d.g.Close(); err != nil {
			d.log.Error("closing the store", "err", err)
		}
	}
	if d.spdk != nil {
		tg := d.spdk.Release()
		if killed := tg.Stop(); killed {
			d.log.Warn("the SPDK target needed SIGKILL", "pid", tg.Pid())
		} else {
			d.log.Info("SPDK target stopped", "pid", tg.Pid(), "exit", tg.Err())
		}
	}
	if d.pre != nil {
		if d.args.NBDSocket != "none" && d.nbdDoor != nil {
			d.removeSocket(fdNBD, d.args.NBDSocket)
		}
		if d.pre.shim != nil {
			d.removeSocket(fdShim, d.args.ShimSocket)
		}
		d.pre.close()
	}
}

// removeSocket removes a unix socket's path, unless the service manager
// passed the socket: its .socket unit owns the path and hands the same
// socket to the next start.
func (d *daemon) removeSocket(name, path string) {
	if d.handingOver || (d.pre != nil && d.pre.inherited[name]) {
		return
	}
	os.Remove(path)
}

// spinOption maps --nbd-spin (0: never) onto nbd.Options.SpinMax (0: the
// default, negative: never).
func spinOption(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}

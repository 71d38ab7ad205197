package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/attach"
	"github.com/sluice-storage/sluice/controller"
	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/gateway/filter"
	"github.com/sluice-storage/sluice/internal/handover"
	"github.com/sluice-storage/sluice/internal/listen"
	"github.com/sluice-storage/sluice/nbd"
	"github.com/sluice-storage/sluice/shim"
	"github.com/sluice-storage/sluice/virtio"
)

// gatewayArgs is every flag of `sluice gateway`, bound by the flag
// definitions (gocryptfs style: one typed struct, no lookups by name), and
// what check derives from them.
type gatewayArgs struct {
	DataDir, Device, PoolSize, APISocket string
	NBDListen, NBDSocket                 string
	ShimSocket                           string
	NBDTLSCert, NBDTLSKey, NBDTLSCA      string
	NBDReadOnly                          bool
	NBDSpin                              time.Duration
	AttachMethod                         string
	AttachNBDTimeout                     time.Duration
	AttachNBDReconnect                   time.Duration
	MetricsListen                        string
	Pprof                                bool
	QoSSlots                             int
	QoSCapacityIOPS                      float64
	QoSCostUnit                          string
	Keyring                              string
	VirtioWait                           string
	LogLevel                             string
	Takeover                             bool
	FUSEResume                           bool
	SPDK                                 spdkArgs

	// Set by check.
	poolSize   int64 // 0: a named --device keeps its size
	costUnit   int64
	virtioWait virtio.WaitMode
	join       joinOptions
}

func gatewayCommand() *cli.Command {
	a := &gatewayArgs{}
	return &cli.Command{
		Name:  "gateway",
		Usage: "run the per-host gateway daemon",
		Description: `Opens (or creates) the pool and serves its volumes over NBD and the admin API.
The API socket appears only once everything is ready to serve, so scripts can
wait for it. SIGTERM or SIGINT drains in-flight requests and flushes.
Under systemd (Type=notify) it says READY=1 and STOPPING=1, pings the
watchdog, and serves sockets passed in LISTEN_FDS named api, nbd, nbd-tcp,
shim or metrics (docs/SYSTEMD.md).
With --takeover (and the running gateway's flags) it takes over from the
gateway running on the data directory: that one drains, closes the store and
hands its listening sockets over, then exits (docs/HANDOVER.md).`,
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "data-dir", Value: defaultDataDir, Destination: &a.DataDir, Usage: "metadata, default pool file and sockets live here"},
			&cli.StringFlag{Name: "device", Destination: &a.Device, Usage: "an existing pool file or block device (default DATA-DIR/pool, created on first start), or spdk:RPC_SOCKET?bdev=NAME: a bdev of an SPDK target (docs/SPDK.md)"},
			&cli.StringFlag{Name: "pool-size", Value: "64G", Destination: &a.PoolSize, Usage: "size of the default sparse pool file; with --device, grows a pool file to it"},
			&cli.StringFlag{Name: "api-socket", Destination: &a.APISocket, Usage: "admin API socket (default DATA-DIR/api.sock)"},
			&cli.StringFlag{Name: "nbd-listen", Value: "127.0.0.1:10809", Destination: &a.NBDListen, Usage: "NBD TCP address (\"\" to disable)"},
			&cli.StringFlag{Name: "nbd-socket", Destination: &a.NBDSocket, Usage: "NBD unix socket (default DATA-DIR/nbd.sock, \"none\" to disable)"},
			&cli.StringFlag{Name: "shim-socket", Destination: &a.ShimSocket, Usage: "the LD_PRELOAD shim door's socket, mode 0666: access is proven per file (default DATA-DIR/shim.sock, \"none\" to disable)"},
			&cli.StringFlag{Name: "nbd-tls-cert", Destination: &a.NBDTLSCert, Usage: "`PEM` certificate of the NBD door: TCP clients must then use TLS (STARTTLS) with a client certificate"},
			&cli.StringFlag{Name: "nbd-tls-key", Destination: &a.NBDTLSKey, Usage: "`PEM` private key of --nbd-tls-cert"},
			&cli.StringFlag{Name: "nbd-tls-ca", Destination: &a.NBDTLSCA, Usage: "`PEM` CA that signs client certificates; a certificate's common name is the one tenant its client may use"},
			&cli.DurationFlag{Name: "nbd-spin", Value: nbd.DefaultSpinMax, Destination: &a.NBDSpin, Usage: "how long a reader on an idle NBD connection polls its socket before it parks, while its client sends requests back to back (0: never; saves CPU, costs latency at queue depth 1)"},
			&cli.BoolFlag{Name: "nbd-read-only", Destination: &a.NBDReadOnly, Usage: "serve every export of the NBD door (socket and TCP) read-only; attached devices follow their volume's read-only flag"},
			&cli.StringFlag{Name: "attach-method", Value: "auto", Destination: &a.AttachMethod, Usage: "how 'sluice attach' makes devices: nbd (the kernel's nbd driver over netlink), loop (a loop device over the volume's FUSE image) or auto (nbd where /dev/nbd* exists)"},
			&cli.DurationFlag{Name: "attach-nbd-timeout", Value: attach.DefaultNBDTimeout, Destination: &a.AttachNBDTimeout, Usage: "nbd attachments: a request the gateway has not answered after this long is sent again by the kernel on a new connection (whole seconds)"},
			&cli.DurationFlag{Name: "attach-nbd-reconnect-timeout", Value: attach.DefaultNBDReconnectTimeout, Destination: &a.AttachNBDReconnect, Usage: "nbd attachments: how long the kernel keeps a device's IO waiting for the gateway to come back after it died (a restart on the same --data-dir reconnects it), before the IO fails (whole seconds)"},
			&cli.StringFlag{Name: "metrics-listen", Destination: &a.MetricsListen, Usage: "also serve /metrics on this TCP address; keep it on loopback (per-tenant counters are readable by anyone who reaches it)"},
			&cli.BoolFlag{Name: "pprof", Destination: &a.Pprof, Usage: "also serve Go's /debug/pprof profiles on --metrics-listen (goroutine stacks, heap; for debugging only)"},
			&cli.IntFlag{Name: "qos-slots", Value: 16, Destination: &a.QoSSlots, Usage: "requests routed by QoS rules that may run at once; reservations and weights act when more wait"},
			&cli.Float64Flag{Name: "qos-capacity-iops", Destination: &a.QoSCapacityIOPS, Usage: "device capacity for QoS-routed IO in 8 KiB IO/s (0 = unknown); set it so reservations and weights divide it when the pool is never busy"},
			&cli.StringFlag{Name: "qos-cost-unit", Value: "8K", Destination: &a.QoSCostUnit, Usage: "IO size that counts as one IO for QoS IOPS (larger IOs count proportionally)"},
			&cli.StringFlag{Name: "keyring", Destination: &a.Keyring, Usage: "`FILE` of tenants' encryption keys, one line \"TENANT BASE64-OF-32-BYTES\" each, mode 0600 or 0400"},
			&cli.StringFlag{Name: "virtio-wait", Value: "adaptive", Destination: &a.VirtioWait, Usage: "how virtio export queues wait for requests: adaptive, eventfd or poll"},
			&cli.StringFlag{Name: "log-level", Value: "info", Destination: &a.LogLevel},
			&cli.BoolFlag{Name: "fuse-resume", Destination: &a.FUSEResume, Usage: "keep each FUSE mount's session (its fd in systemd's fd store under systemd when $FDSTORE leaves room, in an fd holder process otherwise) so that a gateway restarted on --data-dir after a crash resumes the mount: programs see a pause, not an error (and wait until a gateway comes back; docs/HANDOVER.md, Crash resume)"},
			&cli.BoolFlag{Name: "takeover", Destination: &a.Takeover, Usage: "take over from the gateway running on --data-dir (give its flags): it drains, closes the store and hands its listening sockets to this process, which serves on them; NBD connections (without TLS), FUSE mounts, attached devices and virtio connections are handed over too (docs/HANDOVER.md)"},
		}, append(spdkFlags(&a.SPDK), joinFlags()...)...),
		Action: func(c *cli.Context) error {
			if err := a.check(c); err != nil {
				return err
			}
			return runGateway(a)
		},
	}
}

// check validates the flags and fills in the defaults that depend on
// others, before anything is opened. Every error is a usage error.
func (a *gatewayArgs) check(c *cli.Context) error {
	var err error
	if a.poolSize, err = parseSize(a.PoolSize); err != nil {
		return usageErr("--pool-size: %v", err)
	}
	if a.poolSize <= 0 {
		return usageErr("--pool-size must be above 0 (the default is 64G)")
	}
	if a.Device != "" && !c.IsSet("pool-size") {
		a.poolSize = 0 // a named device keeps its size unless --pool-size says otherwise
	}
	if err := a.SPDK.check(a.Device, a.DataDir); err != nil {
		return err
	}
	switch a.AttachMethod {
	case attach.MethodAuto, attach.MethodNBD, attach.MethodLoop:
	default:
		return usageErr("--attach-method must be auto, nbd or loop")
	}
	if a.AttachNBDTimeout < time.Second || a.AttachNBDTimeout > 24*time.Hour {
		return usageErr("--attach-nbd-timeout must be from 1s to 24h")
	}
	if a.AttachNBDReconnect < time.Second || a.AttachNBDReconnect > 24*time.Hour {
		return usageErr("--attach-nbd-reconnect-timeout must be from 1s to 24h")
	}
	if a.QoSSlots < 1 {
		return usageErr("--qos-slots must be at least 1")
	}
	if a.QoSCapacityIOPS < 0 || a.QoSCapacityIOPS > 1e12 {
		return usageErr("--qos-capacity-iops must be 0 (unknown) or a positive rate")
	}
	if a.costUnit, err = parseSize(a.QoSCostUnit); err != nil || a.costUnit < 512 || a.costUnit > 16<<20 {
		return usageErr("--qos-cost-unit %q: want a size from 512 to 16M", a.QoSCostUnit)
	}
	if a.NBDSpin < 0 || a.NBDSpin > time.Second {
		return usageErr("--nbd-spin must be from 0 (never) to 1s")
	}
	if a.virtioWait, err = virtio.ParseWaitMode(a.VirtioWait); err != nil {
		return usageErr("--virtio-wait: %v", err)
	}
	if a.join, err = parseJoinFlags(c); err != nil {
		return err
	}
	a.join.ceiling = capacityCeiling(a.QoSCapacityIOPS, a.costUnit)
	if a.APISocket == "" {
		a.APISocket = filepath.Join(a.DataDir, "api.sock")
	}
	if a.NBDSocket == "" {
		a.NBDSocket = filepath.Join(a.DataDir, "nbd.sock")
	}
	if a.ShimSocket == "" {
		a.ShimSocket = filepath.Join(a.DataDir, "shim.sock")
	}
	if a.ShimSocket != "none" {
		if abs, err := filepath.Abs(a.ShimSocket); err == nil {
			a.ShimSocket = abs // clients are told this path (GET /v1/shim)
		}
	}
	return nil
}

// runGateway serves until SIGTERM or SIGINT, then stops in order (see
// daemon.stop). Under systemd (docs/SYSTEMD.md) it takes its listening
// sockets from LISTEN_FDS, says READY=1 once every door listens, pings
// the watchdog while it runs, and says STOPPING=1 when shutdown begins;
// without those variables none of this happens.
func runGateway(a *gatewayArgs) error {
	log, err := newLogger(a.LogLevel)
	if err != nil {
		return err
	}
	svc, err := newService(a)
	if err != nil {
		return &exitError{exitStartup, err}
	}
	defer svc.notify.Close()
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	var took *takenOver
	if a.Takeover {
		if took, err = takeOver(a, svc, log); err != nil {
			svc.closeInherited()
			var ee *exitError
			if errors.As(err, &ee) {
				return err
			}
			return &exitError{exitStartup, err}
		}
		defer took.conn.Close()
	}
	d := &daemon{args: a, log: log, svc: svc, took: took}
	handedFUSE, handedVirtio, handedVConns := 0, 0, 0
	if took != nil {
		handedFUSE, handedVirtio = len(took.fuse), len(took.virtio)
		for _, h := range took.virtio {
			handedVConns += len(h.conns)
		}
	}
	if err := d.start(ctx); err != nil {
		if took != nil {
			took.closeNBD()
			took.closeFUSE()
			took.closeVirtio()
		}
		svc.notify.Status("start-up failed: " + err.Error())
		d.stop()
		svc.closeInherited()
		var ee *exitError
		if errors.As(err, &ee) {
			return err // a usage error stays one
		}
		return &exitError{exitStartup, err}
	}
	if took != nil {
		handed := len(took.nbd)
		resumed := took.resumeNBD(d)
		pause := time.Since(time.Unix(0, took.state.StoppedAccepting))
		log.Info("takeover complete", "pause_ms", float64(pause.Microseconds())/1000, "nbd_conns_resumed", resumed,
			"nbd_conns_handed", handed, "fuse_mounts_adopted", len(d.adopted), "fuse_mounts_handed", handedFUSE,
			"virtio_exports_adopted", d.adoptedVirtio, "virtio_exports_handed", handedVirtio,
			"virtio_conns_adopted", d.adoptedVConns, "virtio_conns_handed", handedVConns, "ended_fuse_mounts", took.state.Unmounted)
	}
	log.Info("gateway ready", "api", a.APISocket, "nbd", a.NBDListen, "nbd_socket", a.NBDSocket, "shim_socket", a.ShimSocket, "volumes", len(d.g.Volumes()))
	status := fmt.Sprintf("serving %d volumes; API %s", len(d.g.Volumes()), a.APISocket)
	svc.storeListeners(d.pre, log)
	if err := svc.notify.Ready(status); err != nil {
		log.Warn("telling the service manager the gateway is ready", "err", err)
	}
	watchdogDone := make(chan struct{})
	go func() {
		defer close(watchdogDone)
		svc.runWatchdog(ctx, a, status, log)
	}()
	hl, takeovers, err := d.offerHandover(ctx)
	if err != nil {
		log.Warn("no takeover possible", "err", err)
	}
	select {
	case <-ctx.Done():
	case np := <-takeovers:
		stopServing := func() {
			cancel()
			<-watchdogDone
		}
		if err := d.handOver(np, hl, stopServing); err != nil {
			log.Error("handover failed after the store was closed", "err", err)
			return &exitError{exitFailed, err}
		}
		log.Info("handed over; exiting", "to_pid", np.pid)
		return nil
	}
	if hl != nil {
		hl.Close()
		os.Remove(filepath.Join(a.DataDir, handover.SocketName))
	}
	<-watchdogDone // at once: its check's context is ctx
	svc.notify.Stopping("draining NBD requests and flushing")
	log.Info("shutting down: draining NBD requests and flushing")
	d.stop()
	return nil
}

// started is what preflight opened before the store: the data
// directory's lock, the keyring and the listeners.
type started struct {
	lock    *os.File
	keyring *filter.Keyring
	nbd     []net.Listener
	tls     *tls.Config  // nil: NBD over TCP without TLS (loopback only)
	metrics net.Listener // nil: no --metrics-listen
	shim    net.Listener // nil: --shim-socket none
	api     net.Listener // inherited from the service manager; nil: start creates it last
	// inherited names the sockets the service manager passed (fdAPI...):
	// their paths belong to it, so stop leaves them in place.
	inherited map[string]bool
	// handedOver names the sockets a gateway handed over (--takeover):
	// ours to remove on stop, but in the fd store already if the old
	// process stored them.
	handedOver map[string]bool
	// byName is every listening socket by its fd name, inherited or made
	// (for systemd's fd store).
	byName map[string]net.Listener
}

// preflight takes the data directory's lock and checks and opens what a
// bad flag or a busy port would otherwise fail after the pool was
// created: the API socket, the keyring, the NBD and metrics listeners.
// A listener the service manager passed (svc) is taken instead of made.
func preflight(a *gatewayArgs, svc *service) (*started, error) {
	lock, err := lockDataDir(a.DataDir)
	if err != nil {
		return nil, err
	}
	pre := &started{lock: lock, inherited: map[string]bool{}, handedOver: map[string]bool{}, byName: map[string]net.Listener{}}
	fail := func(err error) (*started, error) {
		pre.close()
		return nil, err
	}
	// take hands an inherited listener over to pre (closed with it).
	take := func(name string) net.Listener {
		l := svc.take(name)
		if l != nil && !svc.handedOver {
			pre.inherited[name] = true
		}
		if l != nil && svc.handedOver {
			pre.handedOver[name] = true
		}
		return l
	}
	// An inherited API socket answers already (the kernel queues
	// connections): it is ours, not a running gateway's.
	if pre.api = take(fdAPI); pre.api == nil {
		if err := checkNotRunning(a.APISocket); err != nil {
			return fail(err)
		}
	}
	if pre.keyring, err = loadKeyring(a.Keyring); err != nil {
		return fail(err)
	}
	if pre.tls, err = nbdTLS(a.NBDTLSCert, a.NBDTLSKey, a.NBDTLSCA); err != nil {
		return fail(err)
	}
	if addr := a.NBDListen; addr != "" {
		if !controller.IsLoopback(addr) && pre.tls == nil {
			// Beyond loopback a client has no local user to authorize
			// and the traffic would be in the clear.
			return fail(fmt.Errorf("--nbd-listen %s is not a loopback address: NBD over the network needs TLS with client certificates (--nbd-tls-cert, --nbd-tls-key, --nbd-tls-ca); or listen on 127.0.0.1, or use the unix socket", addr))
		}
		l := take(fdNBDTCP)
		if l == nil {
			if l, err = net.Listen("tcp", addr); err != nil {
				return fail(fmt.Errorf("NBD listen on %s: %w", addr, err))
			}
		}
		pre.nbd = append(pre.nbd, l)
		pre.byName[fdNBDTCP] = l
	}
	if a.NBDSocket != "none" {
		l := take(fdNBD)
		if l == nil {
			if l, err = listenUnix(a.NBDSocket, 0o600); err != nil {
				return fail(fmt.Errorf("NBD socket: %w", err))
			}
		}
		pre.nbd = append(pre.nbd, l)
		pre.byName[fdNBD] = l
	}
	if a.ShimSocket != "none" {
		if pre.shim = take(fdShim); pre.shim == nil {
			if pre.shim, err = shim.Listen(a.ShimSocket); err != nil {
				return fail(fmt.Errorf("shim socket: %w", err))
			}
		}
		pre.byName[fdShim] = pre.shim
	}
	if addr := a.MetricsListen; addr != "" {
		if pre.metrics = take(fdMetrics); pre.metrics == nil {
			if pre.metrics, err = net.Listen("tcp", addr); err != nil {
				return fail(fmt.Errorf("metrics listen on %s: %w", addr, err))
			}
		}
		pre.byName[fdMetrics] = pre.metrics
	}
	return pre, nil
}

// nbdTLS builds the NBD door's TLS config from --nbd-tls-cert, -key and
// -ca (all or none): the server's certificate, and the CA that signs
// client certificates, whose common name is the tenant the client may use.
func nbdTLS(cert, key, ca string) (*tls.Config, error) {
	if cert == "" && key == "" && ca == "" {
		return nil, nil
	}
	if cert == "" || key == "" || ca == "" {
		return nil, usageErr("--nbd-tls-cert, --nbd-tls-key and --nbd-tls-ca go together")
	}
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return nil, fmt.Errorf("NBD TLS certificate: %w", err)
	}
	pem, err := os.ReadFile(ca)
	if err != nil {
		return nil, fmt.Errorf("NBD TLS CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("NBD TLS CA %s: no PEM certificate in it", ca)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{pair},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// close releases the listeners (a failed start) and, last, the lock.
func (p *started) close() {
	for _, l := range p.nbd {
		l.Close()
	}
	if p.metrics != nil {
		p.metrics.Close()
	}
	if p.shim != nil {
		p.shim.Close()
	}
	if p.api != nil {
		p.api.Close() // an inherited API socket start never served
	}
	p.lock.Close()
}

// lockDataDir creates the data directory and takes an exclusive lock on
// its "lock" file for the life of the process, so that a second gateway
// on the same directory stops before it touches anything.
func lockDataDir(dir string) (*os.File, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	path := filepath.Join(dir, "lock")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("data directory lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			b, _ := os.ReadFile(path)
			return nil, fmt.Errorf("a gateway (pid %s) is already using data directory %s: stop it first, or use another --data-dir",
				strings.TrimSpace(string(b)), dir)
		}
		return nil, fmt.Errorf("data directory lock %s: %w", path, err)
	}
	f.Truncate(0)
	fmt.Fprintf(f, "%d\n", os.Getpid())
	return f, nil
}

// reloadOnHangup reloads the keyring on each SIGHUP until ctx ends.
func reloadOnHangup(ctx context.Context, g *gateway.Gateway, log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-hup:
			if _, err := g.ReloadKeyring(ctx); err != nil {
				log.Error("keyring reload on SIGHUP refused", "err", err)
			}
		case <-ctx.Done():
			return
		}
	}
}

// checkNotRunning refuses to start when another gateway answers on the API
// socket, and removes a stale socket file left by one that died.
func checkNotRunning(socket string) error {
	if _, err := os.Stat(socket); err != nil {
		return nil
	}
	if conn, err := net.DialTimeout("unix", socket, time.Second); err == nil {
		conn.Close()
		return fmt.Errorf("a gateway is already serving %s", socket)
	}
	return os.Remove(socket)
}

// listenUnix creates a unix socket with the given mode, atomically
// (internal/listen.Unix).
func listenUnix(path string, mode os.FileMode) (net.Listener, error) {
	return listen.Unix("unix", path, mode)
}

// nbdExports resolves NBD export names ("tenant/volume") to volumes.
type nbdExports struct{ g *gateway.Gateway }

// Only block volumes are exports: an fs volume's bytes are a namespace,
// not a disk, so it is neither listed nor served (a client that names one
// is told to mount it).
func (e nbdExports) Lookup(name string) (nbd.Export, error) {
	v, err := e.g.Volume(name)
	if err != nil {
		return nil, err
	}
	if v.Kind() != gateway.KindBlock {
		return nil, fmt.Errorf("%s is an fs volume, not a block device: %w: mount it with `sluice mount`", name, gateway.ErrInvalid)
	}
	return v, nil
}

// Authorize lets a client reach the exports of tenants its local user
// may use (Gateway.MayUse): root and the gateway's user all of them,
// others those granted with `sluice tenant allow`.
// A client that came through TLS reaches the tenant named by its
// verified certificate, and only that one.
func (e nbdExports) Authorize(p nbd.Peer, name string) bool {
	tenant, _, err := gateway.SplitRef(name)
	if err != nil {
		return false
	}
	if p.TLS {
		return p.Tenant != "" && p.Tenant == tenant
	}
	return e.g.MayUse(p.UID, tenant)
}

func (e nbdExports) Names() []string {
	var names []string
	for _, v := range e.g.Volumes() {
		if v.Kind() == gateway.KindBlock {
			names = append(names, v.Ref())
		}
	}
	return names
}

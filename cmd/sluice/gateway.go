package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/attach"
	"github.com/sluice-storage/sluice/controller"
	"github.com/sluice-storage/sluice/fuse"
	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/gateway/admin"
	"github.com/sluice-storage/sluice/gateway/filter"
	"github.com/sluice-storage/sluice/nbd"
	"github.com/sluice-storage/sluice/virtio"
)

func gatewayCommand() *cli.Command {
	return &cli.Command{
		Name:  "gateway",
		Usage: "run the per-host gateway daemon",
		Description: `Opens (or creates) the pool and serves its volumes over NBD and the admin API.
The API socket appears only once everything is ready to serve, so scripts can
wait for it. SIGTERM or SIGINT drains in-flight requests and flushes.`,
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "data-dir", Value: defaultDataDir, Usage: "metadata, default pool file and sockets live here"},
			&cli.StringFlag{Name: "device", Usage: "an existing pool file or block device (default DATA-DIR/pool, created on first start)"},
			&cli.StringFlag{Name: "pool-size", Value: "64G", Usage: "size of the default sparse pool file; with --device, grows a pool file to it"},
			&cli.StringFlag{Name: "api-socket", Usage: "admin API socket (default DATA-DIR/api.sock)"},
			&cli.StringFlag{Name: "nbd-listen", Value: "127.0.0.1:10809", Usage: "NBD TCP address (\"\" to disable)"},
			&cli.StringFlag{Name: "nbd-socket", Usage: "NBD unix socket (default DATA-DIR/nbd.sock, \"none\" to disable)"},
			&cli.StringFlag{Name: "nbd-tls-cert", Usage: "`PEM` certificate of the NBD door: TCP clients must then use TLS (STARTTLS) with a client certificate"},
			&cli.StringFlag{Name: "nbd-tls-key", Usage: "`PEM` private key of --nbd-tls-cert"},
			&cli.StringFlag{Name: "nbd-tls-ca", Usage: "`PEM` CA that signs client certificates; a certificate's common name is the one tenant its client may use"},
			&cli.BoolFlag{Name: "nbd-read-only", Usage: "serve every export of the NBD door (socket and TCP) read-only; attached devices follow their volume's read-only flag"},
			&cli.StringFlag{Name: "attach-method", Value: "auto", Usage: "how 'sluice attach' makes devices: nbd (the kernel's nbd driver over netlink), loop (a loop device over the volume's FUSE image) or auto (nbd where /dev/nbd* exists)"},
			&cli.StringFlag{Name: "metrics-listen", Usage: "also serve /metrics on this TCP address; keep it on loopback (per-tenant counters are readable by anyone who reaches it)"},
			&cli.BoolFlag{Name: "pprof", Usage: "also serve Go's /debug/pprof profiles on --metrics-listen (goroutine stacks, heap; for debugging only)"},
			&cli.IntFlag{Name: "qos-slots", Value: 16, Usage: "requests routed by QoS rules that may run at once; reservations and weights act when more wait"},
			&cli.Float64Flag{Name: "qos-capacity-iops", Usage: "device capacity for QoS-routed IO in 8 KiB IO/s (0 = unknown); set it so reservations and weights divide it when the pool is never busy"},
			&cli.StringFlag{Name: "qos-cost-unit", Value: "8K", Usage: "IO size that counts as one IO for QoS IOPS (larger IOs count proportionally)"},
			&cli.StringFlag{Name: "keyring", Usage: "`FILE` of tenants' encryption keys, one line \"TENANT BASE64-OF-32-BYTES\" each, mode 0600 or 0400"},
			&cli.StringFlag{Name: "virtio-wait", Value: "adaptive", Usage: "how virtio export queues wait for requests: adaptive, eventfd or poll"},
			&cli.StringFlag{Name: "log-level", Value: "info"},
		}, joinFlags()...),
		Action: runGateway,
	}
}

func runGateway(c *cli.Context) error {
	log, err := newLogger(c.String("log-level"))
	if err != nil {
		return err
	}
	poolSize, err := parseSize(c.String("pool-size"))
	if err != nil {
		return usageErr("--pool-size: %v", err)
	}
	if poolSize <= 0 {
		return usageErr("--pool-size must be above 0 (the default is 64G)")
	}
	if c.String("device") != "" && !c.IsSet("pool-size") {
		poolSize = 0 // a named device keeps its size unless --pool-size says otherwise
	}
	switch c.String("attach-method") {
	case attach.MethodAuto, attach.MethodNBD, attach.MethodLoop:
	default:
		return usageErr("--attach-method must be auto, nbd or loop")
	}
	if c.Int("qos-slots") < 1 {
		return usageErr("--qos-slots must be at least 1")
	}
	if v := c.Float64("qos-capacity-iops"); v < 0 || v > 1e12 {
		return usageErr("--qos-capacity-iops must be 0 (unknown) or a positive rate")
	}
	costUnit, err := parseSize(c.String("qos-cost-unit"))
	if err != nil || costUnit < 512 || costUnit > 16<<20 {
		return usageErr("--qos-cost-unit %q: want a size from 512 to 16M", c.String("qos-cost-unit"))
	}
	virtioWait, err := virtio.ParseWaitMode(c.String("virtio-wait"))
	if err != nil {
		return usageErr("--virtio-wait: %v", err)
	}
	join, err := parseJoinFlags(c)
	if err != nil {
		return err
	}
	join.ceiling = capacityCeiling(c.Float64("qos-capacity-iops"), costUnit)
	dataDir := c.String("data-dir")
	apiSocket := c.String("api-socket")
	if apiSocket == "" {
		apiSocket = filepath.Join(dataDir, "api.sock")
	}
	nbdSocket := c.String("nbd-socket")
	if nbdSocket == "" {
		nbdSocket = filepath.Join(dataDir, "nbd.sock")
	}
	startup := func(err error) error { return &exitError{exitStartup, err} }

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	// Everything that can be checked is checked before the store is
	// opened (which creates the pool file on a first start).
	pre, err := preflight(c, dataDir, apiSocket, nbdSocket)
	var ee *exitError
	if errors.As(err, &ee) {
		return err // a usage error stays one
	} else if err != nil {
		return startup(err)
	}
	defer pre.close()
	g, err := gateway.Open(ctx, gateway.Config{DataDir: dataDir, Device: c.String("device"), PoolSize: poolSize, QoSSlots: c.Int("qos-slots"),
		QoSCapacityIOPS: c.Float64("qos-capacity-iops"), QoSCostUnit: costUnit, Keyring: pre.keyring, Logger: log})
	if err != nil {
		return startup(err)
	}
	defer func() {
		if err := g.Close(); err != nil {
			log.Error("closing the store", "err", err)
		}
	}()
	go reloadOnHangup(ctx, g, log)

	reg := prometheus.NewRegistry()
	reg.MustRegister(gateway.NewCollector(g), collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	srv := nbd.NewServer(nbdExports{g}, nbd.Options{ReadOnly: c.Bool("nbd-read-only"), Logger: log})
	for _, l := range pre.nbd {
		go func(l net.Listener) {
			var err error
			if _, tcp := l.Addr().(*net.TCPAddr); tcp && pre.tls != nil {
				err = srv.ServeTLS(ctx, l, pre.tls)
			} else {
				err = srv.Serve(ctx, l)
			}
			if err != nil && ctx.Err() == nil {
				log.Error("NBD server stopped", "listen", l.Addr().String(), "err", err)
			}
		}(l)
	}
	var metricsSrv *http.Server
	if pre.metrics != nil {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		if c.Bool("pprof") {
			mux.HandleFunc("/debug/pprof/", pprof.Index)
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		}
		metricsSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go metricsSrv.Serve(pre.metrics)
	}
	mounts := fuse.NewManager(g, log)
	defer mounts.Close()
	// Attached nbd devices get a server of their own: the door's
	// --nbd-read-only does not apply to them, and it stops after the
	// attacher has flushed and released them (defers run last first).
	attachSrv := nbd.NewServer(nbdExports{g}, nbd.Options{Logger: log})
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := attachSrv.Shutdown(ctx); err != nil {
			log.Warn("attached devices' NBD connections did not drain", "err", err)
		}
	}()
	attacher, err := attach.New(g, mounts, attach.Options{Dir: filepath.Join(dataDir, "attach"), Method: c.String("attach-method"), NBD: attachSrv, Logger: log})
	if err != nil {
		return startup(err)
	}
	defer attacher.Close()
	vexports, err := virtio.NewExports(g, filepath.Join(dataDir, "virtio"), virtio.ServerOptions{Wait: virtio.WaitOptions{Mode: virtioWait}, Logger: log})
	if err != nil {
		return startup(err)
	}
	defer vexports.Close(context.Background())
	doors := admin.Doors{Mounts: mountDoor{mounts}, Attachments: attachDoor{attacher}, Virtio: virtioDoor{vexports}}
	if join.url != "" {
		j, err := joinController(ctx, g, join, apiSocket, log)
		if err != nil {
			return startup(err)
		}
		defer j.close() // before g.Close
		doors.Controller = j
	}

	// Last: the API socket, whose appearance tells scripts we are ready.
	apiL, err := listenUnix(apiSocket, 0o600)
	if err != nil {
		return startup(fmt.Errorf("API socket: %w", err))
	}
	apiSrv := &http.Server{Handler: admin.NewHandler(g, reg, log, doors), ReadHeaderTimeout: 10 * time.Second}
	go apiSrv.Serve(apiL)
	log.Info("gateway ready", "api", apiSocket, "nbd", c.String("nbd-listen"), "nbd_socket", nbdSocket, "volumes", len(g.Volumes()))

	<-ctx.Done()
	log.Info("shutting down: draining NBD requests and flushing")
	shutCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	apiSrv.Shutdown(shutCtx)
	os.Remove(apiSocket)
	if err := srv.Shutdown(shutCtx); err != nil {
		log.Warn("NBD drain incomplete", "err", err)
	}
	if metricsSrv != nil {
		metricsSrv.Shutdown(shutCtx)
	}
	if nbdSocket != "none" {
		os.Remove(nbdSocket)
	}
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
}

// preflight takes the data directory's lock and checks and opens what a
// bad flag or a busy port would otherwise fail after the pool was
// created: the API socket, the keyring, the NBD and metrics listeners.
func preflight(c *cli.Context, dataDir, apiSocket, nbdSocket string) (*started, error) {
	lock, err := lockDataDir(dataDir)
	if err != nil {
		return nil, err
	}
	pre := &started{lock: lock}
	fail := func(err error) (*started, error) {
		pre.close()
		return nil, err
	}
	if err := checkNotRunning(apiSocket); err != nil {
		return fail(err)
	}
	if pre.keyring, err = loadKeyring(c.String("keyring")); err != nil {
		return fail(err)
	}
	if pre.tls, err = nbdTLS(c); err != nil {
		return fail(err)
	}
	if addr := c.String("nbd-listen"); addr != "" {
		if !controller.IsLoopback(addr) && pre.tls == nil {
			// Beyond loopback a client has no local user to authorize
			// and the traffic would be in the clear.
			return fail(fmt.Errorf("--nbd-listen %s is not a loopback address: NBD over the network needs TLS with client certificates (--nbd-tls-cert, --nbd-tls-key, --nbd-tls-ca); or listen on 127.0.0.1, or use the unix socket", addr))
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return fail(fmt.Errorf("NBD listen on %s: %w", addr, err))
		}
		pre.nbd = append(pre.nbd, l)
	}
	if nbdSocket != "none" {
		l, err := listenUnix(nbdSocket, 0o600)
		if err != nil {
			return fail(fmt.Errorf("NBD socket: %w", err))
		}
		pre.nbd = append(pre.nbd, l)
	}
	if addr := c.String("metrics-listen"); addr != "" {
		if pre.metrics, err = net.Listen("tcp", addr); err != nil {
			return fail(fmt.Errorf("metrics listen on %s: %w", addr, err))
		}
	}
	return pre, nil
}

// nbdTLS builds the NBD door's TLS config from --nbd-tls-cert, -key and
// -ca (all or none): the server's certificate, and the CA that signs
// client certificates, whose common name is the tenant the client may use.
func nbdTLS(c *cli.Context) (*tls.Config, error) {
	cert, key, ca := c.String("nbd-tls-cert"), c.String("nbd-tls-key"), c.String("nbd-tls-ca")
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

// listenUnix creates a unix socket with the given mode, atomically: it binds
// a temporary name, sets the mode, then renames it into place.
func listenUnix(path string, mode os.FileMode) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	tmp := fmt.Sprintf("%s.%d.tmp", path, os.Getpid())
	os.Remove(tmp)
	l, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, err
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, mode); err != nil {
		l.Close()
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
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

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/urfave/cli/v2"

	"github.com/sluice-storage/sluice/controller"
)

func controllerCommand() *cli.Command {
	return &cli.Command{
		Name:  "controller",
		Usage: "run the cluster controller: tenant SLOs enforced across gateways",
		Description: `Holds tenant SLOs (cluster-wide minimum and maximum bandwidth and IOPS) and the
registry of gateways in DATA-DIR, hears each gateway's per-tenant report every
second, and computes every gateway's per-tenant limits (Crystal's algorithm:
minimums first, then an equal share of the spare). Gateways join with
` + "`sluice gateway --controller URL --gateway-id ID`" + `. Manage SLOs with ` + "`sluice slo`" + `,
watch with ` + "`sluice cluster status`" + `; Prometheus metrics are on /metrics.

Every API call but /v1/health carries a bearer token: the one in
--token-file, or one the controller generates in DATA-DIR/token (mode 0600) on
its first start. Clients pass it with --token-file (gateways with
--controller-token-file); without one they try ./sluice-controller/token.
Listening beyond loopback requires an explicit --token-file. SIGTERM or SIGINT stops it; gateways keep their
last assignments for their grace period.

With --etcd-endpoints the desired state lives in etcd under --etcd-prefix
instead (DATA-DIR then holds only the token), and any number of replicas
elect one leader through etcd: only the leader runs rounds and writes;
followers answer reads and refuse writes naming the leader (--advertise).`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "listen", Value: controller.DefaultListen, Usage: "HTTP address (HOST:PORT)"},
			&cli.StringFlag{Name: "data-dir", Value: "./sluice-controller", Usage: "desired state (SLOs, gateway registry) lives here"},
			&cli.StringFlag{Name: "token-file", Usage: "file holding the bearer token clients must send (required beyond loopback)"},
			&cli.DurationFlag{Name: "interval", Value: controller.DefaultInterval, Usage: "time between assignment rounds"},
			&cli.DurationFlag{Name: "report-timeout", Value: controller.DefaultReportTimeout, Usage: "a gateway silent this long loses its share"},
			&cli.StringFlag{Name: "log-level", Value: "info"},
			&cli.StringFlag{Name: "etcd-endpoints", Usage: "keep desired state in etcd and elect a leader there: URL[,URL...]"},
			&cli.StringFlag{Name: "etcd-prefix", Value: controller.DefaultEtcdPrefix, Usage: "etcd key prefix of this cluster's controller state"},
			&cli.StringFlag{Name: "etcd-cacert", Usage: "verify etcd's TLS certificate with this CA bundle (PEM)"},
			&cli.StringFlag{Name: "etcd-cert", Usage: "TLS client certificate for etcd (PEM)"},
			&cli.StringFlag{Name: "etcd-key", Usage: "TLS client key for etcd (PEM)"},
			&cli.StringFlag{Name: "etcd-user", Usage: "etcd user name"},
			&cli.StringFlag{Name: "etcd-password", Usage: "etcd password (or --etcd-password-file)"},
			&cli.StringFlag{Name: "etcd-password-file", Usage: "file holding the etcd password"},
			&cli.DurationFlag{Name: "etcd-session-ttl", Value: controller.DefaultEtcdSessionTTL, Usage: "leader lease: a dead leader is replaced within about this long"},
			&cli.StringFlag{Name: "advertise", Usage: "this replica's URL as followers and the status name it (default http://LISTEN)"},
		},
		Action: runController,
	}
}

func runController(c *cli.Context) error {
	if c.NArg() != 0 {
		return usageErr("controller: unexpected argument %q", c.Args().First())
	}
	log, err := newLogger(c.String("log-level"))
	if err != nil {
		return err
	}
	if c.Duration("interval") < 100*time.Millisecond || c.Duration("report-timeout") < c.Duration("interval") {
		return usageErr("--interval must be at least 100ms and --report-timeout at least the interval")
	}
	var token string
	if f := c.String("token-file"); f != "" {
		if token, err = controller.ReadTokenFile(f); err != nil {
			return usageErr("--token-file: %v", err)
		}
	}
	addr := c.String("listen")
	if err := controller.CheckListen(addr, token); err != nil {
		return usageErr("--listen: %v", err)
	}
	startup := func(err error) error { return &exitError{exitStartup, err} }
	if token == "" {
		// Every API call carries a token, also on loopback: any local
		// user could otherwise change SLOs or register a fake gateway.
		path := filepath.Join(c.String("data-dir"), controller.TokenFileName)
		tok, created, err := controller.EnsureTokenFile(path)
		if err != nil {
			return startup(err)
		}
		token = tok
		if created {
			log.Info("generated the API token; clients pass it with --token-file (gateways: --controller-token-file)", "token_file", path)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	store, err := etcdStore(ctx, c, log)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s, err := controller.Open(ctx, controller.Options{
		DataDir: c.String("data-dir"), Store: store, Interval: c.Duration("interval"), ReportTimeout: c.Duration("report-timeout"),
		Token: token, Logger: log, Registry: reg, Advertise: advertiseURL(c),
	})
	if err != nil {
		return startup(err)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		s.Close()
		return startup(fmt.Errorf("listen on %s: %w", addr, err))
	}
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second,
		WriteTimeout: controller.MaxWait + 10*time.Second, IdleTimeout: 2 * time.Minute}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(l) }()
	runDone := make(chan struct{})
	go func() {
		defer close(runDone)
		s.Run(ctx)
	}()
	log.Info("controller ready", "listen", l.Addr().String(), "data_dir", c.String("data-dir"), "token", token != "")

	var failed error
	select {
	case <-ctx.Done():
	case err := <-serveErr:
		if !errors.Is(err, http.ErrServerClosed) {
			failed = &exitError{exitFailed, fmt.Errorf("HTTP server on %s stopped: %w", addr, err)}
		}
	}
	log.Info("shutting down")
	stop()
	<-runDone
	// Close first: it releases long polls, so Shutdown does not wait for them.
	if err := s.Close(); err != nil {
		log.Error("closing the controller state", "err", err)
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(shutCtx)
	return failed
}

// etcdStore opens the etcd store --etcd-endpoints names (nil without it:
// the controller keeps its badger store in --data-dir).
func etcdStore(ctx context.Context, c *cli.Context, log *slog.Logger) (controller.Store, error) {
	eps := c.String("etcd-endpoints")
	if eps == "" {
		for _, f := range []string{"etcd-cacert", "etcd-cert", "etcd-key", "etcd-user", "etcd-password", "etcd-password-file"} {
			if c.IsSet(f) {
				return nil, usageErr("--%s needs --etcd-endpoints", f)
			}
		}
		return nil, nil
	}
	o := controller.EtcdOptions{
		Prefix: c.String("etcd-prefix"), CACert: c.String("etcd-cacert"), Cert: c.String("etcd-cert"), Key: c.String("etcd-key"),
		Username: c.String("etcd-user"), Password: c.String("etcd-password"), SessionTTL: c.Duration("etcd-session-ttl"),
		Logger: log,
	}
	for _, e := range strings.Split(eps, ",") {
		if e = strings.TrimSpace(e); e != "" {
			o.Endpoints = append(o.Endpoints, e)
		}
	}
	if f := c.String("etcd-password-file"); f != "" {
		if o.Password != "" {
			return nil, usageErr("--etcd-password and --etcd-password-file exclude each other")
		}
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, usageErr("--etcd-password-file: %v", err)
		}
		o.Password = strings.TrimRight(string(b), "\r\n")
	}
	if (o.Password != "") != (o.Username != "") {
		return nil, usageErr("etcd authentication needs both --etcd-user and a password")
	}
	o.Name = advertiseURL(c)
	st, err := controller.OpenEtcdStore(ctx, o)
	if err != nil {
		return nil, &exitError{exitStartup, err}
	}
	return st, nil
}

// advertiseURL is --advertise, or http:// + --listen: the URL clients reach
// this replica at, as the status and followers' refusals name it.
func advertiseURL(c *cli.Context) string {
	if u := c.String("advertise"); u != "" {
		return strings.TrimSuffix(u, "/")
	}
	return "http://" + c.String("listen")
}

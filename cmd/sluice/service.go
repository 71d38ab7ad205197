package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/sluice-storage/sluice/gateway/admin"
	"github.com/sluice-storage/sluice/internal/systemd"
)

// The names (FileDescriptorName= in a .socket unit, FDNAME= in the fd
// store) of the listening sockets `sluice gateway` takes from the service
// manager instead of creating them (docs/SYSTEMD.md).
const (
	fdAPI     = "api"     // --api-socket, ListenStream=PATH
	fdNBD     = "nbd"     // --nbd-socket, ListenStream=PATH
	fdNBDTCP  = "nbd-tcp" // --nbd-listen, ListenStream=ADDR:PORT
	fdShim    = "shim"    // --shim-socket, ListenSequentialPacket=PATH
	fdMetrics = "metrics" // --metrics-listen, ListenStream=ADDR:PORT
)

// service is the gateway's side of systemd: the notify socket (nil
// outside systemd: every call is a no-op), the watchdog interval (0:
// none), and the listening sockets it inherited.
type service struct {
	notify    *systemd.Notifier
	watchdog  time.Duration
	inherited map[string]net.Listener
	// fdStore is how many fds the manager's store takes ($FDSTORE, set by
	// systemd 254 and later from FileDescriptorStoreMax=); 0: none.
	fdStore int
	// handedOver: inherited came from a gateway that handed over
	// (--takeover), not from the service manager.
	handedOver bool
	// fuseFDs are the inherited fds named fuse-N: FUSE sessions of a
	// gateway that died, kept by the fd store (for the crash resume,
	// keeper.findHeld; named by os.File.Name).
	fuseFDs []*os.File
}

// newService reads NOTIFY_SOCKET, WATCHDOG_USEC and LISTEN_FDS (and
// unsets them) and matches each inherited fd to the listener its flag
// asks for. It runs before anything is opened or created: an fd that
// matches no listener is an error, and every inherited fd is closed.
func newService(a *gatewayArgs) (*service, error) {
	files, err := systemd.ListenFDs()
	if err != nil {
		return nil, err
	}
	s := &service{}
	s.inherited, s.fuseFDs, err = matchInherited(a, files)
	if err != nil {
		return nil, err
	}
	if s.watchdog, err = systemd.WatchdogFromEnv(); err != nil {
		s.closeInherited()
		return nil, err
	}
	if s.notify, err = systemd.NotifierFromEnv(); err != nil {
		s.closeInherited()
		return nil, err
	}
	if s.notify != nil {
		s.fdStore = systemd.FDStoreFromEnv()
	}
	return s, nil
}

// matchInherited makes each inherited fd the listener of the flag its
// name stands for, after checking it is the socket that flag describes
// (same kind, same path or address), so the socket unit and the flags
// cannot disagree about where clients connect. The fds named fuse-N (FUSE
// sessions from the fd store) are returned as they are, in fuseFDs. On an
// error it closes them all.
func matchInherited(a *gatewayArgs, files []*os.File) (_ map[string]net.Listener, fuseFDs []*os.File, _ error) {
	out := map[string]net.Listener{}
	fail := func(err error) (map[string]net.Listener, []*os.File, error) {
		for _, l := range out {
			l.Close()
		}
		for _, f := range append(files, fuseFDs...) {
			f.Close()
		}
		return nil, nil, err
	}
	for i := 0; len(files) > 0; i++ {
		f := files[0]
		files = files[1:]
		fd := systemd.ListenFDsStart + i
		name := f.Name()
		if isSessionName(name) {
			fuseFDs = append(fuseFDs, f)
			continue
		}
		network, flag, want := inheritedTarget(a, name)
		if network == "" {
			f.Close()
			if name == systemd.UnknownName {
				return fail(fmt.Errorf("inherited fd %d has no name (no LISTEN_FDNAMES): set FileDescriptorName= in the socket unit to %s", fd, fdNameList))
			}
			return fail(fmt.Errorf("inherited fd %d is named %q, which is none of the gateway's sockets (%s) nor a FUSE session (fuse-N)", fd, name, fdNameList))
		}
		if _, dup := out[name]; dup {
			f.Close()
			return fail(fmt.Errorf("inherited fd %d: a second socket named %q", fd, name))
		}
		if want == "" {
			f.Close()
			return fail(fmt.Errorf("inherited fd %d named %q, but %s disables that socket: enable it or drop the fd from the socket unit", fd, name, flag))
		}
		l, err := systemd.Listener(f, network)
		if err != nil {
			return fail(fmt.Errorf("inherited fd %d: %w", fd, err))
		}
		out[name] = l
		if err := sameAddress(l.Addr(), want); err != nil {
			return fail(fmt.Errorf("inherited fd %d named %q %w, but %s is %s: make the socket unit and the flag say the same", fd, name, err, flag, want))
		}
	}
	return out, fuseFDs, nil
}

var fdNameList = strings.Join([]string{fdAPI, fdNBD, fdNBDTCP, fdShim, fdMetrics}, ", ")

// inheritedTarget says what an inherited fd of that name must be: its
// network, the flag that configures it and the flag's value ("" when the
// flag disables the socket). network is "" for an unknown name.
func inheritedTarget(a *gatewayArgs, name string) (network, flag, want string) {
	unixPath := func(p string) string {
		if p == "none" {
			return ""
		}
		return p
	}
	switch name {
	case fdAPI:
		return "unix", "--api-socket", a.APISocket
	case fdNBD:
		return "unix", "--nbd-socket", unixPath(a.NBDSocket)
	case fdShim:
		return "unixpacket", "--shim-socket", unixPath(a.ShimSocket)
	case fdNBDTCP:
		return "tcp", "--nbd-listen", a.NBDListen
	case fdMetrics:
		return "tcp", "--metrics-listen", a.MetricsListen
	}
	return "", "", ""
}

// sameAddress checks that a listener is bound where a flag says: the same
// absolute path for a unix socket, the same port and IP for TCP (a flag
// with no host or an unspecified IP matches a socket on any address of
// the same family's wildcard).
//
// A unix socket the gateway made itself and handed to the fd store is
// bound to the temporary name internal/listen.Unix gives it before
// renaming it into place (PATH.PID.tmp): the kernel reports the name a
// socket was bound to, not where its file is now. That name counts as
// PATH.
func sameAddress(got net.Addr, want string) error {
	switch got := got.(type) {
	case *net.UnixAddr:
		g, err1 := filepath.Abs(got.Name)
		w, err2 := filepath.Abs(want)
		if err1 != nil || err2 != nil || (g != w && !isTempName(g, w)) {
			return fmt.Errorf("is bound to %q", got.Name)
		}
		return nil
	case *net.TCPAddr:
		w, err := net.ResolveTCPAddr("tcp", want)
		if err != nil {
			return fmt.Errorf("listens on %s (the flag does not resolve: %v)", got, err)
		}
		wildcard := (w.IP == nil || w.IP.IsUnspecified()) && got.IP.IsUnspecified()
		if w.Port != got.Port || !(wildcard || w.IP.Equal(got.IP)) {
			return fmt.Errorf("listens on %s", got)
		}
		return nil
	}
	return fmt.Errorf("is bound to %s", got)
}

// isTempName reports whether name is PATH.PID.tmp, the name
// internal/listen.Unix binds before renaming the socket to path.
func isTempName(name, path string) bool {
	rest, ok := strings.CutPrefix(name, path+".")
	if !ok {
		return false
	}
	pid, ok := strings.CutSuffix(rest, ".tmp")
	if !ok || pid == "" {
		return false
	}
	return strings.Trim(pid, "0123456789") == ""
}

// storeListeners hands the listening sockets this gateway made to the
// manager's fd store, one FDSTORE message per name, so that after a
// crash the manager passes them back (LISTEN_FDS) and clients that
// connect meanwhile wait in the socket's queue instead of being refused.
// Inherited sockets are not stored again: they are in the store already
// or belong to a .socket unit. Nothing is stored unless the manager says
// how many fds its store takes ($FDSTORE) and all of them fit.
func (s *service) storeListeners(pre *started, log *slog.Logger) {
	var names []string
	for name := range pre.byName {
		if !pre.inherited[name] && !pre.handedOver[name] {
			names = append(names, name)
		}
	}
	if s.fdStore < len(pre.byName) || len(names) == 0 {
		return
	}
	slices.Sort(names)
	for _, name := range names {
		f, err := pre.byName[name].(interface{ File() (*os.File, error) }).File()
		if err == nil {
			err = s.notify.StoreFDs(name, f)
			f.Close()
		}
		if err != nil {
			log.Warn("fd store: socket not stored (a restart after a crash will make a new one)", "socket", name, "err", err)
		}
	}
}

// take returns the inherited listener of that name and forgets it (the
// caller owns it now), or nil.
func (s *service) take(name string) net.Listener {
	l := s.inherited[name]
	delete(s.inherited, name)
	return l
}

// closeInherited closes what was inherited and not taken (a failed
// start). FUSE sessions' fds are closed here, not removed from the fd
// store: the next start may resume them.
func (s *service) closeInherited() {
	for name, l := range s.inherited {
		l.Close()
		delete(s.inherited, name)
	}
	for _, f := range s.takeFUSEFDs() {
		f.Close()
	}
}

// takeFUSEFDs returns the inherited FUSE sessions' fds and forgets them
// (the caller owns them now).
func (s *service) takeFUSEFDs() []*os.File {
	fds := s.fuseFDs
	s.fuseFDs = nil
	return fds
}

// fuseStoreRoom is how many FUSE sessions' fds the fd store takes: its
// room ($FDSTORE) less one for each of the gateway's listening sockets
// (sockets: counted whether stored or not, since a socket from a .socket
// unit is not in the store but one from an earlier start is, and the
// gateway cannot tell them apart; on the safe side). told is false when
// the manager did not say ($FDSTORE unset, systemd before 254) or there
// is no manager: nothing is stored then.
func (s *service) fuseStoreRoom(sockets int) (room int, told bool) {
	if s.notify == nil || s.fdStore <= 0 {
		return 0, false
	}
	return max(0, s.fdStore-sockets), true
}

// runWatchdog pings the service manager while the admin API answers,
// until ctx ends. systemd watches a service only while it runs (from
// READY=1 to STOPPING=1, src/core/service.c: service_set_state), so the
// gateway runs this between the two: start-up and shutdown are
// TimeoutStartSec='s and TimeoutStopSec='s to judge.
func (s *service) runWatchdog(ctx context.Context, a *gatewayArgs, status string, log *slog.Logger) {
	api := admin.NewClient(a.APISocket)
	s.notify.RunWatchdog(ctx, systemd.Watchdog{
		Interval: s.watchdog,
		Status:   status,
		Log:      log,
		Check: func(ctx context.Context) error {
			if err := api.Health(ctx); err != nil {
				return fmt.Errorf("admin API %s: %w", a.APISocket, err)
			}
			return nil
		},
	})
}

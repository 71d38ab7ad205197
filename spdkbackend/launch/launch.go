// Package launch starts an SPDK target (spdk_tgt, or the vhost-only
// target) as a child process and stops it again: what `sluice gateway
// --spdk-launch` runs, and what a test harness can run. It imports nothing
// of testing.
//
// The sequence: the target starts with --wait-for-rpc, so only start-up
// methods work; Start waits until its RPC socket accepts, calls
// framework_start_init and framework_wait_init, and returns. With a JSON
// config (--json) the target is started without --wait-for-rpc, which SPDK
// 23.01 refuses beside --json ("JSON configuration file can't be used
// together with --wait-for-rpc"): the config's loader initialises the
// framework itself once its start-up methods have run, so Start's
// framework_start_init answers "already initialised", which is accepted,
// and framework_wait_init waits for the config's bdevs. Stop sends SIGTERM (SPDK shuts its
// subsystems down and removes its sockets) and SIGKILL after a timeout.
// The child runs with Pdeathsig SIGKILL, so it does not outlive a parent
// that dies without stopping it, and in its own process group, so a ^C
// at the terminal reaches the parent only, which stops it in order.
package launch

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/sluice-storage/sluice/spdkbackend/rpc"
)

// Options configure Start.
type Options struct {
	// Program is the target's binary (spdk_tgt or vhost), or an SPDK
	// directory, meaning its bin/spdk_tgt. Its libraries are looked for in
	// the lib directory beside its bin directory (LD_LIBRARY_PATH).
	Program string
	// RPCSocket is where the target listens (-r); required.
	RPCSocket string
	// VhostDir is where its vhost controllers' sockets appear (-S;
	// default: RPCSocket's directory).
	VhostDir string
	// CoreMask is the reactors' cores (-m; default "0x1").
	CoreMask string
	// MemMiB is its huge-page memory (-s; default 256).
	MemMiB int
	// Config is an SPDK JSON config (what save_config writes) loaded at
	// start (--json): the bdevs to create, an NVMe controller to attach.
	Config string
	// LogPath receives the target's stdout and stderr (default: discarded).
	LogPath string
	// StopTimeout is how long Stop waits after SIGTERM before SIGKILL
	// (default 10 s).
	StopTimeout time.Duration
	// InitTimeout bounds the start, socket to initialised (default 60 s).
	InitTimeout time.Duration
	// ExtraArgs are passed to the target last.
	ExtraArgs []string
	// HugePageDir is where the kernel reports its 2 MiB huge pages
	// (default DefaultHugePageDir); Start checks that enough are free.
	HugePageDir string
	Logger      *slog.Logger
}

// Target is a running SPDK target started by Start.
type Target struct {
	RPCSocket string
	VhostDir  string
	Program   string

	opt    Options
	cmd    *exec.Cmd
	exited chan struct{} // closed once the process has been waited for
	err    error         // its exit status, once exited is closed
}

// ResolveProgram maps Options.Program to the binary to run: a directory
// means its bin/spdk_tgt.
func ResolveProgram(p string) (string, error) {
	st, err := os.Stat(p)
	if err != nil {
		return "", fmt.Errorf("SPDK program %s: %w", p, err)
	}
	if st.IsDir() {
		p = filepath.Join(p, "bin", "spdk_tgt")
		if st, err = os.Stat(p); err != nil {
			return "", fmt.Errorf("SPDK program: %w", err)
		}
	}
	if st.Mode()&0o111 == 0 || st.IsDir() {
		return "", fmt.Errorf("SPDK program %s is not an executable file", p)
	}
	return p, nil
}

// Args is the target's command line for opt (without the program).
func Args(opt Options) []string {
	args := []string{
		"-m", cmp.Or(opt.CoreMask, "0x1"), "-s", strconv.Itoa(cmp.Or(opt.MemMiB, 256)),
		// The huge page files are unlinked once mapped, so a killed
		// target leaves none behind in /dev/hugepages.
		"--huge-unlink",
		"-r", opt.RPCSocket, "-S", cmp.Or(opt.VhostDir, filepath.Dir(opt.RPCSocket)),
	}
	if opt.Config != "" {
		args = append(args, "--json", opt.Config)
	} else {
		args = append(args, "--wait-for-rpc")
	}
	return append(args, opt.ExtraArgs...)
}

// Start starts the target and returns once its framework is initialised.
// On an error the process, if started, is killed.
func Start(ctx context.Context, opt Options) (*Target, error) {
	if opt.RPCSocket == "" {
		return nil, errors.New("spdk launch: no RPC socket")
	}
	prog, err := ResolveProgram(opt.Program)
	if err != nil {
		return nil, fmt.Errorf("spdk launch: %w", err)
	}
	opt.StopTimeout = cmp.Or(opt.StopTimeout, 10*time.Second)
	opt.InitTimeout = cmp.Or(opt.InitTimeout, 60*time.Second)
	if opt.Logger == nil {
		opt.Logger = slog.Default()
	}
	if _, err := os.Stat(opt.RPCSocket); err == nil {
		// A live target there would get a second one fighting over
		// the socket; a stale socket file is SPDK's to replace.
		if c, err := net.Dial("unix", opt.RPCSocket); err == nil {
			c.Close()
			return nil, fmt.Errorf("spdk launch: an SPDK target already serves %s", opt.RPCSocket)
		}
	}
	if err := checkHugePages(prog, opt); err != nil {
		return nil, err
	}
	tg, err := spawn(prog, opt)
	if err != nil {
		return nil, err
	}
	opt.Logger.Info("SPDK target started", "program", prog, "pid", tg.Pid(), "args", Args(opt))
	ictx, cancel := context.WithTimeout(ctx, opt.InitTimeout)
	defer cancel()
	if err := tg.init(ictx); err != nil {
		tg.Kill()
		return nil, fmt.Errorf("spdk launch: %s: %w", prog, err)
	}
	return tg, nil
}

// spawn starts prog with opt's arguments and reaps it when it exits.
func spawn(prog string, opt Options) (*Target, error) {
	tg := &Target{RPCSocket: opt.RPCSocket, VhostDir: cmp.Or(opt.VhostDir, filepath.Dir(opt.RPCSocket)), Program: prog, opt: opt, exited: make(chan struct{})}
	tg.cmd = exec.Command(prog, Args(opt)...)
	tg.cmd.Env = os.Environ()
	if lib := filepath.Join(filepath.Dir(filepath.Dir(prog)), "lib"); isDir(lib) {
		tg.cmd.Env = append(tg.cmd.Env, "LD_LIBRARY_PATH="+lib)
	}
	if opt.LogPath != "" {
		logf, err := os.OpenFile(opt.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return nil, fmt.Errorf("spdk launch: log: %w", err)
		}
		defer logf.Close()
		tg.cmd.Stdout, tg.cmd.Stderr = logf, logf
	}
	tg.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := tg.cmd.Start(); err != nil {
		return nil, fmt.Errorf("spdk launch: start %s: %w", prog, err)
	}
	go func() {
		tg.err = tg.cmd.Wait()
		// DPDK leaves its run-time directory (named by the file prefix
		// SPDK gives it, spdk_pid<PID>) behind, however SPDK ends.
		os.RemoveAll(fmt.Sprintf("/var/run/dpdk/spdk_pid%d", tg.cmd.Process.Pid))
		close(tg.exited)
	}()
	return tg, nil
}

// init waits for the RPC socket, then starts the framework and waits for
// it.
func (tg *Target) init(ctx context.Context) error {
	for {
		select {
		case <-tg.exited:
			return fmt.Errorf("exited before serving RPC: %v%s", tg.err, tg.logHint())
		case <-ctx.Done():
			return fmt.Errorf("RPC socket %s did not appear: %w%s", tg.RPCSocket, ctx.Err(), tg.logHint())
		case <-time.After(20 * time.Millisecond):
		}
		if c, err := net.Dial("unix", tg.RPCSocket); err == nil {
			c.Close()
			break
		}
	}
	c, err := rpc.Dial(ctx, tg.RPCSocket, rpc.Options{Logger: tg.opt.Logger})
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.FrameworkStartInit(ctx); err != nil && !errors.Is(err, rpc.ErrAlreadyInitialized) {
		return fmt.Errorf("framework_start_init: %w%s", err, tg.logHint())
	}
	if err := c.FrameworkWaitInit(ctx); err != nil {
		return fmt.Errorf("framework_wait_init: %w%s", err, tg.logHint())
	}
	return nil
}

func (tg *Target) logHint() string {
	if tg.opt.LogPath == "" {
		return ""
	}
	return " (its output: " + tg.opt.LogPath + ")"
}

// Pid is the target's process id.
func (tg *Target) Pid() int { return tg.cmd.Process.Pid }

// Exited is closed once the target's process has ended.
func (tg *Target) Exited() <-chan struct{} { return tg.exited }

// Err is the process's exit status, once Exited is closed.
func (tg *Target) Err() error { return tg.err }

// Signal sends sig to the target.
func (tg *Target) Signal(sig os.Signal) error { return tg.cmd.Process.Signal(sig) }

// Stop ends the target: SIGCONT (in case it was stopped), SIGTERM, and
// SIGKILL if it has not exited within StopTimeout. It returns whether
// SIGKILL was needed; it is safe to call more than once and after the
// target died.
func (tg *Target) Stop() (killed bool) {
	select {
	case <-tg.exited:
		return false
	default:
	}
	tg.cmd.Process.Signal(syscall.SIGCONT)
	tg.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-tg.exited:
		return false
	case <-time.After(tg.opt.StopTimeout):
	}
	tg.opt.Logger.Warn("SPDK target did not exit after SIGTERM; killing it", "pid", tg.Pid(), "timeout", tg.opt.StopTimeout)
	tg.Kill()
	return true
}

// Kill ends the target with SIGKILL and waits for it.
func (tg *Target) Kill() {
	tg.cmd.Process.Kill()
	<-tg.exited
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

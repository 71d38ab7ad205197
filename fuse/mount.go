package fuse

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"sync/atomic"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/gateway"
)

// Options configure a mount. The zero value is usable.
type Options struct {
	ReadOnly bool
	Debug    bool // log every FUSE request
	Logger   *slog.Logger
	// Epoch: how many times the mount's FUSE session has been resumed
	// after a crash (resume.go); 0 for a session this process or a
	// planned handover's chain of processes has served from its INIT.
	Epoch uint32
}

// Mount is a live mount of one volume.
type Mount struct {
	Dir    string
	Volume string // tenant/name
	// Dev is the mount's device number, the st_dev of every file on it
	// (the shim door matches a file it is handed against it).
	Dev    uint64
	server *fuse.Server
	raw    fuse.RawFileSystem // go-fuse's node bridge (its tables are handed over)
	m      *mount
	asked  bool // ReadOnly as asked (Options), handed over with the mount
	// Epoch: how many times its session was resumed after a crash
	// (Options.Epoch).
	Epoch uint32
	// detaching: Detach was called (the mount goes on in another
	// process; its kept session stays kept).
	detaching atomic.Bool
	// stopNote stops the notifier (idempotent): before a detach, no
	// notification may reach the kernel from this process.
	stopNote func()
}

// mount is what every node of one mount shares.
type mount struct {
	vol      *gateway.Volume
	fs       gateway.Namespace // nil for a block volume
	log      *slog.Logger
	readOnly bool
	note     *notifier // fs volumes: keeps the kernel's caches true (notify.go)
	kc       *kcache   // fs volumes: what the kernel may cache of each file (kcache.go)
	img      *fs.Inode // block volumes: the image file, once the kernel has the mount
	// renames counts the renames and links made through the mount, once
	// go-fuse's tree has them: open files check their path again
	// (file.path).
	renames atomic.Uint64
	// crashed: the kernel's numbers (uint32) of the handles opened
	// before a crash whose fsync has not reported it yet (file.crashFh);
	// a handover carries them (HandoverState.CrashEIO).
	crashed sync.Map
}

// MountVolume mounts vol at dir (an existing directory) and serves it until
// Unmount. An fs volume shows its namespace; a block volume shows one file,
// ImageName. It returns when the kernel has the mount.
func MountVolume(ctx context.Context, vol *gateway.Volume, dir string, opts Options) (*Mount, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("mount point: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("mount point %s is not a directory: %w", dir, gateway.ErrInvalid)
	}
	p := prepare(vol, opts)
	raw := fs.NewNodeFS(p.root, p.opts)
	server, err := serve(dir, raw, &p.m.renames, &p.opts.MountOptions)
	if err != nil {
		p.unwatch()
		return nil, fmt.Errorf("mount %s at %s: %w", vol.Ref(), dir, err)
	}
	return p.start(server, raw, dir, opts)
}

// prepared is a mount before it serves: its shared state, root node and
// go-fuse options (the same for a new mount and one taken over, so that
// the kernel gets the same answers).
type prepared struct {
	m       *mount
	root    fs.InodeEmbedder
	opts    *fs.Options
	unwatch func()
}

func prepare(vol *gateway.Volume, opts Options) *prepared {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	m := &mount{vol: vol, fs: vol.Namespace(), log: opts.Logger, readOnly: opts.ReadOnly || vol.ReadOnly()}
	var root fs.InodeEmbedder
	if m.fs != nil {
		m.kc = newKcache()
		m.note = newNotifier(m.kc)
		root = &node{m: m, ino: gateway.RootIno}
	} else {
		root = &imageRoot{m: m}
	}
	to := cacheTimeout
	if m.fs == nil {
		to = imageTimeout
	}
	mo := fuse.MountOptions{
		FsName:               "sluice:" + vol.Ref(),
		Name:                 "sluice",
		MaxWrite:             fuse.MAX_KERNEL_WRITE, // 1 MiB writes
		MaxBackground:        64,
		AllowOther:           os.Geteuid() == 0,
		DirectMount:          os.Geteuid() == 0,
		IgnoreSecurityLabels: true,
		// Reads return bytes, not file descriptors: go-fuse's splice
		// path would fill a pipe with the reply header, find nothing to
		// splice and drain the pipe again, three wasted syscalls a read
		// (a fifth of the gateway's CPU in a 4 KiB random-read run).
		DisableSplice: true,
		Options:       []string{"default_permissions"},
		Debug:         opts.Debug,
		PanicHandler: func(p any) fuse.Status {
			// Called in go-fuse's deferred recover: the stack is the panic's.
			opts.Logger.Error("fuse: handler panicked; failed with EIO", "volume", vol.Ref(), "panic", fmt.Sprint(p),
				"stack", string(debug.Stack()))
			return fuse.EIO
		},
	}
	if m.readOnly {
		mo.Options = append(mo.Options, "ro")
	}
	unwatch := func() {}
	if m.note != nil {
		// Watch before the kernel can cache anything: reports of changes
		// made meanwhile wait in the queue.
		unwatch = m.fs.Watch(m.note)
	}
	p := &prepared{m: m, root: root, unwatch: unwatch, opts: &fs.Options{
		MountOptions:    mo,
		EntryTimeout:    &to,
		AttrTimeout:     &to,
		NegativeTimeout: &to,
		RootStableAttr:  &fs.StableAttr{Ino: gateway.RootIno},
		// A mode of 0000 is a mode: without this go-fuse reports 0644
		// (0755 for directories), and with default_permissions the kernel
		// then lets anyone read a file chmod'ed to 0.
		NullPermissions: true,
		// FUSE node IDs are the engine's inode numbers (never reused),
		// so the notifier names nodes the way the engine reports them.
		ExternalNodeID: m.fs != nil,
	}}
	p.opts.Resume = p.resumeOptions(opts.Epoch)
	return p
}

// start finishes a mount whose server serves: the notifier runs until
// the server ends or the mount is detached (Mount.Detach).
func (p *prepared) start(server *fuse.Server, raw fuse.RawFileSystem, dir string, opts Options) (*Mount, error) {
	m := p.m
	mt := &Mount{Dir: dir, Volume: m.vol.Ref(), server: server, raw: raw, m: m, asked: opts.ReadOnly, stopNote: p.unwatch, Epoch: opts.Epoch}
	if m.note != nil {
		m.note.srv = server
		stop, done := make(chan struct{}), make(chan struct{})
		go func() {
			m.note.run(stop)
			close(done)
		}()
		var once sync.Once
		mt.stopNote = func() {
			once.Do(func() {
				p.unwatch()
				close(stop)
				<-done
			})
		}
		go func() {
			server.Wait()
			mt.stopNote()
		}()
	}
	dev, err := deviceOf(dir)
	if err != nil {
		server.Unmount()
		return nil, fmt.Errorf("mount %s at %s: %w", m.vol.Ref(), dir, err)
	}
	mt.Dev = dev
	return mt, nil
}

// deviceOf returns the device number of the filesystem mounted at dir.
// AT_STATX_DONT_SYNC: the kernel answers from what it holds (st_dev is
// the mount's, never asked of the server), so the gateway does not send a
// request to its own mount.
func deviceOf(dir string) (uint64, error) {
	var st unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, dir, unix.AT_STATX_DONT_SYNC, unix.STATX_TYPE, &st); err != nil {
		return 0, fmt.Errorf("statx of the mount point: %w", err)
	}
	return unix.Mkdev(st.Dev_major, st.Dev_minor), nil
}

// Vol is the mounted volume.
func (m *Mount) Vol() *gateway.Volume { return m.m.vol }

// AskedReadOnly reports whether the mount was asked to be read-only
// (Options.ReadOnly; the volume's own read-only is read again).
func (m *Mount) AskedReadOnly() bool { return m.asked }

// ReadOnly reports whether the mount refuses writes.
func (m *Mount) ReadOnly() bool { return m.m.readOnly }

// Settle returns once the kernel has dropped what it cached of every
// change made through other doors before the call (fs volumes; notify.go).
func (m *Mount) Settle() {
	if m.m.note != nil {
		m.m.note.settle()
	}
}

// PageCached reports whether the kernel may hold pages of inode ino that
// were read or written through this mount (kcache.go): a door that
// changes the file's bytes behind the mount waits for Settle before it
// answers, so no read through the kernel sees the old bytes.
func (m *Mount) PageCached(ino uint64) bool { return m.m.kc != nil && m.m.kc.hasPages(ino) }

// Renames counts the renames and links made through the mount: a door
// that keeps a file's path looks it up again when the count moves.
func (m *Mount) Renames() uint64 { return m.m.renames.Load() }

// Session returns what the kernel's INIT negotiated on the mount's
// connection (kept for a crash resume).
func (m *Mount) Session() fuse.Session { return m.server.Session() }

// DupFD returns a duplicate of the mount's /dev/fuse fd (close-on-exec,
// the caller's): a holder keeps the connection alive with it across a
// crash of this process.
func (m *Mount) DupFD() (int, error) { return m.server.DupFD() }

// Unmount detaches the mount; it fails (EBUSY) while files on it are open,
// like umount(8).
func (m *Mount) Unmount() error { return m.server.Unmount() }

// Wait blocks until the mount is gone (unmounted here or by umount(8)).
func (m *Mount) Wait() { m.server.Wait() }

// ImageResized makes the kernel take a block volume's new size: its
// cached attributes of the image file are invalidated and read again, so
// that a loop device's LOOP_SET_CAPACITY finds the new size.
func (m *Mount) ImageResized() error {
	if m.m.img == nil {
		return fmt.Errorf("%s at %s has no image file: %w", m.Volume, m.Dir, gateway.ErrInvalid)
	}
	if errno := m.m.img.NotifyContent(0, 0); errno != 0 {
		return fmt.Errorf("invalidate the image of %s: %w", m.Volume, errno)
	}
	st, err := os.Stat(filepath.Join(m.Dir, ImageName))
	if err != nil {
		return err
	}
	if st.Size() != m.m.vol.Size() {
		return fmt.Errorf("the kernel sees %s's image at %d bytes after a resize to %d: %w", m.Volume, st.Size(), m.m.vol.Size(), gateway.ErrIO)
	}
	return nil
}

// serve mounts raw (go-fuse's node bridge) at dir and serves it, as
// fs.Mount does, counting in renames each rename and link go-fuse has
// made in its tree.
func serve(dir string, raw fuse.RawFileSystem, renames *atomic.Uint64, mo *fuse.MountOptions) (*fuse.Server, error) {
	server, err := fuse.NewServer(namesCounted{RawFileSystem: raw, n: renames}, dir, mo)
	if err != nil {
		return nil, err
	}
	go server.Serve()
	if err := server.WaitMount(); err != nil {
		return nil, err
	}
	return server, nil
}

// namesCounted is go-fuse's node bridge, counting renames and links after
// the bridge has moved or added the entry in its tree (node.Rename runs
// before that).
type namesCounted struct {
	fuse.RawFileSystem
	n *atomic.Uint64
}

func (c namesCounted) Rename(cancel <-chan struct{}, in *fuse.RenameIn, oldName, newName string) fuse.Status {
	defer c.n.Add(1)
	return doneIfResent(&in.InHeader, c.RawFileSystem.Rename(cancel, in, oldName, newName))
}

func (c namesCounted) Link(cancel <-chan struct{}, in *fuse.LinkIn, name string, out *fuse.EntryOut) fuse.Status {
	defer c.n.Add(1)
	return c.lookupIfResent(cancel, &in.InHeader, name, out, c.RawFileSystem.Link(cancel, in, name, out))
}

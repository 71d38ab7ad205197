package shim

import (
	"context"
	"encoding/binary"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/sluice-storage/sluice/gateway"
)

// FuzzControlMessage feeds the control-message parser hostile bytes with
// any number of fds: it returns a message of the one shape its type
// allows, or an error, and never panics; a hello it accepts gets a
// geometry check that never panics either.
func FuzzControlMessage(f *testing.F) {
	f.Add(helloMsg(32, 256<<10, 8<<20), uint8(2))
	reg := make([]byte, registerLen)
	putHeader(reg, msgRegister)
	f.Add(reg, uint8(1))
	un := make([]byte, unregisterLen)
	putHeader(un, msgUnregister)
	f.Add(un, uint8(0))
	f.Fuzz(func(t *testing.T, b []byte, nfds uint8) {
		m, err := parseMessage(b, int(nfds))
		if err != nil {
			return
		}
		switch m := m.(type) {
		case *hello:
			if nfds != 2 || len(b) != helloLen {
				t.Fatalf("hello of %d bytes with %d fds accepted", len(b), nfds)
			}
			if l, err := layoutOf(m, int64(m.Size)); err == nil && (l.size != int(m.Size) || l.dataStart < pageSize+l.slots*recordLen) {
				t.Fatalf("geometry %+v for %+v", l, m)
			}
		case *register:
			if nfds != 1 {
				t.Fatalf("register with %d fds accepted", nfds)
			}
		case *unregister:
			if nfds != 0 {
				t.Fatalf("unregister with %d fds accepted", nfds)
			}
		default:
			t.Fatalf("parsed %T", m)
		}
	})
}

// fuzzChannel is a channel as the handshake leaves it, on real shared
// memory, holding handle 1: a read-write file of a real fs volume (its
// gateway fd is a local file's: only its flags are read). No mount.
func fuzzChannel(f *testing.F) *channel {
	v := openVolume(f)
	ctx := context.Background()
	ns := v.Namespace()
	a, err := ns.CreateOpen(ctx, gateway.RootIno, "f", gateway.NewInode{Mode: syscall.S_IFREG | 0o644})
	if err != nil {
		f.Fatal(err)
	}
	local, err := os.OpenFile(filepath.Join(f.TempDir(), "fd"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { local.Close() })
	s := NewServer(mounts{}, Options{Logger: quietLogger()})
	c := newChannel(ctx, s, socketPair(f))
	l := layout{slots: 2, slotData: 8192}
	l.dataStart = 2 * pageSize
	l.size = l.dataStart + l.slots*l.slotData
	mem, err := unix.Mmap(-1, 0, l.size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { unix.Munmap(mem) })
	c.mem, c.l = mem, l
	file := &file{fd: int(local.Fd()), vol: v, ns: ns, ino: a.Ino, readable: true, writable: true}
	file.at.Store(&named{path: "f"})
	c.files[1] = file
	return c
}

// socketPair returns one end of a SOCK_SEQPACKET socketpair.
func socketPair(f *testing.F) *net.UnixConn {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		f.Fatal(err)
	}
	unix.Close(fds[1])
	file := os.NewFile(uintptr(fds[0]), "socketpair")
	defer file.Close()
	nc, err := net.FileConn(file)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { nc.Close() })
	return nc.(*net.UnixConn)
}

func recordBytes(op, arg uint32, handle uint64, off, length int64, data uint64) []byte {
	b := make([]byte, recordLen)
	le := binary.LittleEndian
	le.PutUint32(b[recOp:], op)
	le.PutUint32(b[recArg:], arg)
	le.PutUint64(b[recHandle:], handle)
	le.PutUint64(b[recOffset:], uint64(off))
	le.PutUint64(b[recLength:], uint64(length))
	le.PutUint64(b[recData:], data)
	return b
}

// FuzzRequest runs hostile request records against a real volume: every
// answer is a result or -errno within range, reads and writes never
// answer more than they asked, and nothing outside the data regions of
// the shared memory changes.
func FuzzRequest(f *testing.F) {
	c := fuzzChannel(f)
	data := uint64(c.l.dataStart)
	f.Add(recordBytes(opWrite, 0, 1, 0, 4096, data))
	f.Add(recordBytes(opRead, 0, 1, 0, 4096, data))
	f.Add(recordBytes(opFstat, 0, 1, 0, statLen, data+8192))
	f.Add(recordBytes(opFtruncate, 0, 1, 0, 1<<20, 0))
	f.Add(recordBytes(opFallocate, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 1, 0, 8192, 0))
	f.Add(recordBytes(opFsync, 0, 1, 0, 0, 0))
	f.Add(recordBytes(opRead, 0, 7, 0, 16, 8))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < recordLen {
			return
		}
		r := decodeRecord(b[:recordLen])
		if r.op == opFtruncate || r.op == opFallocate || r.op == opWrite {
			// Keep the volume's files small: lengths and offsets past
			// 1 GiB only fail ENOSPC, slowly.
			if r.offset > 1<<30 || r.length > 1<<30 {
				r.offset, r.length = r.offset%(1<<30), r.length%(1<<30)
			}
		}
		before := append([]byte(nil), c.mem[:c.l.dataStart]...)
		res := c.exec(c.file(r.handle), r)
		if res.status == statusDone && res.value < 0 && res.value < -4095 {
			t.Fatalf("%+v: result %d is neither an answer nor -errno", r, res.value)
		}
		if (r.op == opRead || r.op == opWrite) && res.status == statusDone && res.value > 0 && res.value > r.length {
			t.Fatalf("%+v: answered %d bytes", r, res.value)
		}
		if string(before) != string(c.mem[:c.l.dataStart]) {
			t.Fatalf("%+v: the header or the records changed", r)
		}
	})
}

// Copyright 2026 the Go-FUSE Authors. All rights reserved.
// Use of this source code is governed by a BSD-style
// license that can be found in the LICENSE file.

// Sluice patch (see PATCHES.md): handing a live FUSE session from one
// Server to another, in this process or another one, without
// unmounting: Detach stops a Server at a request boundary and gives up
// its /dev/fuse fd; NewServerSession serves such an fd, whose INIT was
// answered long ago, with the settings INIT negotiated.

package fuse

import (
	"errors"
	"fmt"
	"syscall"
	"unsafe"
)

// Session is what a FUSE connection's INIT negotiated, which a Server
// serving the connection after a handover needs: the kernel's INIT
// request and the capability flags the answer granted.
type Session struct {
	Kernel     InitIn
	Negotiated uint64
}

// Session returns what INIT negotiated on this server's connection.
func (ms *Server) Session() Session {
	return Session{Kernel: ms.kernelSettings, Negotiated: ms.negotiatedFlags}
}

// Detach stops the server at a request boundary without unmounting:
// its readers stop reading /dev/fuse (a reader waiting for a request is
// woken through an eventfd; one that has read a request handles it),
// and Detach returns once every request read has been answered and
// Serve has returned. Requests the kernel sends from then on wait in
// the connection's queue. It returns a duplicate of the /dev/fuse fd
// (close-on-exec, owned by the caller; a plain fd, not an *os.File,
// which would put it in this process's poller) and closes the
// server's own;
// the server must not be used afterwards, and the file system's
// OnUnmount is not called. The caller must stop sending notifications
// (InodeNotify etc.) before calling it. Serve must be running.
func (ms *Server) Detach() (int, error) {
	if !ms.detaching.CompareAndSwap(false, true) {
		return -1, errors.New("fuse: Detach called twice")
	}
	if err := ms.fuseFD.stop(); err != nil {
		return -1, fmt.Errorf("fuse: waking the readers: %w", err)
	}
	<-ms.detached
	var nfd int
	var derr error
	if err := ms.fuseFD.withFD(func(fd int) {
		nfd, derr = fcntlDupCloexec(fd)
	}); err != nil {
		return -1, err
	}
	ms.fuseFD.close()
	if derr != nil {
		return -1, fmt.Errorf("fuse: duplicating /dev/fuse: %w", derr)
	}
	ms.mountPoint = ""
	return nfd, nil
}

func fcntlDupCloexec(fd int) (int, error) {
	r, _, errno := syscall.Syscall(syscall.SYS_FCNTL, uintptr(fd), syscall.F_DUPFD_CLOEXEC, 0)
	if errno != 0 {
		return -1, errno
	}
	return int(r), nil
}

// NewServerSession serves fs on an existing FUSE connection: fd is its
// /dev/fuse fd (as Detach returned it, possibly passed from another
// process; the server owns it from here, also on error), mountPoint where
// it is mounted (for Unmount), and s what its INIT negotiated (Session
// of the server that answered INIT). No INIT is read: the first request
// read is the next ordinary one. opts should be those the connection
// was mounted with (MaxWrite sizes the read buffers). fs.Init is
// called, then Serve must be called as after NewServer; WaitMount
// returns at once.
func NewServerSession(fs RawFileSystem, fd int, mountPoint string, opts *MountOptions, s Session) (*Server, error) {
	ms, _ := newServer(fs, opts)
	syscall.CloseOnExec(fd)
	ms.mountPoint = mountPoint
	var err error
	if ms.fuseFD, err = ms.newFuseFD(fd); err != nil {
		return nil, err
	}
	ms.protocolServer.writev = ms.fuseFD.writev
	ms.kernelSettings = s.Kernel
	ms.negotiatedFlags = s.Negotiated
	if ms.kernelSettings.Minor >= 13 {
		ms.setSplice()
	}
	ms.fileSystem.Init(ms)
	ms.ready <- nil
	ms.fuseFD.loops.Add(1)
	return ms, nil
}

// Sluice patch (crash resume): the kernel's FUSE_NOTIFY_RESEND.

const (
	// notifyResend is FUSE_NOTIFY_RESEND (include/uapi/linux/fuse.h,
	// kernel 6.9+).
	notifyResend = 7
	// hasResend is FUSE_HAS_RESEND (1 << 39) as it appears in InitIn's
	// Flags2: the kernel knows FUSE_NOTIFY_RESEND.
	hasResend = 1 << (39 - 32)
	// UniqueResend is FUSE_UNIQUE_RESEND: the bit the kernel sets in the
	// unique ID of a request it sends again after NotifyResend.
	UniqueResend = uint64(1) << 63
)

// CanResend reports whether the kernel advertised FUSE_NOTIFY_RESEND in
// its INIT request.
func (ms *Server) CanResend() bool { return ms.kernelSettings.Flags2&hasResend != 0 }

// NotifyResend asks the kernel to send again every request some reader
// of the connection read but never answered (fs/fuse/dev.c:
// fuse_resend moves them from the processing lists back to the pending
// queue, with UniqueResend set in their unique IDs). A server that
// takes over a connection whose previous server died calls it once it
// serves, or the programs waiting for those answers wait forever. ENOSYS
// if the kernel does not know the notification.
func (ms *Server) NotifyResend() Status {
	if !ms.CanResend() {
		return ENOSYS
	}
	if ms.writev == nil {
		return ENOSYS
	}
	hdr := make([]byte, sizeOfOutHeader)
	h := (*OutHeader)(unsafe.Pointer(&hdr[0]))
	h.Length = uint32(sizeOfOutHeader)
	h.Status = notifyResend
	_, errno := ms.writev([][]byte{hdr})
	return Status(errno)
}

// DupFD returns a close-on-exec duplicate of the server's /dev/fuse fd,
// owned by the caller: something outside this process may keep the
// connection alive with it (a crash-resume holder). Sluice patch.
func (ms *Server) DupFD() (int, error) {
	var nfd int
	var derr error
	if err := ms.fuseFD.withFD(func(fd int) {
		nfd, derr = fcntlDupCloexec(fd)
	}); err != nil {
		return -1, err
	}
	return nfd, derr
}

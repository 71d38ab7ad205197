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

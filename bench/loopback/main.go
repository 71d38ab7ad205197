// Command loopback is the peer of bench/fuse.sh: go-fuse's loopback
// filesystem (fs.NewLoopbackRoot) over a native directory, with FUSE
// passthrough disabled so that every read and write takes the classic FUSE
// path through the daemon, like Sluice's, and the same mount options as
// Sluice's FUSE door (1 MiB writes, 1 s entry/attr/negative timeouts).
//
//	loopback MOUNTPOINT ORIGINAL
//
// It prints "ready" once mounted and unmounts on SIGINT/SIGTERM.
package main

import (
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: loopback MOUNTPOINT ORIGINAL")
		os.Exit(2)
	}
	root, err := fs.NewLoopbackRoot(os.Args[2])
	if err != nil {
		log.Fatal(err)
	}
	sec := time.Second
	server, err := fs.Mount(os.Args[1], root, &fs.Options{
		EntryTimeout: &sec, AttrTimeout: &sec, NegativeTimeout: &sec,
		MountOptions: fuse.MountOptions{
			FsName: "loopback", Name: "loopback", MaxWrite: fuse.MAX_KERNEL_WRITE, MaxBackground: 64,
			DirectMount: true, AllowOther: true, IgnoreSecurityLabels: true,
			Options:              []string{"default_permissions"},
			DisabledCapabilities: fuse.CAP_PASSTHROUGH,
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("ready")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() { <-sig; server.Unmount() }()
	server.Wait()
}

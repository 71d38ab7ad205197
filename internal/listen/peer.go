package listen

import (
	"net"
	"strconv"

	"golang.org/x/sys/unix"
)

// PeerCred returns the credentials of a unix socket's peer (SO_PEERCRED:
// the process that connected, as the kernel saw it), or ok false for any
// other connection.
func PeerCred(c net.Conn) (cred *unix.Ucred, ok bool) {
	uc, isUnix := c.(*net.UnixConn)
	if !isUnix {
		return nil, false
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return nil, false
	}
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || cerr != nil {
		return nil, false
	}
	return cred, true
}

// ClientKey names the client behind a connection for per-client limits
// and logs: the IP address of a TCP peer, "uid:N" of a unix socket's
// peer, "local" for anything else.
func ClientKey(c any) string {
	nc, ok := c.(net.Conn)
	if !ok {
		return "local"
	}
	if cred, ok := PeerCred(nc); ok {
		return "uid:" + strconv.FormatUint(uint64(cred.Uid), 10)
	}
	if a, ok := nc.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP.String()
	}
	return "local"
}

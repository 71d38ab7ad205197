package listen

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"net"
	"os"
	"strconv"
	"strings"
)

// LoopbackUID returns the local user that owns the client end of a TCP
// connection from the loopback address: the kernel lists every TCP socket
// of the network namespace with its owner in /proc/net/tcp and tcp6 (what
// identd answers from). ok is false for a remote client or when the
// socket is not found (the client closed it already).
func LoopbackUID(c net.Conn) (uid int, ok bool) {
	remote, rok := c.RemoteAddr().(*net.TCPAddr)
	local, lok := c.LocalAddr().(*net.TCPAddr)
	if !rok || !lok || !remote.IP.IsLoopback() {
		return -1, false
	}
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		if uid, ok := findSocketOwner(file, remote, local); ok {
			return uid, true
		}
	}
	return -1, false
}

// findSocketOwner scans one /proc/net/tcp* table for the socket whose
// local end is self and remote end is peer, and returns its uid.
func findSocketOwner(file string, self, peer *net.TCPAddr) (int, bool) {
	f, err := os.Open(file)
	if err != nil {
		return -1, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // header
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 8 {
			continue
		}
		l, lok := parseProcAddr(fields[1])
		r, rok := parseProcAddr(fields[2])
		if !lok || !rok || !sameAddr(l, self) || !sameAddr(r, peer) {
			continue
		}
		uid, err := strconv.Atoi(fields[7])
		return uid, err == nil
	}
	return -1, false
}

func sameAddr(a, b *net.TCPAddr) bool { return a.Port == b.Port && a.IP.Equal(b.IP) }

// parseProcAddr parses "0100007F:2A39" (IPv4) or the 32-hex-digit IPv6
// form: the address in 32-bit words of host byte order, the port in hex.
func parseProcAddr(s string) (*net.TCPAddr, bool) {
	h, p, ok := strings.Cut(s, ":")
	if !ok {
		return nil, false
	}
	raw, err := hex.DecodeString(h)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return nil, false
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return nil, false
	}
	ip := make(net.IP, len(raw))
	for i := 0; i < len(raw); i += 4 {
		binary.BigEndian.PutUint32(ip[i:], binary.LittleEndian.Uint32(raw[i:]))
	}
	return &net.TCPAddr{IP: ip, Port: int(port)}, true
}

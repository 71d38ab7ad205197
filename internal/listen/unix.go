package listen

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
)

// Unix creates a unix socket listener of network ("unix" or "unixpacket")
// at path with the given mode, atomically: it binds a temporary name, sets
// the mode, then renames it into place, so path never names a socket with
// another mode or one nobody listens on. The parent directory is created
// (0700) if missing. Closing the listener does not remove path.
func Unix(network, path string, mode os.FileMode) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	tmp := fmt.Sprintf("%s.%d.tmp", path, os.Getpid())
	os.Remove(tmp)
	l, err := net.ListenUnix(network, &net.UnixAddr{Name: tmp, Net: network})
	if err != nil {
		return nil, err
	}
	l.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, mode); err != nil {
		l.Close()
		return nil, err
	}
	if err := os.Rename(tmp, path); err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}

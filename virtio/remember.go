package virtio

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// RememberedFile is the name, in the exports' socket directory, of the
// file that lists the exports for the next start:
//
//	{"version":1,"exports":[{"volume":"t/vm","socket":"/abs/path.sock"},…]}
//
// It is replaced whole (written to a temporary file, synced, renamed, the
// directory synced) at every Export of a volume not yet exported and every
// Unexport, never at Close or HandOver: a stopped or killed gateway's
// exports are served again by the next one (Restore).
const RememberedFile = "exports.json"

const rememberedVersion = 1

type remembered struct {
	Version int          `json:"version"`
	Exports []ExportInfo `json:"exports"`
}

// remember writes the current exports to RememberedFile.
func (e *Exports) remember() error {
	e.saveMu.Lock()
	defer e.saveMu.Unlock()
	b, err := json.Marshal(remembered{Version: rememberedVersion, Exports: e.List()})
	if err != nil {
		return err
	}
	path := filepath.Join(e.dir, RememberedFile)
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("remember virtio exports: %w", err)
	}
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("remember virtio exports: %w", err)
	}
	d, err := os.Open(e.dir)
	if err != nil {
		return fmt.Errorf("remember virtio exports: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("remember virtio exports: sync %s: %w", e.dir, err)
	}
	return nil
}

// readRemembered parses RememberedFile; a missing file is no exports.
func readRemembered(path string) ([]ExportInfo, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var r remembered
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if r.Version != rememberedVersion {
		return nil, fmt.Errorf("%s: version %d, this gateway reads %d", path, r.Version, rememberedVersion)
	}
	for _, x := range r.Exports {
		if x.Volume == "" || !filepath.IsAbs(x.Socket) {
			return nil, fmt.Errorf("%s: export %q at %q: want a volume and an absolute socket path", path, x.Volume, x.Socket)
		}
	}
	return r.Exports, nil
}

// Restore serves again the exports the last gateway on this directory
// remembered, except those already served (adopted from a handover). An
// export that cannot be served (its volume deleted, its path taken) is
// logged and forgotten. It returns how many it served; an error means the
// file could not be read, and nothing was served.
func (e *Exports) Restore(ctx context.Context) (int, error) {
	xs, err := readRemembered(filepath.Join(e.dir, RememberedFile))
	if err != nil {
		return 0, fmt.Errorf("virtio exports to restore: %w", err)
	}
	n, dropped := 0, 0
	for _, x := range xs {
		if _, fresh, err := e.serve(x.Volume, x.Socket, nil); err != nil {
			e.log.Warn("virtio export not restored; forgotten", "volume", x.Volume, "socket", x.Socket, "err", err)
			dropped++
		} else if fresh {
			n++
		}
	}
	if dropped > 0 {
		if err := e.remember(); err != nil {
			e.log.Warn("virtio exports: forgetting the ones not restored", "err", err)
		}
	}
	return n, nil
}

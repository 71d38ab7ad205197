package store

// Checking badger's tables before and after it opens them. Metadata is the
// truth about where data lives, so a damaged table must stop the store,
// not shrink the chunk maps silently: badger verifies a data block's
// checksum only when asked, and when asked it crashes on a mismatch (a nil
// block in table.VerifyChecksum's error path, v4.9.6) or, for a table cut
// short, panics in its own goroutine while reading the footer. So:
//
//   - before badger.Open, checkTableFooters reads the footer of every
//     SST the MANIFEST lists and verifies its index checksum with bounds
//     checks, as badger's initIndex would without them;
//   - after it, verifyBlocks runs badger's VerifyChecksum over every
//     block of every table, turning its panic into an error;
//   - while the store runs, OnBlockRead makes each block read from disk
//     verify its checksum (Get returns the error; see badgerOptions).

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/dgraph-io/badger/v4"
	"github.com/dgraph-io/badger/v4/pb"
	"github.com/dgraph-io/badger/v4/table"
	"github.com/dgraph-io/badger/v4/y"
	"google.golang.org/protobuf/proto"
)

// ErrCorrupt: the metadata failed a checksum or is malformed. The store
// does not open on it.
var ErrCorrupt = errors.New("metadata is damaged")

// checkTableFooters verifies the footer and index checksum of every SST
// file that dir's MANIFEST lists. Others are not tables yet: a crash
// during a flush or a compaction leaves a new file, possibly empty, that
// badger deletes at open.
func checkTableFooters(dir string, opt badger.Options) error {
	fp, err := os.Open(filepath.Join(dir, "MANIFEST"))
	if errors.Is(err, os.ErrNotExist) {
		return nil // a new store
	} else if err != nil {
		return err
	}
	defer fp.Close()
	m, _, err := badger.ReplayManifestFile(fp, opt.ExternalMagicVersion, opt)
	if err != nil {
		return fmt.Errorf("metadata MANIFEST: %w: %w", ErrCorrupt, err)
	}
	for id := range m.Tables {
		f := table.NewFilename(id, dir)
		if err := checkTableFooter(f); err != nil {
			return fmt.Errorf("metadata table %s: %w: %w", filepath.Base(f), ErrCorrupt, err)
		}
	}
	return nil
}

// checkTableFooter reads an SST's trailer from the end: checksum length
// (4 bytes), the index checksum, index length (4 bytes), the index.
func checkTableFooter(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	pos := fi.Size()
	readAt := func(n int64) ([]byte, error) {
		if n < 0 || n > pos {
			return nil, fmt.Errorf("a length of %d bytes does not fit in the %d left (file cut short?)", n, pos)
		}
		pos -= n
		b := make([]byte, n)
		if _, err := f.ReadAt(b, pos); err != nil {
			return nil, err
		}
		return b, nil
	}
	b, err := readAt(4)
	if err != nil {
		return err
	}
	ck, err := readAt(int64(binary.BigEndian.Uint32(b)))
	if err != nil {
		return err
	}
	var want pb.Checksum
	if err := proto.Unmarshal(ck, &want); err != nil {
		return fmt.Errorf("index checksum record: %w", err)
	}
	if b, err = readAt(4); err != nil {
		return err
	}
	index, err := readAt(int64(binary.BigEndian.Uint32(b)))
	if err != nil {
		return err
	}
	if err := y.VerifyChecksum(index, &want); err != nil {
		return fmt.Errorf("index: %w", err)
	}
	return nil
}

// verifyBlocks checks every block of every table of db.
func verifyBlocks(db *badger.DB) (err error) {
	defer func() {
		if p := recover(); p != nil { // badger's error path dereferences the nil block
			err = fmt.Errorf("%w: a table block failed its checksum (badger: %v)", ErrCorrupt, p)
		}
	}()
	if err := db.VerifyChecksum(); err != nil {
		return fmt.Errorf("%w: %w", ErrCorrupt, err)
	}
	return nil
}

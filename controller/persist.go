package controller

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/sluice-storage/sluice/internal/badgerlog"
)

// Desired state in badger (and, under a prefix, in etcd: etcdstore.go). Keys:
//
//	slo/<tenant>      JSON SLO
//	gw/<id>           JSON GatewayRegistration
//	meta/generation   8 bytes big-endian: the generation of the last start
//
// Reports, assignments and liveness are not persisted: a restarted
// controller rebuilds them from the gateways' reports.
const (
	keySLO        = "slo/"
	keyGateway    = "gw/"
	keyGeneration = "meta/generation"
)

// badgerStore is the controller's badger database: one host, always
// writable.
type badgerStore struct {
	b *badger.DB
}

var _ Store = (*badgerStore)(nil)

// OpenBadgerStore opens (or creates) the database in dir; "" keeps it in
// memory.
func OpenBadgerStore(dir string, log *slog.Logger) (Store, error) {
	o := badger.DefaultOptions(dir)
	if dir == "" {
		o = badger.DefaultOptions("").WithInMemory(true)
	}
	// Tiny state: SLOs and a registry. Keep the footprint small and every
	// change on disk when the call returns.
	o = o.WithSyncWrites(true).
		WithMemTableSize(8 << 20).
		WithValueThreshold(64 << 10).
		WithNumMemtables(2).
		WithBlockCacheSize(1 << 20).
		WithIndexCacheSize(1 << 20).
		WithValueLogFileSize(16 << 20).
		WithNumCompactors(2).
		WithLogger(badgerlog.New(log)).
		WithLoggingLevel(badger.WARNING)
	b, err := badger.Open(o)
	if err != nil {
		return nil, fmt.Errorf("controller state in %q: %w", dir, err)
	}
	return &badgerStore{b: b}, nil
}

func (d *badgerStore) Close() error { return d.b.Close() }

// Term: one host, always the writer.
func (d *badgerStore) Term() uint64 { return 1 }

// Leader: there are no other replicas.
func (d *badgerStore) Leader(context.Context) string { return "" }

// NextGeneration keeps epochs growing across restarts, even after the
// data directory was lost.
func (d *badgerStore) NextGeneration(_ context.Context, now time.Time) (uint64, error) {
	var gen uint64
	err := d.b.Update(func(txn *badger.Txn) error {
		var prev uint64
		it, err := txn.Get([]byte(keyGeneration))
		switch {
		case errors.Is(err, badger.ErrKeyNotFound):
		case err != nil:
			return err
		default:
			if err := it.Value(func(v []byte) error {
				if len(v) != 8 {
					return fmt.Errorf("generation record is %d bytes, want 8", len(v))
				}
				prev = binary.BigEndian.Uint64(v)
				return nil
			}); err != nil {
				return err
			}
		}
		gen = nextGen(prev, now)
		return txn.Set([]byte(keyGeneration), binary.BigEndian.AppendUint64(nil, gen))
	})
	if err != nil {
		return 0, fmt.Errorf("controller generation: %w", err)
	}
	return gen, nil
}

func (d *badgerStore) Load(context.Context) (map[string]SLO, map[string]GatewayRegistration, error) {
	slos := map[string]SLO{}
	gws := map[string]GatewayRegistration{}
	err := d.b.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.DefaultIteratorOptions)
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			item := it.Item()
			key := string(item.Key())
			if !strings.HasPrefix(key, keySLO) && !strings.HasPrefix(key, keyGateway) {
				continue
			}
			if err := item.Value(func(v []byte) error { return decodeRecord(key, v, slos, gws) }); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("loading controller state: %w", err)
	}
	return slos, gws, nil
}

func (d *badgerStore) Put(_ context.Context, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := d.b.Update(func(txn *badger.Txn) error { return txn.Set([]byte(key), b) }); err != nil {
		return fmt.Errorf("storing %s: %w", key, err)
	}
	return nil
}

func (d *badgerStore) Delete(_ context.Context, key string) error {
	if err := d.b.Update(func(txn *badger.Txn) error { return txn.Delete([]byte(key)) }); err != nil {
		return fmt.Errorf("deleting %s: %w", key, err)
	}
	return nil
}

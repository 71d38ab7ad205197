package store

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/dgraph-io/badger/v4"
)

// Config records are small JSON documents the gateway keeps beside the
// volumes — QoS rules now, policies later — under 'r' KIND 0x00 ID. Each
// write is one durable transaction: configuration is rare and must survive
// a crash as soon as the API has answered.

const prefixConfig = 'r'

func configKey(kind string, id uint64) []byte {
	k := append([]byte{prefixConfig}, kind...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, id)
}

// NextConfigID hands out the next id for records of kind (never reused).
func (s *Store) NextConfigID(kind string) (uint64, error) {
	var id uint64
	err := s.db.Update(func(txn *badger.Txn) error {
		key := CounterKey("config/" + kind)
		item, err := txn.Get(key)
		switch {
		case errors.Is(err, badger.ErrKeyNotFound):
		case err != nil:
			return err
		default:
			if err := item.Value(func(b []byte) error { id = binary.BigEndian.Uint64(b); return nil }); err != nil {
				return err
			}
		}
		id++
		return txn.Set(key, binary.BigEndian.AppendUint64(nil, id))
	})
	if err != nil {
		return 0, fmt.Errorf("store: config id: %w", err)
	}
	return id, s.db.Sync()
}

// PutConfig stores a record durably.
func (s *Store) PutConfig(kind string, id uint64, doc []byte) error {
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Set(configKey(kind, id), doc) }); err != nil {
		return fmt.Errorf("store: put %s %d: %w", kind, id, err)
	}
	return s.db.Sync()
}

// DeleteConfig removes a record durably.
func (s *Store) DeleteConfig(kind string, id uint64) error {
	if err := s.db.Update(func(txn *badger.Txn) error { return txn.Delete(configKey(kind, id)) }); err != nil {
		return fmt.Errorf("store: delete %s %d: %w", kind, id, err)
	}
	return s.db.Sync()
}

// LoadConfig calls fn for every record of kind, in id order.
func (s *Store) LoadConfig(kind string, fn func(id uint64, doc []byte) error) error {
	prefix := append(append([]byte{prefixConfig}, kind...), 0)
	return s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: true})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			k := it.Item().Key()
			if len(k) != len(prefix)+8 {
				continue
			}
			id := binary.BigEndian.Uint64(k[len(prefix):])
			if err := it.Item().Value(func(b []byte) error { return fn(id, b) }); err != nil {
				return fmt.Errorf("store: %s %d: %w", kind, id, err)
			}
		}
		return nil
	})
}

package store

import "testing"

// TestEntryCacheSpread: every chunk of a 4 GiB object (64 Ki chunks of
// 64 KiB) gets its own slot, and the chunks of several objects share few:
// a collision is a badger lookup on every read of the chunks involved.
func TestEntryCacheSpread(t *testing.T) {
	var c entryCache
	used := func(keys []entryKey) int {
		seen := map[*entrySlot]bool{}
		for _, k := range keys {
			seen[c.slot(k)] = true
		}
		return len(seen)
	}
	var one []entryKey
	for idx := range int64(entrySlots) {
		one = append(one, entryKey{vol: 1, idx: idx, valid: true})
	}
	if n := used(one); n != entrySlots {
		t.Errorf("one object of %d chunks uses %d slots", entrySlots, n)
	}
	// Four 256 MiB objects (volumes 1-2, inodes 0-1), a quarter of the
	// slots: a random hash would lose ~12% of them to collisions, and so may
	// this one (objects start at unrelated places), but not much more.
	var four []entryKey
	for vol := uint64(1); vol <= 2; vol++ {
		for ino := uint64(0); ino <= 1; ino++ {
			for idx := range int64(entrySlots / 16) {
				four = append(four, entryKey{vol: vol, ino: ino, idx: idx, valid: true})
			}
		}
	}
	if n := used(four); n < len(four)*85/100 {
		t.Errorf("four objects of %d chunks use %d slots of %d", entrySlots/16, n, entrySlots)
	}
}

package store

import "testing"

// TestEntryCacheSpread: every chunk of a 4 GiB object (64 Ki chunks of
// 64 KiB) gets its own slot, and the chunks of several objects share few:
// a collision is a badger lookup on every read of the chunks involved.
func TestEntryCacheSpread(t *testing.T) {
	c := newEntryCache(0)
	if len(c.slots) != minEntrySlots || len(newEntryCache(8<<30).slots) != 1<<17 || len(newEntryCache(1<<40).slots) != maxEntrySlots {
		t.Fatalf("slots for a small, an 8 GiB and a 1 TiB pool: %d %d %d", len(c.slots), len(newEntryCache(8<<30).slots), len(newEntryCache(1<<40).slots))
	}
	used := func(keys []entryKey) int {
		seen := map[*entrySlot]bool{}
		for _, k := range keys {
			seen[c.slot(k)] = true
		}
		return len(seen)
	}
	var one []entryKey
	for idx := range int64(minEntrySlots) {
		one = append(one, entryKey{vol: 1, idx: idx, valid: true})
	}
	if n := used(one); n != minEntrySlots {
		t.Errorf("one object of %d chunks uses %d slots", minEntrySlots, n)
	}
	// Four 256 MiB objects (volumes 1-2, inodes 0-1), a quarter of the
	// slots: a random hash would lose ~12% of them to collisions, and so may
	// this one (objects start at unrelated places), but not much more.
	var four []entryKey
	for vol := uint64(1); vol <= 2; vol++ {
		for ino := uint64(0); ino <= 1; ino++ {
			for idx := range int64(minEntrySlots / 16) {
				four = append(four, entryKey{vol: vol, ino: ino, idx: idx, valid: true})
			}
		}
	}
	if n := used(four); n < len(four)*85/100 {
		t.Errorf("four objects of %d chunks use %d slots of %d", minEntrySlots/16, n, minEntrySlots)
	}
}

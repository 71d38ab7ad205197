package filter

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"
)

// TestSectoredReadsInPart: a chunk under sectored encryption opens sector
// by sector, any run of sectors on its own, and the bytes equal the plain
// chunk's; a flipped byte or two swapped sectors fail authentication.
func TestSectoredReadsInPart(t *testing.T) {
	env := NewEnv(testKeyring(t))
	defer env.Close()
	c := mustChain(t, mustFilter(t, env, "encryption", nil))
	plain := random(65536)
	stored, rec := roundTrip(t, env, c, ctxA, plain)
	l, ok := PartialLayout(rec)
	if !ok || l.Stride != SectorSize+16 || l.PlainLen != len(plain) || len(stored) != 16*l.Stride {
		t.Fatalf("layout %+v ok=%v for %d stored bytes", l, ok, len(stored))
	}
	for _, r := range [][2]int{{0, 1}, {3, 1}, {15, 1}, {2, 5}, {0, 16}} {
		first, n := r[0], r[1]
		got, err := env.ReverseSectors(ctxA, nil, stored[first*l.Stride:(first+n)*l.Stride], l, first)
		if err != nil || !bytes.Equal(got, plain[first*SectorSize:(first+n)*SectorSize]) {
			t.Fatalf("sectors %d+%d: %v", first, n, err)
		}
	}
	// Sector 3 presented as sector 4, or in another chunk: refused.
	if _, err := env.ReverseSectors(ctxA, nil, stored[3*l.Stride:4*l.Stride], l, 4); !errors.Is(err, ErrAuth) {
		t.Fatalf("moved sector: %v", err)
	}
	other := ctxA
	other.ChunkIndex++
	if _, err := env.ReverseSectors(other, nil, stored[:l.Stride], l, 0); !errors.Is(err, ErrAuth) {
		t.Fatalf("sector of another chunk: %v", err)
	}
	// Swapped sectors and a flipped byte fail the whole-chunk read too.
	swapped := append([]byte(nil), stored...)
	copy(swapped[0:l.Stride], stored[l.Stride:2*l.Stride])
	copy(swapped[l.Stride:2*l.Stride], stored[0:l.Stride])
	if _, err := env.Reverse(ctxA, nil, swapped, rec); !errors.Is(err, ErrAuth) {
		t.Fatalf("swapped sectors: %v", err)
	}
	flipped := append([]byte(nil), stored...)
	flipped[5*l.Stride+100] ^= 1
	if _, err := env.ReverseSectors(ctxA, nil, flipped[5*l.Stride:6*l.Stride], l, 5); !errors.Is(err, ErrAuth) {
		t.Fatalf("flipped byte: %v", err)
	}
	if got, err := env.ReverseSectors(ctxA, nil, flipped[4*l.Stride:5*l.Stride], l, 4); err != nil || !bytes.Equal(got, plain[4*SectorSize:5*SectorSize]) {
		t.Fatalf("a neighbour of the flipped sector: %v", err)
	}
	// A short last sector.
	stored, rec = roundTrip(t, env, c, ctxA, plain[:5000])
	l, _ = PartialLayout(rec)
	if got, err := env.ReverseSectors(ctxA, nil, stored[l.Stride:], l, 1); err != nil || !bytes.Equal(got, plain[4096:5000]) {
		t.Fatalf("short last sector: %v", err)
	}
}

// TestPartialLayoutNeedsWholeChunk: only encryption (sectored) and noop
// chains read in part; compression or checksum anywhere needs the chunk.
func TestPartialLayoutNeedsWholeChunk(t *testing.T) {
	env := NewEnv(testKeyring(t))
	defer env.Close()
	for _, tc := range []struct {
		filters []string
		partial bool
	}{
		{[]string{"encryption"}, true},
		{[]string{"noop", "encryption"}, true},
		{[]string{"noop"}, true},
		{[]string{"compression", "encryption"}, false},
		{[]string{"encryption", "checksum"}, false},
		{[]string{"checksum"}, false},
	} {
		var fs []*Filter
		for _, n := range tc.filters {
			fs = append(fs, mustFilter(t, env, n, nil))
		}
		_, rec := roundTrip(t, env, mustChain(t, fs...), ctxA, compressible(65536))
		if _, ok := PartialLayout(rec); ok != tc.partial {
			t.Errorf("%v: partial %v, want %v", tc.filters, ok, tc.partial)
		}
	}
}

// TestWholeChunkEncryptionStillReads: chunks written by the first version
// (algo 1: one AES-256-GCM seal over the whole chunk) still read back, and
// are read whole.
func TestWholeChunkEncryptionStillReads(t *testing.T) {
	kr := testKeyring(t)
	env := NewEnv(kr)
	defer env.Close()
	k, err := kr.key("acme")
	if err != nil {
		t.Fatal(err)
	}
	plain := compressible(65536)
	nonce := make([]byte, nonceLen)
	rand.Read(nonce)
	ad := chunkAD(ctxA)
	stored := k.aead.Seal(nil, nonce, plain, ad[:])
	rec, err := Record{PlainLen: uint32(len(plain)), Steps: []Step{{ID: idEncryption, Args: append(append([]byte{cryptAESGCM}, k.id[:]...), nonce...)}}}.Append(nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := env.Reverse(ctxA, nil, stored, rec)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("algo 1 chunk: %v", err)
	}
	if _, ok := PartialLayout(rec); ok {
		t.Fatal("an algo 1 chunk cannot be read in part")
	}
}

package filter

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"strings"
	"testing"
)

// testKeyring has keys for tenants "acme" and "globex".
func testKeyring(t testing.TB) *Keyring {
	t.Helper()
	var text strings.Builder
	for _, tenant := range []string{"acme", "globex"} {
		k := make([]byte, 32)
		rand.Read(k)
		fmt.Fprintf(&text, "%s %s\n", tenant, base64.StdEncoding.EncodeToString(k))
	}
	k, err := ParseKeyring(strings.NewReader(text.String()), "test")
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustFilter(t testing.TB, env *Env, name string, params map[string]string) *Filter {
	t.Helper()
	f, err := New(env, name, params)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func mustChain(t testing.TB, fs ...*Filter) *Chain {
	t.Helper()
	c, err := NewChain(fs...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// compressible is text-like data; random is not compressible.
func compressible(n int) []byte {
	b := make([]byte, 0, n)
	r := mrand.New(mrand.NewPCG(1, 2))
	words := []string{"sluice ", "storage ", "gateway ", "chunk ", "tenant ", "volume ", "\n"}
	for len(b) < n {
		b = append(b, words[r.IntN(len(words))]...)
	}
	return b[:n]
}

func random(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

var ctxA = ChunkContext{VolumeID: 7, Inode: 0, ChunkIndex: 42, Tenant: "acme"}

func roundTrip(t *testing.T, env *Env, c *Chain, cc ChunkContext, plain []byte) (stored, rec []byte) {
	t.Helper()
	prefix := []byte("prefix")
	stored, rec, err := c.Forward(cc, append([]byte(nil), prefix...), plain)
	if err != nil {
		t.Fatalf("%v: Forward: %v", c, err)
	}
	if !bytes.HasPrefix(stored, prefix) {
		t.Fatalf("%v: Forward did not append to dst", c)
	}
	stored = stored[len(prefix):]
	got, err := env.Reverse(cc, append([]byte(nil), prefix...), stored, rec)
	if err != nil {
		t.Fatalf("%v: Reverse: %v (record %v)", c, err, mustParse(t, rec))
	}
	if !bytes.Equal(got[len(prefix):], plain) || !bytes.HasPrefix(got, prefix) {
		t.Fatalf("%v: round trip of %d bytes changed the data", c, len(plain))
	}
	return stored, rec
}

func mustParse(t testing.TB, rec []byte) Record {
	r, err := ParseRecord(rec)
	if err != nil {
		t.Fatalf("record %x: %v", rec, err)
	}
	return r
}

func TestEachFilterRoundTrips(t *testing.T) {
	env := NewEnv(testKeyring(t))
	defer env.Close()
	filters := []struct {
		name   string
		params map[string]string
	}{
		{"compression", nil},
		{"compression", map[string]string{"level": "1"}},
		{"compression", map[string]string{"level": "19"}},
		{"compression", map[string]string{"algo": "lz4"}},
		{"encryption", nil},
		{"checksum", nil},
		{"noop", nil},
	}
	for _, f := range filters {
		c := mustChain(t, mustFilter(t, env, f.name, f.params))
		for _, n := range []int{0, 1, 63, 64, 4096, 65536, 1 << 20} {
			for _, data := range [][]byte{compressible(n), random(n)} {
				stored, rec := roundTrip(t, env, c, ctxA, data)
				r := mustParse(t, rec)
				if r.PlainLen != uint32(n) || len(r.Steps) != 1 {
					t.Fatalf("%v: record %v", c, r)
				}
				switch f.name {
				case "encryption":
					if len(stored) != n+16*max(1, (n+SectorSize-1)/SectorSize) || (n >= 16 && bytes.Contains(stored, data[:16])) {
						t.Fatalf("encryption: %d stored bytes for %d, or plaintext visible", len(stored), n)
					}
				case "checksum":
					sum, ok := r.Checksum()
					if !ok || sum != Checksum(stored) || !bytes.Equal(stored, data) {
						t.Fatalf("checksum: record %v", r)
					}
				case "noop":
					if !bytes.Equal(stored, data) {
						t.Fatal("noop changed data")
					}
				}
			}
		}
	}
}

func TestCompressionShrinksOrStoresRaw(t *testing.T) {
	env := NewEnv(nil)
	defer env.Close()
	for _, algo := range []string{"zstd", "lz4"} {
		c := mustChain(t, mustFilter(t, env, "compression", map[string]string{"algo": algo}))
		plain := compressible(64 << 10)
		stored, rec := roundTrip(t, env, c, ctxA, plain)
		if len(stored) > len(plain)/2 {
			t.Errorf("%s: 64 KiB of text compressed to %d bytes", algo, len(stored))
		}
		if s := mustParse(t, rec).String(); !strings.Contains(s, "compression("+algo) {
			t.Errorf("%s: record %s", algo, s)
		}
		noise := random(64 << 10)
		stored, rec = roundTrip(t, env, c, ctxA, noise)
		if !bytes.Equal(stored, noise) {
			t.Errorf("%s: incompressible data not stored raw", algo)
		}
		if r := mustParse(t, rec); r.Steps[0].Args[0] != compressNone {
			t.Errorf("%s: incompressible data recorded as %v", algo, r)
		}
	}
}

func TestPipelineCompressionThenEncryption(t *testing.T) {
	env := NewEnv(testKeyring(t))
	defer env.Close()
	// checksum written first still runs last.
	c := mustChain(t,
		mustFilter(t, env, "checksum", nil),
		mustFilter(t, env, "compression", map[string]string{"algo": "lz4"}),
		mustFilter(t, env, "encryption", nil),
		mustFilter(t, env, "cache", map[string]string{"size": "64MiB"}))
	if got := c.String(); !strings.HasPrefix(got, "compression(") || !strings.Contains(got, "| encryption(") ||
		!strings.Contains(got, "| checksum(") || !strings.HasSuffix(got, "| cache(size=67108864)") {
		t.Fatalf("chain order: %s", got)
	}
	if c.Control("cache") == nil || c.Control("cache").Param("size") != "67108864" || c.Plain() {
		t.Fatal("cache control missing")
	}
	plain := compressible(64 << 10)
	stored, rec := roundTrip(t, env, c, ctxA, plain)
	r := mustParse(t, rec)
	if len(r.Steps) != 3 || r.Steps[0].ID != idCompression || r.Steps[1].ID != idEncryption || r.Steps[2].ID != idChecksum {
		t.Fatalf("record %v", r)
	}
	if len(stored) > len(plain)/2 {
		t.Fatalf("compress-then-encrypt stored %d bytes", len(stored))
	}
	if bytes.Contains(stored, []byte("sluice ")) {
		t.Fatal("plaintext visible in stored bytes")
	}
	// A new policy (encryption only) does not affect reading old chunks:
	// Reverse uses only the record.
	c2 := mustChain(t, mustFilter(t, env, "encryption", nil))
	_, rec2 := roundTrip(t, env, c2, ctxA, plain)
	if bytes.Equal(rec, rec2) {
		t.Fatal("records equal")
	}
	got, err := env.Reverse(ctxA, nil, stored, rec)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("old chunk after policy change: %v", err)
	}
}

func TestIdentityStepsBetweenTransforms(t *testing.T) {
	// noop between two data-changing steps must not make them share a buffer.
	env := NewEnv(testKeyring(t))
	defer env.Close()
	c := mustChain(t,
		mustFilter(t, env, "compression", nil),
		mustFilter(t, env, "noop", nil),
		mustFilter(t, env, "encryption", nil),
		mustFilter(t, env, "checksum", nil))
	for i := 0; i < 20; i++ {
		roundTrip(t, env, c, ctxA, compressible(1000+i*997))
		roundTrip(t, env, c, ctxA, random(1000+i*997))
	}
}

func TestTamperIsDetected(t *testing.T) {
	env := NewEnv(testKeyring(t))
	defer env.Close()
	plain := compressible(64 << 10)
	cases := []struct {
		filters []string
		want    error
	}{
		{[]string{"checksum"}, ErrChecksum},
		{[]string{"encryption"}, ErrAuth},
		{[]string{"compression", "encryption"}, ErrAuth},
		{[]string{"compression", "encryption", "checksum"}, ErrChecksum},
		{[]string{"compression", "checksum"}, ErrChecksum},
	}
	for _, tc := range cases {
		var fs []*Filter
		for _, n := range tc.filters {
			fs = append(fs, mustFilter(t, env, n, nil))
		}
		c := mustChain(t, fs...)
		stored, rec, err := c.Forward(ctxA, nil, plain)
		if err != nil {
			t.Fatal(err)
		}
		for _, pos := range []int{0, len(stored) / 2, len(stored) - 1} {
			bad := append([]byte(nil), stored...)
			bad[pos] ^= 0x40
			if _, err := env.Reverse(ctxA, nil, bad, rec); !errors.Is(err, tc.want) {
				t.Errorf("%v: flipped byte %d: err %v, want %v", tc.filters, pos, err, tc.want)
			}
		}
		if _, err := env.Reverse(ctxA, nil, stored[:len(stored)-1], rec); err == nil {
			t.Errorf("%v: truncated chunk read back", tc.filters)
		}
	}
}

func TestEncryptionBindsPlace(t *testing.T) {
	env := NewEnv(testKeyring(t))
	defer env.Close()
	c := mustChain(t, mustFilter(t, env, "encryption", nil))
	plain := random(4096)
	stored, rec, err := c.Forward(ctxA, nil, plain)
	if err != nil {
		t.Fatal(err)
	}
	for _, other := range []ChunkContext{
		{VolumeID: 8, Inode: 0, ChunkIndex: 42, Tenant: "acme"},
		{VolumeID: 7, Inode: 1, ChunkIndex: 42, Tenant: "acme"},
		{VolumeID: 7, Inode: 0, ChunkIndex: 43, Tenant: "acme"},
	} {
		if _, err := env.Reverse(other, nil, stored, rec); !errors.Is(err, ErrAuth) {
			t.Errorf("read at %v: err %v, want ErrAuth", other, err)
		}
	}
	// Another tenant's key has another key id.
	if _, err := env.Reverse(ChunkContext{VolumeID: 7, ChunkIndex: 42, Tenant: "globex"}, nil, stored, rec); !errors.Is(err, ErrKeyMismatch) {
		t.Errorf("other tenant: %v, want ErrKeyMismatch", err)
	}
	// Same place, same tenant, a fresh nonce each write.
	stored2, rec2, _ := c.Forward(ctxA, nil, plain)
	if bytes.Equal(stored, stored2) || bytes.Equal(rec, rec2) {
		t.Error("two writes of the same data encrypted identically (nonce reuse)")
	}
	// A reloaded keyring with a new key for the tenant: clear error.
	env.SetKeyring(testKeyring(t))
	if _, err := env.Reverse(ctxA, nil, stored, rec); !errors.Is(err, ErrKeyMismatch) {
		t.Errorf("after key change: %v, want ErrKeyMismatch", err)
	}
}

func TestTenantWithoutKey(t *testing.T) {
	env := NewEnv(testKeyring(t))
	defer env.Close()
	c := mustChain(t, mustFilter(t, env, "compression", nil), mustFilter(t, env, "encryption", nil))
	nokey := ChunkContext{VolumeID: 1, Tenant: "initech"}
	if err := c.CheckTenant("initech"); !errors.Is(err, ErrNoKey) || !strings.Contains(err.Error(), `"initech"`) {
		t.Fatalf("CheckTenant: %v", err)
	}
	if err := c.CheckTenant("acme"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := c.Forward(nokey, nil, compressible(4096)); !errors.Is(err, ErrNoKey) {
		t.Fatalf("Forward: %v", err)
	}
	envNone := NewEnv(nil)
	defer envNone.Close()
	c2 := mustChain(t, mustFilter(t, envNone, "encryption", nil))
	if _, _, err := c2.Forward(ctxA, nil, []byte("x")); !errors.Is(err, ErrNoKey) {
		t.Fatalf("nil keyring: %v", err)
	}
}

func TestPlainChain(t *testing.T) {
	var nilChain *Chain
	empty := mustChain(t)
	ctl := mustChain(t, mustFilter(t, nil, "cache", nil))
	env := NewEnv(nil)
	for _, c := range []*Chain{nilChain, empty, ctl} {
		if !c.Plain() {
			t.Fatalf("%v not plain", c)
		}
		stored, rec, err := c.Forward(ctxA, nil, []byte("abc"))
		if err != nil || rec != nil || string(stored) != "abc" {
			t.Fatalf("%v: Forward = %q %x %v", c, stored, rec, err)
		}
		got, err := env.Reverse(ctxA, nil, stored, nil)
		if err != nil || string(got) != "abc" {
			t.Fatal(err)
		}
	}
	if nilChain.String() != "plain" || nilChain.Control("cache") != nil || nilChain.CheckTenant("x") != nil {
		t.Fatal("nil chain")
	}
}

func TestNewChainErrors(t *testing.T) {
	env := NewEnv(nil)
	c := mustFilter(t, env, "compression", nil)
	if _, err := NewChain(c, mustFilter(t, env, "compression", map[string]string{"algo": "lz4"})); !errors.Is(err, ErrChain) {
		t.Fatalf("duplicate: %v", err)
	}
	if _, err := New(nil, "compression", nil); !errors.Is(err, ErrChain) {
		t.Fatalf("transform without env: %v", err)
	}
	if _, _, err := mustChain(t, c).Forward(ctxA, nil, make([]byte, MaxChunkSize+1)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("huge chunk: %v", err)
	}
}

func TestRecordRoundTripAndErrors(t *testing.T) {
	good := Record{PlainLen: 4096, Steps: []Step{
		{ID: idCompression, Args: []byte{compressZstd, 0, 0, 16, 0}},
		{ID: idEncryption, Args: append([]byte{cryptAESGCM, 1, 2, 3, 4}, make([]byte, 12)...)},
		{ID: idChecksum, Args: []byte{sumCRC32C, 0xde, 0xad, 0xbe, 0xef}},
		{ID: idNoop},
	}}
	b, err := good.Append([]byte("entry"))
	if err != nil {
		t.Fatal(err)
	}
	b = b[len("entry"):]
	if len(b) != 6+7+19+7+2 {
		t.Fatalf("record is %d bytes", len(b))
	}
	r, err := ParseRecord(b)
	if err != nil {
		t.Fatal(err)
	}
	if r.String() != good.String() || r.PlainLen != 4096 || len(r.Steps) != 4 {
		t.Fatalf("round trip: %v vs %v", r, good)
	}
	if _, ok := r.Checksum(); ok {
		t.Fatal("checksum not last, but Checksum() found one")
	}
	if !r.Has("encryption") || r.Has("cache") {
		t.Fatal("Has")
	}
	bad := map[string][]byte{
		"short":          {1, 1, 0, 0},
		"version 2":      {2, 1, 0, 0, 0, 0, idNoop, 0},
		"no steps":       {1, 0, 0, 0, 0, 0},
		"9 steps":        {1, 9, 0, 0, 0, 0},
		"huge plain":     {1, 1, 0xff, 0, 0, 0, idNoop, 0},
		"unknown id":     {1, 1, 0, 0, 0, 0, 99, 0},
		"id 0":           {1, 1, 0, 0, 0, 0, 0, 0},
		"truncated step": {1, 1, 0, 0, 0, 0, idChecksum},
		"short args":     {1, 1, 0, 0, 0, 0, idChecksum, 5, 1, 0, 0},
		"wrong arg len":  {1, 1, 0, 0, 0, 0, idChecksum, 4, 1, 0, 0, 0},
		"bad algo":       {1, 1, 0, 0, 0, 0, idChecksum, 5, 2, 0, 0, 0, 0},
		"bad zip algo":   {1, 1, 0, 0, 0, 0, idCompression, 5, 3, 0, 0, 0, 0},
		"huge zip len":   {1, 1, 0, 0, 0, 0, idCompression, 5, 1, 0xff, 0, 0, 0},
		"trailing":       {1, 1, 0, 0, 0, 0, idNoop, 0, 0},
	}
	for name, rec := range bad {
		if _, err := ParseRecord(rec); !errors.Is(err, ErrRecord) {
			t.Errorf("%s: %v, want ErrRecord", name, err)
		}
		if _, err := NewEnv(nil).Reverse(ctxA, nil, []byte("x"), rec); !errors.Is(err, ErrRecord) {
			t.Errorf("%s: Reverse: %v, want ErrRecord", name, err)
		}
	}
	if _, err := (Record{}).Append(nil); !errors.Is(err, ErrRecord) {
		t.Error("empty record encoded")
	}
}

// FuzzRecord: ParseRecord and Reverse never panic on any record and stored
// bytes; a record that parses encodes back to the same bytes.
func FuzzRecord(f *testing.F) {
	env := NewEnv(testKeyring(f))
	defer env.Close()
	for _, names := range [][]string{{"compression"}, {"encryption"}, {"checksum"}, {"noop"}, {"compression", "encryption", "checksum"}} {
		var fs []*Filter
		for _, n := range names {
			fs = append(fs, mustFilter(f, env, n, nil))
		}
		for _, params := range []map[string]string{nil, {"algo": "lz4"}} {
			if params != nil {
				if names[0] != "compression" {
					continue
				}
				fs[0] = mustFilter(f, env, "compression", params)
			}
			stored, rec, err := mustChain(f, fs...).Forward(ctxA, nil, compressible(300))
			if err != nil {
				f.Fatal(err)
			}
			f.Add(rec, stored)
		}
	}
	f.Add([]byte{1, 1, 0, 0, 1, 0, idCompression, 5, compressZstd, 0, 0, 1, 0}, []byte{0x28, 0xb5, 0x2f, 0xfd})
	f.Fuzz(func(t *testing.T, rec, stored []byte) {
		r, err := ParseRecord(rec)
		if err == nil {
			b, err := r.Append(nil)
			if err != nil || !bytes.Equal(b, rec) {
				t.Fatalf("record %x re-encodes as %x, %v", rec, b, err)
			}
			_ = r.String()
		}
		out, err := env.Reverse(ctxA, nil, stored, rec)
		if err == nil && len(rec) > 0 && len(out) != int(r.PlainLen) {
			t.Fatalf("Reverse returned %d bytes, record says %d", len(out), r.PlainLen)
		}
	})
}

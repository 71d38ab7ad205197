// Package filter is Sluice's Crystal-style filter framework: pieces of logic
// that the policy injects into the data path of a tenant, a volume or a file,
// and the built-in filters.
//
// # Filters
//
// A filter type (Spec) has a name, a schema of typed parameters (name, type,
// default, allowed values, range, description: what `sluice filter list`
// shows and the policy compiler checks), and a kind:
//
//   - Transform filters work on each chunk's bytes: Forward on write may
//     change them and their length (compression, encryption) or only
//     inspect them (checksum, noop). Every chunk written through a transform
//     gets a chain record (below) saying exactly what was done.
//   - Control filters act on requests, not bytes (cache, bandwidth, iops):
//     the gateway reads their parameters; nothing is recorded on disk.
//
// New makes a Filter (a spec with checked parameters); NewChain puts filters
// in a pipeline, in policy order, except that checksum always runs last, so
// its crc covers the stored bytes. A nil or empty Chain (Plain) means plain
// chunks: the store takes its unfiltered path and pays nothing.
//
// # Write and read
//
//	stored, rec, err := chain.Forward(ctx, dst, plain)   // write
//	entry = append(entry24, rec...)                       // the store's map entry
//	plain, err := env.Reverse(ctx, dst, stored, rec)     // read
//
// A read undoes the record's steps last to first using the filter ids and
// arguments in the record alone, never the policy in force now: after a
// policy change old chunks read back as they were written, and new writes
// follow the new policy. ChunkContext{VolumeID, Inode, ChunkIndex, Tenant}
// tells transforms where the chunk lives and whose key to use.
// Env.ChainFor rebuilds a chain that transforms as a record says (the store
// uses it to zero part of a transformed chunk when no policy is at hand, so
// an encrypted chunk stays encrypted).
//
// The store (gateway/store, cow.go and transformed.go) keeps the record in
// the chunk's map entry after byte 24 with a flag; docs/FORMAT.md has the
// on-disk layout and the copy-on-write rules.
//
// Integrity errors on read wrap ErrChecksum (crc32c mismatch), ErrAuth
// (AES-GCM tag mismatch: changed bytes, or a chunk moved to another volume,
// inode or index), ErrCorrupt (undecompressable or wrong length),
// ErrKeyMismatch (the tenant's key changed) or ErrRecord (bad record); the
// store maps all of them to EIO and logs volume and offset.
//
// # Built-in filters
//
//   - compression: algo=zstd (level 1..22, default 3; klauspost/compress maps
//     levels to four speeds: 1-2, 3-5, 6-9, 10+) or algo=lz4 (block
//     format). A chunk that does not shrink by at least 1/8 (or is under 64
//     bytes) is stored as it was and recorded as algo "none".
//   - encryption: AES-256-GCM per chunk with the tenant's key from the
//     Keyring, a fresh random 96-bit nonce per write (kept in the record),
//     the 16-byte tag after the ciphertext, and additional data binding
//     volume id, inode and chunk index. Random nonces are safe for about 2^32
//     chunk writes per key (NIST SP 800-38D); at 64 KiB chunks that is
//     256 TiB written per tenant key before it should be rotated. A tenant
//     without a key cannot write through encryption (ErrNoKey; check early
//     with Chain.CheckTenant).
//   - checksum: crc32c (Castagnoli) of the stored bytes, verified on every
//     read before anything else is undone.
//   - noop: recorded, does nothing: measures the cost of the filter path.
//   - cache (control): size in bytes of an LRU read cache in RAM (Cache).
//   - bandwidth, iops (control): min/max, read_min/read_max,
//     write_min/write_max for the QoS scheduler and the cluster controller.
//
// # Keys
//
// Keys come from a keyring file (LoadKeyring), one line per tenant, mode
// 0600. A key never appears in String, GoString, any fmt verb, slog or
// JSON output of this package; records carry a 4-byte key id (a hash), not
// the key.
//
// # Chain record format
//
// See the comment at the top of record.go (also docs/FORMAT.md): version 1,
// a 6-byte header (version, step count, plain length) and one
// (id, arg length, args) triple per step.
//
// # Not done yet
//
//   - AES-XTS (size-preserving encryption), an on-device read cache, and
//     sandboxed (WebAssembly) filters deployed at run time: record ids
//     128..255 are reserved for them.
//   - Key rotation: a keyring holds one key per tenant; chunks written under
//     an older key fail with ErrKeyMismatch until rewritten.
package filter

package filter

import (
	"bufio"
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"regexp"
	"sort"
	"strings"
)

// Keyring holds one AES-256 key per tenant, loaded from a keyring file:
//
//	# comments and blank lines are allowed
//	acme    q1Zf0c6m1Hq0n7yYk1m9b8JcVb0hXc1b3nEJ3m9GQ8Y=
//	globex  Yx2c...=
//
// One line per tenant: the tenant name (1-63 letters, digits, '.', '_' or
// '-', starting with a letter or digit), white space, and the base64 of
// exactly 32 random bytes (padded or not), e.g. from
// `head -c 32 /dev/urandom | base64`. A tenant may appear once.
//
// The file must be a regular file that neither group nor others can read or
// write (mode 0600 or 0400); LoadKeyring refuses anything else, and refuses
// the whole file if any line is malformed, naming the line and what is wrong
// but never echoing key material.
//
// A Keyring keeps only the ciphers built from the keys (and a 4-byte key id
// per tenant, a hash that identifies a key without revealing it), not the
// raw key bytes. Its String, GoString, MarshalJSON and LogValue show the
// tenants and the count, never keys. A Keyring is immutable and safe for
// concurrent use; reload by loading a new one (Env.SetKeyring).
type Keyring struct {
	path string
	keys map[string]*tenantKey
}

// tenantKey is one tenant's cipher. It prints as redacted.
type tenantKey struct {
	id   [4]byte
	aead cipher.AEAD
}

const (
	keyLen         = 32
	nonceLen       = 12
	maxKeyringSize = 1 << 20
	keyIDPrefix    = "sluice key id v1\x00"
)

// tenantPattern is the store's tenant name rule.
var tenantPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

func (*tenantKey) String() string               { return "[redacted key]" }
func (*tenantKey) GoString() string             { return "[redacted key]" }
func (*tenantKey) Format(f fmt.State, _ rune)   { io.WriteString(f, "[redacted key]") }
func (*tenantKey) LogValue() slog.Value         { return slog.StringValue("[redacted key]") }
func (*tenantKey) MarshalJSON() ([]byte, error) { return []byte(`"[redacted]"`), nil }

// LoadKeyring reads and checks a keyring file (see Keyring). Errors wrap
// ErrKeyring.
func LoadKeyring(path string) (*Keyring, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("keyring: %w (%w)", err, ErrKeyring)
	}
	defer f.Close()
	fi, err := f.Stat() // the opened file, not the path again
	if err != nil {
		return nil, fmt.Errorf("keyring: %w (%w)", err, ErrKeyring)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("keyring %s is not a regular file: %w", path, ErrKeyring)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("keyring %s has mode %04o: group and others must have no access (chmod 600 %s): %w",
			path, perm, path, ErrKeyring)
	}
	if fi.Size() > maxKeyringSize {
		return nil, fmt.Errorf("keyring %s is larger than %d bytes: %w", path, maxKeyringSize, ErrKeyring)
	}
	k, err := ParseKeyring(io.LimitReader(f, maxKeyringSize+1), path)
	if err != nil {
		return nil, err
	}
	return k, nil
}

// ParseKeyring reads keyring lines from r; name labels errors. It does not
// check file modes (LoadKeyring does). Errors wrap ErrKeyring.
func ParseKeyring(r io.Reader, name string) (*Keyring, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxKeyringSize+1))
	if err != nil {
		return nil, fmt.Errorf("keyring %s: %w (%w)", name, err, ErrKeyring)
	}
	defer clear(data)
	if len(data) > maxKeyringSize {
		return nil, fmt.Errorf("keyring %s is larger than %d bytes: %w", name, maxKeyringSize, ErrKeyring)
	}
	k := &Keyring{path: name, keys: map[string]*tenantKey{}}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 4096), maxKeyringSize)
	for line := 1; sc.Scan(); line++ {
		text := strings.TrimSpace(sc.Text())
		if text == "" || text[0] == '#' {
			continue
		}
		tenant, tk, err := parseKeyLine(text)
		if err != nil {
			return nil, fmt.Errorf("keyring %s line %d: %s: %w", name, line, err, ErrKeyring)
		}
		if _, dup := k.keys[tenant]; dup {
			return nil, fmt.Errorf("keyring %s line %d: tenant %q appears twice: %w", name, line, tenant, ErrKeyring)
		}
		k.keys[tenant] = tk
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("keyring %s: %w (%w)", name, err, ErrKeyring)
	}
	return k, nil
}

// parseKeyLine parses "TENANT BASE64". Its error messages never contain
// the line's text except a tenant name that passed the name check.
func parseKeyLine(text string) (string, *tenantKey, error) {
	fields := strings.Fields(text)
	if len(fields) != 2 {
		return "", nil, fmt.Errorf("want TENANT BASE64-OF-32-BYTES, found %d fields", len(fields))
	}
	tenant, enc := fields[0], fields[1]
	if !tenantPattern.MatchString(tenant) {
		return "", nil, fmt.Errorf("the tenant name is not valid (1-63 letters, digits, '.', '_' or '-', starting with a letter or digit)")
	}
	var raw [keyLen + 3]byte // room for one base64 quantum of slack
	defer clear(raw[:])
	n, err := decodeKey(raw[:], enc)
	if err != nil {
		return "", nil, fmt.Errorf("the key of tenant %q is not base64", tenant)
	}
	if n != keyLen {
		return "", nil, fmt.Errorf("the key of tenant %q is %d bytes, want %d (make one with: head -c 32 /dev/urandom | base64)", tenant, n, keyLen)
	}
	tk, err := newTenantKey(raw[:keyLen])
	if err != nil {
		return "", nil, fmt.Errorf("tenant %q: %v", tenant, err)
	}
	return tenant, tk, nil
}

// decodeKey decodes padded or unpadded standard base64 into dst.
func decodeKey(dst []byte, s string) (int, error) {
	if base64.StdEncoding.DecodedLen(len(s)) > len(dst) && base64.RawStdEncoding.DecodedLen(len(s)) > len(dst) {
		return len(s) * 3 / 4, nil // too long: report the length, decode nothing
	}
	enc := base64.StdEncoding.Strict()
	if !strings.HasSuffix(s, "=") && len(s)%4 != 0 {
		enc = base64.RawStdEncoding.Strict()
	}
	return enc.Decode(dst, []byte(s))
}

func newTenantKey(key []byte) (*tenantKey, error) {
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	tk := &tenantKey{aead: aead}
	h := sha256.New()
	h.Write([]byte(keyIDPrefix))
	h.Write(key)
	var sum [sha256.Size]byte
	copy(tk.id[:], h.Sum(sum[:0]))
	return tk, nil
}

// key returns a tenant's key; a nil Keyring has none.
func (k *Keyring) key(tenant string) (*tenantKey, error) {
	if k != nil {
		if tk := k.keys[tenant]; tk != nil {
			return tk, nil
		}
	}
	return nil, fmt.Errorf("tenant %q: add a line \"%s BASE64-OF-32-BYTES\" to the keyring (mode 0600) and reload, or take encryption out of its policy: %w",
		tenant, tenant, ErrNoKey)
}

// Has reports whether a tenant has a key.
func (k *Keyring) Has(tenant string) bool {
	return k != nil && k.keys[tenant] != nil
}

// CheckTenant returns nil if the tenant has a key, else an error wrapping
// ErrNoKey that says what to do.
func (k *Keyring) CheckTenant(tenant string) error {
	_, err := k.key(tenant)
	return err
}

// KeyID returns the tenant's key id in hex (as chain records show it), a
// fingerprint that tells keys apart without revealing them.
func (k *Keyring) KeyID(tenant string) (string, bool) {
	if !k.Has(tenant) {
		return "", false
	}
	return hex.EncodeToString(k.keys[tenant].id[:]), true
}

// Tenants lists the tenants with keys, sorted.
func (k *Keyring) Tenants() []string {
	if k == nil {
		return nil
	}
	out := make([]string, 0, len(k.keys))
	for t := range k.keys {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// Path is the file the keyring was loaded from.
func (k *Keyring) Path() string {
	if k == nil {
		return ""
	}
	return k.path
}

// String shows the file and the tenants, never keys.
func (k *Keyring) String() string {
	if k == nil {
		return "keyring(none)"
	}
	return fmt.Sprintf("keyring(%s: %d tenants: %s)", k.path, len(k.keys), strings.Join(k.Tenants(), ","))
}

// GoString is String: %#v must not dump ciphers.
func (k *Keyring) GoString() string { return k.String() }

// Format makes every fmt verb print String.
func (k *Keyring) Format(f fmt.State, _ rune) { io.WriteString(f, k.String()) }

// LogValue makes slog print String.
func (k *Keyring) LogValue() slog.Value { return slog.StringValue(k.String()) }

// MarshalJSON shows the path and tenants (with key ids), never keys.
func (k *Keyring) MarshalJSON() ([]byte, error) {
	type tenant struct {
		Tenant string `json:"tenant"`
		KeyID  string `json:"key_id"`
	}
	doc := struct {
		Path    string   `json:"path"`
		Tenants []tenant `json:"tenants"`
	}{Path: k.Path(), Tenants: []tenant{}}
	for _, t := range k.Tenants() {
		id, _ := k.KeyID(t)
		doc.Tenants = append(doc.Tenants, tenant{t, id})
	}
	return json.Marshal(doc)
}

package filter

import (
	"fmt"
	"strings"
)

// Error is the type of this package's sentinel errors; they are constants so
// that callers can test them with errors.Is.
type Error string

func (e Error) Error() string { return string(e) }

// Sentinel errors. Errors returned by this package wrap one of these with %w.
// The store maps ErrChecksum, ErrAuth, ErrCorrupt, ErrRecord and
// ErrKeyMismatch (everything that means "these stored bytes cannot be
// returned") to EIO.
const (
	// ErrChecksum: the stored bytes do not match their crc32c.
	ErrChecksum = Error("filter: checksum mismatch")
	// ErrAuth: AES-GCM authentication failed (bytes changed, a chunk moved
	// to another place, or a different key with the same key id).
	ErrAuth = Error("filter: authentication failed")
	// ErrCorrupt: the stored bytes could not be undone (a decompressor
	// failed, a length does not match the record).
	ErrCorrupt = Error("filter: stored data is corrupt")
	// ErrRecord: a chain record is malformed or of an unknown version or
	// filter id.
	ErrRecord = Error("filter: bad chain record")
	// ErrKeyMismatch: the chunk was encrypted with another key than the
	// tenant's key in the keyring.
	ErrKeyMismatch = Error("filter: key changed since the chunk was written")
	// ErrNoKey: the tenant has no key in the keyring.
	ErrNoKey = Error("filter: no encryption key for tenant")
	// ErrKeyring: the keyring file is unusable.
	ErrKeyring = Error("filter: bad keyring")
	// ErrUnknownFilter: no filter has that name.
	ErrUnknownFilter = Error("filter: unknown filter")
	// ErrParam: a parameter is unknown or its value is bad.
	ErrParam = Error("filter: bad parameter")
	// ErrChain: a chain cannot be built (a filter twice, too many steps).
	ErrChain = Error("filter: bad chain")
	// ErrTooLarge: a chunk is larger than MaxChunkSize.
	ErrTooLarge = Error("filter: chunk too large")
)

// taggedError is an error whose message is its cause's and which also
// matches a sentinel with errors.Is: for errors people read (bad
// parameters), so the message is not followed by the sentinel's text.
type taggedError struct {
	err error
	tag error
}

func (e *taggedError) Error() string   { return e.err.Error() }
func (e *taggedError) Unwrap() []error { return []error{e.err, e.tag} }

// paramErr is an ErrParam with a message for people.
func paramErr(format string, args ...any) error {
	return &taggedError{err: fmt.Errorf(format, args...), tag: ErrParam}
}

// MaxChunkSize bounds the chunks a chain transforms and the lengths a record
// may claim, so that a corrupt record cannot make a read allocate gigabytes.
// The store's largest chunk is 4 MiB.
const MaxChunkSize = 16 << 20

// ChunkContext says which chunk a transform works on. Encryption binds
// VolumeID, Inode and ChunkIndex into its authenticated data, so a chunk's
// stored bytes read back only at the place they were written; Tenant picks
// the key.
type ChunkContext struct {
	VolumeID   uint64
	Inode      uint64 // 0 for block volumes
	ChunkIndex uint64
	Tenant     string
}

func (c ChunkContext) String() string {
	return fmt.Sprintf("volume %d inode %d chunk %d", c.VolumeID, c.Inode, c.ChunkIndex)
}

// Kind says what a filter does.
type Kind uint8

// The kinds of filter.
const (
	// Transform filters change the stored bytes (or inspect them, like
	// checksum): they run in the chain on every chunk written and are
	// recorded in the chunk's chain record.
	Transform Kind = iota + 1
	// Control filters act on the request, not on the bytes (cache,
	// bandwidth, iops); the gateway reads their parameters. They are not
	// recorded with the data.
	Control
)

func (k Kind) String() string {
	switch k {
	case Transform:
		return "transform"
	case Control:
		return "control"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// MarshalText makes a Kind a JSON string.
func (k Kind) MarshalText() ([]byte, error) {
	if k != Transform && k != Control {
		return nil, fmt.Errorf("filter: unknown kind %d", uint8(k))
	}
	return []byte(k.String()), nil
}

// UnmarshalText is the inverse of MarshalText.
func (k *Kind) UnmarshalText(b []byte) error {
	switch string(b) {
	case "transform":
		*k = Transform
	case "control":
		*k = Control
	default:
		return fmt.Errorf("filter: unknown kind %q", b)
	}
	return nil
}

// Transformer is the data half of a Transform filter: what runs on write.
// (Reads never use a Transformer: they are undone from the chain record by
// the filter id's ReverseFunc, so a read does not depend on the policy in
// force now.)
type Transformer interface {
	// Forward transforms src. It appends the transformed bytes to dst and
	// returns the extended slice; a transformer that leaves the bytes as
	// they are (checksum, noop) may return src itself instead, and the
	// chain passes it on without a copy. It appends to args what the
	// reverse needs (at most 255 bytes) and returns the extended slice.
	// dst and src do not overlap.
	Forward(c ChunkContext, dst, src, args []byte) (out, argsOut []byte, err error)
}

// ReverseFunc undoes one recorded step: src is that step's output as read,
// args what its Forward recorded. It appends the step's input to dst and
// returns it (or returns src itself when the step did not change the bytes).
// It must treat src and args as untrusted: bounds-check, never panic.
type ReverseFunc func(env *Env, c ChunkContext, dst, src, args []byte) ([]byte, error)

// Spec is a filter type: its name, schema, and behaviour. The built-in specs
// are an immutable table (Builtins, Lookup).
type Spec struct {
	Name string `json:"name"`
	Kind Kind   `json:"kind"`
	// ID is the filter's number in chain records (Transform filters only).
	// It is part of the on-disk format: never reuse one.
	ID          uint8       `json:"id,omitempty"`
	Description string      `json:"description"`
	Params      []ParamSpec `json:"params"`

	newTransformer func(env *Env, v Values) (Transformer, error)
	reverse        ReverseFunc
	check          func(v Values) error // cross-parameter checks; may be nil
}

// Validate checks parameters against the spec's schema (unknown names, bad
// values, cross-parameter rules) and returns canonical values with defaults
// filled in. Errors wrap ErrParam and name the filter and the parameter.
func (s *Spec) Validate(given map[string]string) (Values, error) {
	v, err := ValidateParams(s.Params, given)
	if err != nil {
		return nil, fmt.Errorf("filter %s: %w", s.Name, err)
	}
	if s.check != nil {
		if err := s.check(v); err != nil {
			return nil, fmt.Errorf("filter %s: %w", s.Name, err)
		}
	}
	return v, nil
}

func (s *Spec) clone() Spec {
	c := *s
	c.Params = make([]ParamSpec, len(s.Params))
	for i, p := range s.Params {
		p.Allowed = append([]string(nil), p.Allowed...)
		c.Params[i] = p
	}
	return c
}

// Filter is one filter with its parameters, ready to go into a Chain.
// Filters are immutable and safe for concurrent use.
type Filter struct {
	spec   *Spec
	params Values
	tr     Transformer // nil for Control filters
	env    *Env        // nil for Control filters
}

// New makes a filter from its name (case-insensitive) and parameters as a
// policy gives them. env serves the transforms (keys, codecs); it may be nil
// for Control filters.
func New(env *Env, name string, params map[string]string) (*Filter, error) {
	s, ok := lookup(name)
	if !ok {
		return nil, fmt.Errorf("%q (filters: %s): %w", name, strings.Join(Names(), ", "), ErrUnknownFilter)
	}
	v, err := s.Validate(params)
	if err != nil {
		return nil, err
	}
	f := &Filter{spec: s, params: v, env: env}
	if s.Kind == Transform {
		if env == nil {
			return nil, fmt.Errorf("filter %s: a transform filter needs an Env: %w", s.Name, ErrChain)
		}
		f.tr, err = s.newTransformer(env, v)
		if err != nil {
			return nil, fmt.Errorf("filter %s: %w", s.Name, err)
		}
	}
	return f, nil
}

// Name is the filter's name ("compression").
func (f *Filter) Name() string { return f.spec.Name }

// Kind is Transform or Control.
func (f *Filter) Kind() Kind { return f.spec.Kind }

// Params returns a copy of the filter's canonical parameter values.
func (f *Filter) Params() Values { return f.params.clone() }

// Param returns one canonical parameter value ("" when absent).
func (f *Filter) Param(name string) string { return f.params[name] }

// String is "name(k=v,...)" or "name".
func (f *Filter) String() string {
	if len(f.params) == 0 {
		return f.spec.Name
	}
	return f.spec.Name + "(" + f.params.String() + ")"
}

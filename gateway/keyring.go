package gateway

import (
	"context"
	"fmt"

	"github.com/sluice-storage/sluice/gateway/filter"
)

// Keyring is the keyring in use (nil: the gateway was started without
// one). It marshals to its path and tenants with key ids, never keys.
func (g *Gateway) Keyring() *filter.Keyring { return g.env.Keyring() }

// ReloadKeyring reads the keyring file again (SIGHUP, `sluice keyring
// reload`) and puts it in use. A reload may add tenants; it refuses to
// drop a tenant's key or change it, since the chunks that tenant wrote
// encrypted would no longer read (rotating a key means re-encrypting,
// which is not built). A refused or malformed file leaves the keyring in
// use as it was. A gateway started without --keyring has no file to read.
func (g *Gateway) ReloadKeyring(ctx context.Context) (*filter.Keyring, error) {
	g.keyringMu.Lock()
	defer g.keyringMu.Unlock()
	old := g.env.Keyring()
	if old == nil {
		return nil, fmt.Errorf("this gateway was started without --keyring: %w: restart it with --keyring FILE", ErrInvalid)
	}
	k, err := filter.LoadKeyring(old.Path())
	if err != nil {
		return nil, fmt.Errorf("%w: %w (the keyring in use is unchanged)", ErrInvalid, err)
	}
	for _, t := range old.Tenants() {
		was, _ := old.KeyID(t)
		now, ok := k.KeyID(t)
		switch {
		case !ok:
			return nil, fmt.Errorf("keyring %s: tenant %q lost its key: %w: its encrypted chunks would not read; put its line back (the keyring in use is unchanged)",
				old.Path(), t, ErrInvalid)
		case now != was:
			return nil, fmt.Errorf("keyring %s: tenant %q has a different key (id %s, was %s): %w: its encrypted chunks would not read; put the old key back (the keyring in use is unchanged)",
				old.Path(), t, now, was, ErrInvalid)
		}
	}
	g.env.SetKeyring(k)
	g.log.Info("keyring reloaded", "keyring", k)
	return k, nil
}

package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"sync"

	"github.com/sluice-storage/sluice/gateway/store"
)

// Tenant access. A door that knows who its client is (the NBD door on a
// unix socket by SO_PEERCRED or on loopback TCP by the socket's owner,
// the virtio door by SO_PEERCRED) asks MayUse before it shows or serves a
// volume. Root and the gateway's own user reach every tenant; any other
// user reaches the tenants granted to its uid (`sluice tenant allow T
// --uid U`), and a client whose uid is unknown reaches none. Grants are
// config records (kind "access"), durable when the API answers.

const accessKind = "access"

// Grant lets one local user reach one tenant's volumes.
type Grant struct {
	ID     uint64 `json:"id"`
	Tenant string `json:"tenant"`
	UID    uint32 `json:"uid"`
}

// access is the gateway's grant table.
type access struct {
	mu    sync.RWMutex
	byID  map[uint64]Grant
	owner int // the gateway's euid
}

func (g *Gateway) loadGrants() error {
	g.access = access{byID: make(map[uint64]Grant), owner: os.Geteuid()}
	return g.store.LoadConfig(accessKind, func(id uint64, doc []byte) error {
		var gr Grant
		if err := json.Unmarshal(doc, &gr); err != nil {
			return err
		}
		gr.ID = id
		g.access.byID[id] = gr
		return nil
	})
}

// MayUse reports whether the local user uid (-1: unknown) may reach
// tenant's volumes.
func (g *Gateway) MayUse(uid int, tenant string) bool {
	if uid < 0 {
		return false
	}
	if uid == 0 || uid == g.access.owner {
		return true
	}
	g.access.mu.RLock()
	defer g.access.mu.RUnlock()
	for _, gr := range g.access.byID {
		if int(gr.UID) == uid && gr.Tenant == tenant {
			return true
		}
	}
	return false
}

// AllowTenant grants uid access to tenant's volumes (a no-op returning
// the existing grant if it is there).
func (g *Gateway) AllowTenant(ctx context.Context, tenant string, uid uint32) (Grant, error) {
	if !store.ValidName(tenant) {
		return Grant{}, fmt.Errorf("tenant %q: %w: use 1-63 letters, digits, '.', '_' or '-'", tenant, ErrInvalid)
	}
	g.access.mu.Lock()
	defer g.access.mu.Unlock()
	for _, gr := range g.access.byID {
		if gr.Tenant == tenant && gr.UID == uid {
			return gr, nil
		}
	}
	id, err := g.store.NextConfigID(accessKind)
	if err != nil {
		return Grant{}, err
	}
	gr := Grant{ID: id, Tenant: tenant, UID: uid}
	doc, _ := json.Marshal(gr)
	if err := g.store.PutConfig(accessKind, id, doc); err != nil {
		return Grant{}, err
	}
	g.access.byID[id] = gr
	g.log.Info("tenant access granted", "tenant", tenant, "uid", uid, "grant", id)
	return gr, nil
}

// RevokeGrant removes a grant. Connections already open keep the volume
// they opened; new ones are refused.
func (g *Gateway) RevokeGrant(ctx context.Context, id uint64) error {
	g.access.mu.Lock()
	defer g.access.mu.Unlock()
	gr, ok := g.access.byID[id]
	if !ok {
		return fmt.Errorf("grant %d: %w", id, ErrNotFound)
	}
	if err := g.store.DeleteConfig(accessKind, id); err != nil {
		return err
	}
	delete(g.access.byID, id)
	g.log.Info("tenant access revoked", "tenant", gr.Tenant, "uid", gr.UID, "grant", id)
	return nil
}

// Grants lists the grants by id.
func (g *Gateway) Grants() []Grant {
	g.access.mu.RLock()
	defer g.access.mu.RUnlock()
	out := make([]Grant, 0, len(g.access.byID))
	for _, gr := range g.access.byID {
		out = append(out, gr)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

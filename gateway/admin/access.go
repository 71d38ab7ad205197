package admin

import (
	"context"
	"fmt"
	"net/http"
	"strconv"

	"github.com/sluice-storage/sluice/gateway"
)

// GrantRequest is the body of POST /v1/grants.
type GrantRequest struct {
	Tenant string `json:"tenant"`
	UID    uint32 `json:"uid"`
}

func (h *handler) routeAccess(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/grants", func(w http.ResponseWriter, r *http.Request) { reply(w, http.StatusOK, h.g.Grants()) })
	mux.HandleFunc("POST /v1/grants", h.grantAdd)
	mux.HandleFunc("DELETE /v1/grants/{id}", h.grantDelete)
}

func (h *handler) grantAdd(w http.ResponseWriter, r *http.Request) {
	var req GrantRequest
	if err := decode(r, &req); err != nil {
		h.fail(w, err)
		return
	}
	gr, err := h.g.AllowTenant(r.Context(), req.Tenant, req.UID)
	if err != nil {
		h.fail(w, err)
		return
	}
	reply(w, http.StatusCreated, gr)
}

func (h *handler) grantDelete(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil {
		h.fail(w, fmt.Errorf("grant id %q: %w", r.PathValue("id"), gateway.ErrInvalid))
		return
	}
	if err := h.g.RevokeGrant(r.Context(), id); err != nil {
		h.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// Grants lists which local users may reach which tenants.
func (c *Client) Grants(ctx context.Context) ([]gateway.Grant, error) {
	var out []gateway.Grant
	return out, c.do(ctx, http.MethodGet, "/v1/grants", nil, &out)
}

// Grant lets a local user reach a tenant's volumes.
func (c *Client) Grant(ctx context.Context, req GrantRequest) (gateway.Grant, error) {
	var out gateway.Grant
	return out, c.do(ctx, http.MethodPost, "/v1/grants", req, &out)
}

// Revoke removes a grant.
func (c *Client) Revoke(ctx context.Context, id uint64) error {
	return c.do(ctx, http.MethodDelete, "/v1/grants/"+strconv.FormatUint(id, 10), nil, nil)
}

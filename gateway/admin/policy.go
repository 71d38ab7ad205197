package admin

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"

	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/gateway/filter"
	"github.com/sluice-storage/sluice/policy"
)

// Policy, filter, registry and scrub endpoints (v1):
//
//	GET    /v1/policies                          [gateway.PolicyStatus]
//	POST   /v1/policies                          PolicyRequest → gateway.PolicyStatus (201)
//	DELETE /v1/policies/{id}                     204
//	GET    /v1/filters                           [filter.Spec]
//	GET    /v1/registry                          policy.Registry
//	PUT    /v1/registry/{kind}/{name}            RegistryEntry → policy.Registry (kind: group or file_type)
//	DELETE /v1/registry/{kind}/{name}            policy.Registry
//	GET    /v1/volumes/{tenant}/{name}/filters   gateway.VolumeFilters
//	POST   /v1/volumes/{tenant}/{name}/scrub     gateway.ScrubReport
//
// A policy that does not parse or compile answers 400 with the message
// ("line 1, col 5: expected ..."); one whose target does not exist, 404.
// Nothing here ever returns key material.

// PolicyRequest is the body of POST /v1/policies.
type PolicyRequest struct {
	Text string `json:"text"`
}

// RegistryEntry is the body of PUT /v1/registry/{kind}/{name}: a group's
// members (TENANT or TENANT/VOLUME) or a file-type set's globs.
type RegistryEntry struct {
	Values []string `json:"values"`
}

func (h *handler) routePolicies(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/policies", h.policyList)
	mux.HandleFunc("POST /v1/policies", h.policyAdd)
	mux.HandleFunc("DELETE /v1/policies/{id}", h.policyDelete)
	mux.HandleFunc("GET /v1/filters", h.filterList)
	mux.HandleFunc("GET /v1/registry", h.registryGet)
	mux.HandleFunc("PUT /v1/registry/{kind}/{name}", h.registrySet)
	mux.HandleFunc("DELETE /v1/registry/{kind}/{name}", h.registryDelete)
	mux.HandleFunc("GET /v1/volumes/{tenant}/{name}/filters", h.volumeFilters)
	mux.HandleFunc("POST /v1/volumes/{tenant}/{name}/scrub", h.scrub)
}

func (h *handler) policyList(w http.ResponseWriter, r *http.Request) {
	reply(w, http.StatusOK, h.g.Policies())
}

func (h *handler) policyAdd(w http.ResponseWriter, r *http.Request) {
	var req PolicyRequest
	if err := decode(r, &req); err != nil {
		h.fail(w, err)
		return
	}
	p, err := h.g.AddPolicy(r.Context(), req.Text)
	if err != nil {
		h.fail(w, err)
		return
	}
	reply(w, http.StatusCreated, p)
}

func (h *handler) policyDelete(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil {
		h.fail(w, fmt.Errorf("policy id %q: %w", r.PathValue("id"), gateway.ErrInvalid))
		return
	}
	if err := h.g.DeletePolicy(r.Context(), id); err != nil {
		h.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (h *handler) filterList(w http.ResponseWriter, r *http.Request) {
	reply(w, http.StatusOK, h.g.FilterSpecs())
}

func (h *handler) registryGet(w http.ResponseWriter, r *http.Request) {
	reply(w, http.StatusOK, h.g.Registry())
}

func (h *handler) registrySet(w http.ResponseWriter, r *http.Request) {
	var req RegistryEntry
	if err := decode(r, &req); err != nil {
		h.fail(w, err)
		return
	}
	if err := h.g.SetRegistryEntry(r.Context(), r.PathValue("kind"), r.PathValue("name"), req.Values); err != nil {
		h.fail(w, err)
		return
	}
	h.registryGet(w, r)
}

func (h *handler) registryDelete(w http.ResponseWriter, r *http.Request) {
	if err := h.g.DeleteRegistryEntry(r.Context(), r.PathValue("kind"), r.PathValue("name")); err != nil {
		h.fail(w, err)
		return
	}
	h.registryGet(w, r)
}

func (h *handler) volumeFilters(w http.ResponseWriter, r *http.Request) {
	v, err := h.g.Volume(r.PathValue("tenant") + "/" + r.PathValue("name"))
	if err != nil {
		h.fail(w, err)
		return
	}
	reply(w, http.StatusOK, v.Filters())
}

func (h *handler) scrub(w http.ResponseWriter, r *http.Request) {
	v, err := h.g.Volume(r.PathValue("tenant") + "/" + r.PathValue("name"))
	if err != nil {
		h.fail(w, err)
		return
	}
	rep, err := v.Scrub(r.Context())
	if err != nil {
		h.fail(w, err)
		return
	}
	reply(w, http.StatusOK, rep)
}

// Policies lists policies with their state.
func (c *Client) Policies(ctx context.Context) ([]gateway.PolicyStatus, error) {
	var out []gateway.PolicyStatus
	return out, c.do(ctx, http.MethodGet, "/v1/policies", nil, &out)
}

// AddPolicy compiles and stores a policy.
func (c *Client) AddPolicy(ctx context.Context, text string) (gateway.PolicyStatus, error) {
	var out gateway.PolicyStatus
	return out, c.do(ctx, http.MethodPost, "/v1/policies", PolicyRequest{Text: text}, &out)
}

// DeletePolicy deletes a policy by id.
func (c *Client) DeletePolicy(ctx context.Context, id uint64) error {
	return c.do(ctx, http.MethodDelete, fmt.Sprintf("/v1/policies/%d", id), nil, nil)
}

// Filters lists the filters the gateway runs, with their parameters.
func (c *Client) Filters(ctx context.Context) ([]filter.Spec, error) {
	var out []filter.Spec
	return out, c.do(ctx, http.MethodGet, "/v1/filters", nil, &out)
}

// Registry returns the policy keyword registry.
func (c *Client) Registry(ctx context.Context) (policy.Registry, error) {
	var out policy.Registry
	return out, c.do(ctx, http.MethodGet, "/v1/registry", nil, &out)
}

// SetRegistryEntry defines a group or a file-type set.
func (c *Client) SetRegistryEntry(ctx context.Context, kind, name string, values []string) error {
	return c.do(ctx, http.MethodPut, "/v1/registry/"+url.PathEscape(kind)+"/"+url.PathEscape(name), RegistryEntry{Values: values}, nil)
}

// DeleteRegistryEntry removes a group or a file-type set.
func (c *Client) DeleteRegistryEntry(ctx context.Context, kind, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/registry/"+url.PathEscape(kind)+"/"+url.PathEscape(name), nil, nil)
}

// VolumeFilters shows what the policies in force do to a volume.
func (c *Client) VolumeFilters(ctx context.Context, ref string) (gateway.VolumeFilters, error) {
	var out gateway.VolumeFilters
	return out, c.do(ctx, http.MethodGet, "/v1/volumes/"+ref+"/filters", nil, &out)
}

// Scrub verifies every transformed chunk of a volume.
func (c *Client) Scrub(ctx context.Context, ref string) (gateway.ScrubReport, error) {
	var out gateway.ScrubReport
	return out, c.do(ctx, http.MethodPost, "/v1/volumes/"+ref+"/scrub", nil, &out)
}

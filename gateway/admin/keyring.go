package admin

import (
	"context"
	"encoding/json"
	"net/http"
)

// KeyringInfo is the body of GET /v1/keyring and of a reload's reply: the
// file and the tenants with their key ids, never keys. Path is "" when
// the gateway runs without a keyring.
type KeyringInfo struct {
	Path    string `json:"path"`
	Tenants []struct {
		Tenant string `json:"tenant"`
		KeyID  string `json:"key_id"`
	} `json:"tenants"`
}

func (h *handler) routeKeyring(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/keyring", h.keyringGet)
	mux.HandleFunc("POST /v1/keyring/reload", h.keyringReload)
}

func (h *handler) keyringGet(w http.ResponseWriter, r *http.Request) {
	if k := h.g.Keyring(); k != nil {
		reply(w, http.StatusOK, k) // Keyring marshals as KeyringInfo
		return
	}
	reply(w, http.StatusOK, json.RawMessage(`{"path":"","tenants":[]}`))
}

func (h *handler) keyringReload(w http.ResponseWriter, r *http.Request) {
	k, err := h.g.ReloadKeyring(r.Context())
	if err != nil {
		h.fail(w, err)
		return
	}
	reply(w, http.StatusOK, k)
}

// Keyring describes the gateway's keyring.
func (c *Client) Keyring(ctx context.Context) (KeyringInfo, error) {
	var out KeyringInfo
	return out, c.do(ctx, http.MethodGet, "/v1/keyring", nil, &out)
}

// ReloadKeyring has the gateway read its keyring file again.
func (c *Client) ReloadKeyring(ctx context.Context) (KeyringInfo, error) {
	var out KeyringInfo
	return out, c.do(ctx, http.MethodPost, "/v1/keyring/reload", nil, &out)
}

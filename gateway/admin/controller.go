package admin

import (
	"context"
	"net/http"
	"time"

	"github.com/sluice-storage/sluice/gateway"
)

// GET /v1/controller: the cluster controller this gateway follows, if any
// (`sluice gateway --controller URL --gateway-id ID`), the state of its
// follower, and the assignments the gateway enforces. `sluice cluster
// status` without --controller asks it for the controller's URL.

// ControllerStatus is the body of GET /v1/controller.
type ControllerStatus struct {
	// Joined: the gateway was started with --controller. The fields up to
	// Capacity are set only then.
	Joined bool `json:"joined"`
	// URL is what --controller names: one URL, or the replicas' URLs
	// comma-separated. Leader is the replica the gateway reports to: the
	// leader as far as it knows.
	URL       string `json:"url,omitempty"`
	Leader    string `json:"leader,omitempty"`
	GatewayID string `json:"gateway_id,omitempty"`
	// GraceSeconds is how long the gateway keeps the controller's
	// assignments after it last heard from it.
	GraceSeconds float64 `json:"grace_seconds,omitempty"`
	// Following: the controller's assignments are in force (false: the
	// static rules, before the first set or after the grace period).
	Following bool `json:"following"`
	// Epoch is the newest epoch accepted from the controller (kept after a
	// fallback); EpochText is it as GENERATION.ROUND.
	Epoch       uint64    `json:"epoch"`
	EpochText   string    `json:"epoch_text,omitempty"`
	LastContact time.Time `json:"last_contact,omitzero"`
	// Term is the newest leader's term accepted (0 from a controller
	// without replicas); StaleTermSets counts the sets ignored because
	// they came from an older term.
	Term          uint64 `json:"term,omitempty"`
	StaleTermSets uint64 `json:"stale_term_sets,omitempty"`
	// Capacity is the gateway's measured capacity as last reported, by
	// resource (read_bw, write_bw in bytes/s; read_iops, write_iops in
	// cost units/s); absent or 0 is unknown.
	Capacity map[string]float64 `json:"capacity,omitempty"`
	// Saturated: in the last reported interval the device held back work
	// that its limits let go (what the capacity measurement learns from).
	Saturated bool `json:"saturated"`
	// Assignments is what the gateway enforces now (filled in by the API
	// from the gateway itself).
	Assignments gateway.AssignmentStatus `json:"assignments"`
}

// ControllerSource is what the gateway command provides when the gateway
// follows a controller (package admin does not import package controller).
type ControllerSource interface {
	ControllerStatus() ControllerStatus
}

func (h *handler) routeController(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/controller", h.controller)
}

func (h *handler) controller(w http.ResponseWriter, r *http.Request) {
	var st ControllerStatus
	if h.doors.Controller != nil {
		st = h.doors.Controller.ControllerStatus()
		st.Joined = true
	}
	st.Assignments = h.g.Assignments()
	reply(w, http.StatusOK, st)
}

// Controller returns the controller this gateway follows and the
// assignments it enforces.
func (c *Client) Controller(ctx context.Context) (ControllerStatus, error) {
	var out ControllerStatus
	return out, c.do(ctx, http.MethodGet, "/v1/controller", nil, &out)
}

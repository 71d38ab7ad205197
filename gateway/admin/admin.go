// Package admin is the gateway's admin API: HTTP+JSON, served on a unix
// socket (mode 0600) by `sluice gateway`, and the Client the CLI uses.
//
// Endpoints (v1):
//
//	GET    /v1/health                      {"status":"ok"}
//	GET    /v1/volumes                     [Volume]
//	POST   /v1/volumes                     CreateRequest → Volume (201)
//	GET    /v1/volumes/{tenant}/{name}     Volume
//	PATCH  /v1/volumes/{tenant}/{name}     ResizeRequest → Volume
//	DELETE /v1/volumes/{tenant}/{name}     204
//	GET    /v1/qos                         [gateway.QoSRuleStats]
//	POST   /v1/qos                         gateway.QoSRule → QoSRule (create, or replace the limits of the rule with the same match)
//	DELETE /v1/qos/{id}                    204
//	GET    /v1/volumes/{tenant}/{name}/fsck gateway.FsckReport
//	GET    /v1/mounts                      [MountInfo]
//	POST   /v1/mounts                      MountRequest → MountInfo (201, once the mount is live)
//	DELETE /v1/mounts?dir=D                204 (400 while files on it are open)
//	GET    /v1/attachments                 [Attachment]
//	POST   /v1/attachments                 AttachRequest → Attachment (201)
//	DELETE /v1/attachments?device=DEV      204
//	GET    /v1/stats                       Stats
//	GET    /metrics                        Prometheus text format
//	       /v1/policies, /v1/filters, /v1/registry, .../filters, .../scrub: see policy.go
//	GET    /v1/controller                  ControllerStatus (see controller.go)
//
// Errors are {"error": "one line"} with a status from httpStatus: 400 bad
// input, 404 unknown volume, 409 duplicate, 501 not supported, 507 pool full,
// 503 shutting down, 500 anything else.
package admin

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/gateway/store"
)

// Volume is a volume as the API shows it.
type Volume struct {
	Ref       string            `json:"ref"`
	Tenant    string            `json:"tenant"`
	Name      string            `json:"name"`
	Kind      string            `json:"kind"`
	Size      int64             `json:"size"`
	ChunkSize int64             `json:"chunk_size"`
	Allocated int64             `json:"allocated"`
	ReadOnly  bool              `json:"read_only"`
	Labels    map[string]string `json:"labels,omitempty"`
	Created   time.Time         `json:"created"`
}

// CreateRequest is the body of POST /v1/volumes.
type CreateRequest struct {
	Tenant    string            `json:"tenant"`
	Name      string            `json:"name"`
	Kind      string            `json:"kind,omitempty"`
	Size      int64             `json:"size"`
	ChunkSize int64             `json:"chunk_size,omitempty"`
	ReadOnly  bool              `json:"read_only,omitempty"`
	Labels    map[string]string `json:"labels,omitempty"`
}

// ResizeRequest is the body of PATCH /v1/volumes/{tenant}/{name}.
type ResizeRequest struct {
	Size int64 `json:"size"`
}

// VolumeStats are one volume's counters.
type VolumeStats struct {
	Volume
	Ops []gateway.OpStats `json:"ops"`
}

// Stats is the body of GET /v1/stats.
type Stats struct {
	Pool    store.PoolStats        `json:"pool"`
	Volumes []VolumeStats          `json:"volumes"`
	Queues  []gateway.QoSRuleStats `json:"queues"`
	// Device is the store's device's own stats (an SPDK bdev's); absent
	// for a pool file or a block device.
	Device *DeviceStats `json:"device,omitempty"`
}

// Error is the body of every error response.
type Error struct {
	Error string `json:"error"`
}

func view(v *gateway.Volume) Volume {
	i := v.Info()
	return Volume{
		Ref: i.Ref(), Tenant: i.Tenant, Name: i.Name, Kind: i.Kind, Size: i.Size,
		ChunkSize: i.ChunkSize, Allocated: v.AllocatedBytes(), ReadOnly: i.ReadOnly,
		Labels: i.Labels, Created: i.Created,
	}
}

// NewHandler returns the admin API for g. reg is the registry /metrics
// serves; nil serves only the gateway's own collector.
func NewHandler(g *gateway.Gateway, reg *prometheus.Registry, log *slog.Logger, doors Doors) http.Handler {
	if reg == nil {
		reg = prometheus.NewRegistry()
		reg.MustRegister(gateway.NewCollector(g))
	}
	h := &handler{g: g, log: log, doors: doors}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("GET /v1/volumes", h.list)
	mux.HandleFunc("POST /v1/volumes", h.create)
	mux.HandleFunc("GET /v1/volumes/{tenant}/{name}", h.get)
	mux.HandleFunc("PATCH /v1/volumes/{tenant}/{name}", h.resize)
	mux.HandleFunc("DELETE /v1/volumes/{tenant}/{name}", h.delete)
	mux.HandleFunc("GET /v1/qos", h.qosList)
	mux.HandleFunc("POST /v1/qos", h.qosSet)
	mux.HandleFunc("DELETE /v1/qos/{id}", h.qosDelete)
	mux.HandleFunc("GET /v1/stats", h.stats)
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	h.routeDoors(mux)
	h.routePolicies(mux)
	h.routeController(mux)
	h.routeKeyring(mux)
	h.routeAccess(mux)
	return mux
}

type handler struct {
	g     *gateway.Gateway
	log   *slog.Logger
	doors Doors

	writersMu sync.Mutex // held across a writer check and the door it opens (writers.go)
}

func (h *handler) list(w http.ResponseWriter, r *http.Request) {
	out := []Volume{}
	for _, v := range h.g.Volumes() {
		out = append(out, view(v))
	}
	reply(w, http.StatusOK, out)
}

func (h *handler) create(w http.ResponseWriter, r *http.Request) {
	var req CreateRequest
	if err := decode(r, &req); err != nil {
		h.fail(w, err)
		return
	}
	v, err := h.g.CreateVolume(r.Context(), gateway.CreateOptions{
		Tenant: req.Tenant, Name: req.Name, Kind: req.Kind, Size: req.Size,
		ChunkSize: req.ChunkSize, ReadOnly: req.ReadOnly, Labels: req.Labels,
	})
	if err != nil {
		h.fail(w, err)
		return
	}
	reply(w, http.StatusCreated, view(v))
}

func (h *handler) get(w http.ResponseWriter, r *http.Request) {
	v, err := h.g.Volume(r.PathValue("tenant") + "/" + r.PathValue("name"))
	if err != nil {
		h.fail(w, err)
		return
	}
	reply(w, http.StatusOK, view(v))
}

func (h *handler) resize(w http.ResponseWriter, r *http.Request) {
	ref := r.PathValue("tenant") + "/" + r.PathValue("name")
	var req ResizeRequest
	if err := decode(r, &req); err != nil {
		h.fail(w, err)
		return
	}
	grow := func() error { return h.g.ResizeVolume(r.Context(), ref, req.Size) }
	var err error
	if h.doors.Attachments != nil {
		err = h.doors.Attachments.Resize(r.Context(), ref, grow) // the device follows
	} else {
		err = grow()
	}
	if err != nil {
		h.fail(w, err)
		return
	}
	h.get(w, r)
}

func (h *handler) delete(w http.ResponseWriter, r *http.Request) {
	ref := r.PathValue("tenant") + "/" + r.PathValue("name")
	if use := h.inUse(ref); use != "" {
		h.fail(w, fmt.Errorf("volume %s is %s: %w: release it first", ref, use, gateway.ErrInvalid))
		return
	}
	if err := h.g.DeleteVolume(r.Context(), ref); err != nil {
		h.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

// inUse says how a door holds volume ref ("" if none does): a volume
// that is mounted, attached or exported is not deleted from under its
// users. (A door could take the volume again between this check and the
// delete; the store then fails that door's IO with "not found", as it
// does for any IO after a delete.)
func (h *handler) inUse(ref string) string {
	if hs := h.holders(ref); len(hs) > 0 {
		return hs[0].what
	}
	return ""
}

func (h *handler) stats(w http.ResponseWriter, r *http.Request) {
	st := Stats{Pool: h.g.PoolStats(), Volumes: []VolumeStats{}, Queues: h.g.QoSRules()}
	for _, v := range h.g.Volumes() {
		ops := v.Stats()
		if ops == nil {
			ops = []gateway.OpStats{}
		}
		st.Volumes = append(st.Volumes, VolumeStats{Volume: view(v), Ops: ops})
	}
	if h.doors.Device != nil {
		ds := h.doors.Device.DeviceStats(r.Context())
		st.Device = &ds
	}
	reply(w, http.StatusOK, st)
}

func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("request body: %w: %v", gateway.ErrInvalid, err)
	}
	return nil
}

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// fail is the API's one error-mapping place.
func (h *handler) fail(w http.ResponseWriter, err error) {
	status := httpStatus(err)
	if status == http.StatusInternalServerError {
		h.log.Error("admin API request failed", "err", err)
	}
	reply(w, status, Error{Error: err.Error()})
}

func httpStatus(err error) int {
	switch {
	case errors.Is(err, gateway.ErrInvalid), errors.Is(err, gateway.ErrOutOfRange):
		return http.StatusBadRequest
	case errors.Is(err, gateway.ErrNotFound):
		return http.StatusNotFound
	case errors.Is(err, gateway.ErrExists):
		return http.StatusConflict
	case errors.Is(err, gateway.ErrUnsupported):
		return http.StatusNotImplemented
	case errors.Is(err, gateway.ErrNoSpace):
		return http.StatusInsufficientStorage
	case errors.Is(err, gateway.ErrClosed):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

func (h *handler) qosList(w http.ResponseWriter, r *http.Request) {
	reply(w, http.StatusOK, h.g.QoSRules())
}

func (h *handler) qosSet(w http.ResponseWriter, r *http.Request) {
	var rule gateway.QoSRule
	if err := decode(r, &rule); err != nil {
		h.fail(w, err)
		return
	}
	rule.ID = 0
	out, err := h.g.SetQoSRule(r.Context(), rule)
	if err != nil {
		h.fail(w, err)
		return
	}
	reply(w, http.StatusOK, out)
}

func (h *handler) qosDelete(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseUint(r.PathValue("id"), 10, 64)
	if err != nil {
		h.fail(w, fmt.Errorf("rule id %q: %w", r.PathValue("id"), gateway.ErrInvalid))
		return
	}
	if err := h.g.DeleteQoSRule(r.Context(), id); err != nil {
		h.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

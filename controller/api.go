package controller

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// maxBody bounds request bodies (a report of ~5000 tenants).
const maxBody = 4 << 20

// Handler returns the controller's HTTP API (see the package doc).
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	mux.HandleFunc("POST /v1/gateways", s.httpRegister)
	mux.HandleFunc("DELETE /v1/gateways/{id}", s.httpDeregister)
	mux.HandleFunc("POST /v1/gateways/{id}/report", s.httpReport)
	mux.HandleFunc("GET /v1/gateways/{id}/assignments", s.httpAssignments)
	mux.HandleFunc("GET /v1/slos", func(w http.ResponseWriter, r *http.Request) { reply(w, http.StatusOK, s.SLOs()) })
	mux.HandleFunc("GET /v1/slos/{tenant}", s.httpGetSLO)
	mux.HandleFunc("PUT /v1/slos/{tenant}", s.httpSetSLO)
	mux.HandleFunc("DELETE /v1/slos/{tenant}", s.httpDeleteSLO)
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) { reply(w, http.StatusOK, s.ClusterStatus(r.Context())) })
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{}))
	if s.opts.Token == "" {
		return mux
	}
	return requireToken(s.opts.Token, mux)
}

// requireToken wraps h so that every request but GET /v1/health carries
// "Authorization: Bearer <token>".
func requireToken(token string, h http.Handler) http.Handler {
	want := []byte("Bearer " + token)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/health" && subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="sluice-controller"`)
			reply(w, http.StatusUnauthorized, apiError{Error: "missing or wrong bearer token: pass --token-file (a controller keeps its token in DATA-DIR/token, mode 0600)"})
			return
		}
		h.ServeHTTP(w, r)
	})
}

// IsLoopback reports whether a listen address (host:port) is reachable
// only from this host. An empty host (all interfaces) is not.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// CheckListen refuses a listen address beyond loopback without a token.
func CheckListen(addr, token string) error {
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return fmt.Errorf("listen address %q: %w: want HOST:PORT", addr, ErrInvalid)
	}
	if token == "" && !IsLoopback(addr) {
		return fmt.Errorf("listen address %s is not loopback: %w: a bearer token is required (--token-file)", addr, ErrUnauthorized)
	}
	return nil
}

// apiError is the body of every error response.
type apiError struct {
	Error string `json:"error"`
	// NotLeader: a follower refused the call; Leader is the leader's URL
	// ("" while none is elected). Clients follow it.
	NotLeader bool   `json:"not_leader,omitempty"`
	Leader    string `json:"leader,omitempty"`
}

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// decode reads a JSON body strictly and returns its size.
func decode(r *http.Request, v any) (int64, error) {
	cr := &countingReader{r: http.MaxBytesReader(nil, r.Body, maxBody)}
	dec := json.NewDecoder(cr)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return cr.n, fmt.Errorf("request body: %w: %v", ErrInvalid, err)
	}
	return cr.n, nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// fail is the API's one error-mapping place.
func (s *Server) fail(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	body := apiError{Error: err.Error()}
	var nl *NotLeaderError
	switch {
	case errors.Is(err, ErrInvalid):
		status = http.StatusBadRequest
	case errors.Is(err, ErrNotFound):
		status = http.StatusNotFound
	case errors.Is(err, ErrUnauthorized):
		status = http.StatusUnauthorized
	case errors.Is(err, ErrClosed), errors.Is(err, ErrUnavailable):
		status = http.StatusServiceUnavailable
	case errors.As(err, &nl):
		// Clients (Client.do) follow the leader named in the body.
		status = http.StatusServiceUnavailable
		body.NotLeader, body.Leader = true, nl.Leader
	case errors.Is(err, ErrNotLeader):
		status = http.StatusServiceUnavailable
		body.NotLeader = true
	}
	if status == http.StatusInternalServerError {
		s.log.Error("controller API request failed", "err", err)
	}
	reply(w, status, body)
}

func (s *Server) httpRegister(w http.ResponseWriter, r *http.Request) {
	var g GatewayRegistration
	if _, err := decode(r, &g); err != nil {
		s.fail(w, err)
		return
	}
	out, err := s.Register(r.Context(), g)
	if err != nil {
		s.fail(w, err)
		return
	}
	reply(w, http.StatusOK, out)
}

func (s *Server) httpDeregister(w http.ResponseWriter, r *http.Request) {
	if err := s.Deregister(r.Context(), r.PathValue("id")); err != nil {
		s.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *Server) httpReport(w http.ResponseWriter, r *http.Request) {
	var rep Report
	n, err := decode(r, &rep)
	if err != nil {
		s.fail(w, err)
		return
	}
	if rep.Gateway != r.PathValue("id") {
		s.fail(w, fmt.Errorf("report for gateway %q posted to %q: %w", rep.Gateway, r.PathValue("id"), ErrInvalid))
		return
	}
	out, err := s.Report(r.Context(), rep)
	if err != nil {
		s.fail(w, err)
		return
	}
	s.metrics.observeReport(n)
	reply(w, http.StatusOK, out)
}

// httpAssignments: ?after=EPOCH&wait=DURATION. 200 with a set newer than
// after, or 204 when none came within wait.
func (s *Server) httpAssignments(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	var after uint64
	var wait time.Duration
	var err error
	if v := q.Get("after"); v != "" {
		if after, err = strconv.ParseUint(v, 10, 64); err != nil {
			s.fail(w, fmt.Errorf("after=%q: %w: want an epoch", v, ErrInvalid))
			return
		}
	}
	if v := q.Get("wait"); v != "" {
		if wait, err = time.ParseDuration(v); err != nil || wait < 0 {
			s.fail(w, fmt.Errorf("wait=%q: %w: want a duration such as 10s", v, ErrInvalid))
			return
		}
	}
	set, ok, err := s.Assignments(r.Context(), r.PathValue("id"), after, wait)
	switch {
	case err != nil && r.Context().Err() != nil:
		return // the client went away
	case err != nil:
		s.fail(w, err)
	case !ok:
		w.WriteHeader(http.StatusNoContent)
	default:
		s.metrics.polls.Inc()
		reply(w, http.StatusOK, set)
	}
}

func (s *Server) httpGetSLO(w http.ResponseWriter, r *http.Request) {
	slo, err := s.SLO(r.PathValue("tenant"))
	if err != nil {
		s.fail(w, err)
		return
	}
	reply(w, http.StatusOK, slo)
}

func (s *Server) httpSetSLO(w http.ResponseWriter, r *http.Request) {
	var slo SLO
	if _, err := decode(r, &slo); err != nil {
		s.fail(w, err)
		return
	}
	if slo.Tenant == "" {
		slo.Tenant = r.PathValue("tenant")
	}
	if slo.Tenant != r.PathValue("tenant") {
		s.fail(w, fmt.Errorf("SLO for tenant %q put to %q: %w", slo.Tenant, r.PathValue("tenant"), ErrInvalid))
		return
	}
	out, err := s.SetSLO(r.Context(), slo)
	if err != nil {
		s.fail(w, err)
		return
	}
	reply(w, http.StatusOK, out)
}

func (s *Server) httpDeleteSLO(w http.ResponseWriter, r *http.Request) {
	if err := s.DeleteSLO(r.Context(), r.PathValue("tenant")); err != nil {
		s.fail(w, err)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

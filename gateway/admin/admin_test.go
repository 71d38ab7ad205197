package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/gateway/filter"
)

// openGateway opens a real gateway on a temporary data directory, as the
// gateway package's tests do (no automation loop: nothing changes behind
// the test's back).
func openGateway(t *testing.T, kr *filter.Keyring) *gateway.Gateway {
	t.Helper()
	g, err := gateway.Open(context.Background(), gateway.Config{DataDir: t.TempDir(), PoolSize: 256 << 20, Keyring: kr, AutomationInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

// api is the admin API of a real gateway behind an httptest server.
type api struct {
	t   *testing.T
	g   *gateway.Gateway
	srv *httptest.Server
	log *bytes.Buffer // what the handler logged
}

// newAPI serves the admin API of a new gateway without a keyring.
func newAPI(t *testing.T, doors Doors) *api {
	t.Helper()
	return serve(t, openGateway(t, nil), doors)
}

func serve(t *testing.T, g *gateway.Gateway, doors Doors) *api {
	t.Helper()
	var log bytes.Buffer
	srv := httptest.NewServer(NewHandler(g, nil, slog.New(slog.NewTextHandler(&log, nil)), doors))
	t.Cleanup(srv.Close)
	return &api{t: t, g: g, srv: srv, log: &log}
}

// call sends body (marshalled unless it is a string) and returns the
// status and the raw reply. Every reply but 204 must be JSON.
func (a *api) call(method, path string, body any) (int, []byte) {
	a.t.Helper()
	var in io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		in = strings.NewReader(b)
	default:
		raw, err := json.Marshal(b)
		if err != nil {
			a.t.Fatal(err)
		}
		in = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, a.srv.URL+path, in)
	if err != nil {
		a.t.Fatal(err)
	}
	resp, err := a.srv.Client().Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		a.t.Fatal(err)
	}
	if resp.StatusCode == http.StatusNoContent {
		if len(raw) != 0 {
			a.t.Errorf("%s %s: 204 with a body %q", method, path, raw)
		}
		return resp.StatusCode, raw
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" && path != "/metrics" {
		a.t.Errorf("%s %s: Content-Type %q, want application/json", method, path, ct)
	}
	return resp.StatusCode, raw
}

// ok calls and decodes a reply with status want into out (nil: not decoded).
func (a *api) ok(method, path string, body any, want int, out any) {
	a.t.Helper()
	status, raw := a.call(method, path, body)
	if status != want {
		a.t.Fatalf("%s %s: %d %s, want %d", method, path, status, raw, want)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			a.t.Fatalf("%s %s: %v in %s", method, path, err, raw)
		}
	}
}

// fails calls and checks the error reply: status want and the API's one
// error shape, {"error": "one line"}, saying says.
func (a *api) fails(method, path string, body any, want int, says string) {
	a.t.Helper()
	status, raw := a.call(method, path, body)
	if status != want {
		a.t.Fatalf("%s %s: %d %s, want %d", method, path, status, raw, want)
	}
	var e Error
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&e); err != nil || e.Error == "" || strings.Contains(e.Error, "\n") {
		a.t.Fatalf("%s %s: error body %s is not {\"error\": \"one line\"} (%v)", method, path, raw, err)
	}
	if !strings.Contains(e.Error, says) {
		a.t.Fatalf("%s %s: error %q does not say %q", method, path, e.Error, says)
	}
}

// keys returns the top-level keys of a JSON object, sorted.
func keys(t *testing.T, raw []byte) []string {
	t.Helper()
	var m map[string]json.RawMessage
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("%v in %s", err, raw)
	}
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func TestHealth(t *testing.T) {
	a := newAPI(t, Doors{})
	var h map[string]string
	a.ok("GET", "/v1/health", nil, http.StatusOK, &h)
	if h["status"] != "ok" || len(h) != 1 {
		t.Fatalf("health: %v", h)
	}
}

// Volumes: create, read, resize, delete, with the error of each; the JSON
// keys are snake_case and an empty list is [], not null.
func TestVolumes(t *testing.T) {
	a := newAPI(t, Doors{})
	if _, raw := a.call("GET", "/v1/volumes", nil); string(bytes.TrimSpace(raw)) != "[]" {
		t.Fatalf("no volumes: %s, want []", raw)
	}

	status, raw := a.call("POST", "/v1/volumes", CreateRequest{Tenant: "acme", Name: "db", Size: 16 << 20})
	if status != http.StatusCreated {
		t.Fatalf("create: %d %s", status, raw)
	}
	want := []string{"allocated", "chunk_size", "created", "kind", "name", "read_only", "ref", "size", "tenant"}
	if got := keys(t, raw); !slices.Equal(got, want) {
		t.Fatalf("volume keys %v, want %v", got, want)
	}
	var v Volume
	json.Unmarshal(raw, &v)
	if v.Ref != "acme/db" || v.Kind != gateway.KindBlock || v.Size != 16<<20 || v.ChunkSize == 0 || v.Created.IsZero() {
		t.Fatalf("created %+v", v)
	}
	a.fails("POST", "/v1/volumes", CreateRequest{Tenant: "acme", Name: "db", Size: 16 << 20}, http.StatusConflict, "acme/db")
	a.fails("POST", "/v1/volumes", `{"tenant":"acme","name":"x","size":1048576,"sise":1}`, http.StatusBadRequest, "sise")
	a.fails("POST", "/v1/volumes", `{"tenant":`, http.StatusBadRequest, "request body")
	a.fails("POST", "/v1/volumes", CreateRequest{Tenant: "acme", Name: "big", Size: 1 << 50}, http.StatusBadRequest, "larger than")
	a.fails("POST", "/v1/volumes", CreateRequest{Tenant: "acme", Name: "bad/name", Size: 1 << 20}, http.StatusBadRequest, "bad/name")

	var got Volume
	a.ok("GET", "/v1/volumes/acme/db", nil, http.StatusOK, &got)
	if got.Ref != "acme/db" || got.Size != 16<<20 {
		t.Fatalf("get: %+v", got)
	}
	a.fails("GET", "/v1/volumes/acme/nope", nil, http.StatusNotFound, "acme/nope")

	a.ok("PATCH", "/v1/volumes/acme/db", ResizeRequest{Size: 32 << 20}, http.StatusOK, &got)
	if got.Size != 32<<20 {
		t.Fatalf("resized to %d, want %d", got.Size, 32<<20)
	}
	a.fails("PATCH", "/v1/volumes/acme/db", ResizeRequest{Size: 1 << 20}, http.StatusBadRequest, "shrink")
	a.fails("PATCH", "/v1/volumes/acme/nope", ResizeRequest{Size: 32 << 20}, http.StatusNotFound, "acme/nope")

	var list []Volume
	a.ok("GET", "/v1/volumes", nil, http.StatusOK, &list)
	if len(list) != 1 || list[0].Ref != "acme/db" {
		t.Fatalf("list: %+v", list)
	}
	a.ok("DELETE", "/v1/volumes/acme/db", nil, http.StatusNoContent, nil)
	a.fails("DELETE", "/v1/volumes/acme/db", nil, http.StatusNotFound, "acme/db")
	if a.log.Len() != 0 {
		t.Fatalf("client errors were logged as failures:\n%s", a.log)
	}
}

func TestQoS(t *testing.T) {
	a := newAPI(t, Doors{})
	a.ok("POST", "/v1/volumes", CreateRequest{Tenant: "acme", Name: "db", Size: 16 << 20}, http.StatusCreated, nil)
	var rule gateway.QoSRule
	body := `{"id":99,"tenant":"acme","volume":"db","op":"read","limits":{"iops":100}}`
	a.ok("POST", "/v1/qos", body, http.StatusOK, &rule)
	if rule.ID == 0 || rule.ID == 99 || rule.Tenant != "acme" || rule.Limits.IOPS != 100 {
		t.Fatalf("set: %+v (the id is the gateway's, not the client's)", rule)
	}
	var again gateway.QoSRule
	a.ok("POST", "/v1/qos", `{"tenant":"acme","volume":"db","op":"read","limits":{"iops":200}}`, http.StatusOK, &again)
	if again.ID != rule.ID || again.Limits.IOPS != 200 {
		t.Fatalf("same match: %+v, want rule %d with the new limit", again, rule.ID)
	}
	a.fails("POST", "/v1/qos", `{"tenant":"acme","op":"scribble","limits":{"iops":1}}`, http.StatusBadRequest, "scribble")

	var rules []gateway.QoSRuleStats
	a.ok("GET", "/v1/qos", nil, http.StatusOK, &rules)
	if len(rules) != 1 || rules[0].ID != rule.ID {
		t.Fatalf("list: %+v", rules)
	}
	a.fails("DELETE", "/v1/qos/x", nil, http.StatusBadRequest, `"x"`)
	a.ok("DELETE", "/v1/qos/"+jsonNumber(rule.ID), nil, http.StatusNoContent, nil)
	a.fails("DELETE", "/v1/qos/"+jsonNumber(rule.ID), nil, http.StatusNotFound, jsonNumber(rule.ID))
}

func jsonNumber(n uint64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// Stats show the pool and every volume with its counters ([] when none);
// /metrics serves the Prometheus text format.
func TestStatsAndMetrics(t *testing.T) {
	a := newAPI(t, Doors{})
	a.ok("POST", "/v1/volumes", CreateRequest{Tenant: "acme", Name: "idle", Size: 16 << 20}, http.StatusCreated, nil)
	a.ok("POST", "/v1/volumes", CreateRequest{Tenant: "acme", Name: "busy", Size: 16 << 20}, http.StatusCreated, nil)
	v, err := a.g.Volume("acme/busy")
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Do(context.Background(), &gateway.Request{Op: gateway.OpWrite, Buf: make([]byte, 4096), Door: gateway.DoorNBD}); err != nil {
		t.Fatal(err)
	}
	_, raw := a.call("GET", "/v1/stats", nil)
	if got := keys(t, raw); !slices.Equal(got, []string{"pool", "queues", "volumes"}) {
		t.Fatalf("stats keys %v", got)
	}
	if !bytes.Contains(raw, []byte(`"ops":[]`)) {
		t.Fatalf("an idle volume's ops are not []: %s", raw)
	}
	var st Stats
	json.Unmarshal(raw, &st)
	if st.Pool.Size == 0 || len(st.Volumes) != 2 {
		t.Fatalf("stats: %+v", st)
	}
	for _, vs := range st.Volumes {
		if vs.Ref == "acme/busy" && (len(vs.Ops) != 1 || vs.Ops[0].Door != "nbd" || vs.Ops[0].Op != "write" || vs.Ops[0].Bytes != 4096) {
			t.Fatalf("busy volume's ops: %+v", vs.Ops)
		}
	}
	status, metrics := a.call("GET", "/metrics", nil)
	if status != http.StatusOK || !bytes.Contains(metrics, []byte(`sluice_volume_bytes_total{door="nbd",op="write",tenant="acme",volume="acme/busy"} 4096`)) {
		t.Fatalf("metrics: %d\n%s", status, metrics)
	}
}

// The Client the CLI uses, over a unix socket: replies decode, and an error
// reply is an *APIError with the status and the gateway's message.
func TestClientOverUnixSocket(t *testing.T) {
	g := openGateway(t, nil)
	sock := filepath.Join(t.TempDir(), "api.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(NewHandler(g, nil, slog.New(slog.DiscardHandler), Doors{}))
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)

	ctx := context.Background()
	c := NewClient(sock)
	if err := c.Health(ctx); err != nil {
		t.Fatal(err)
	}
	v, err := c.CreateVolume(ctx, CreateRequest{Tenant: "acme", Name: "fs", Kind: gateway.KindFS, Size: 16 << 20})
	if err != nil || v.Ref != "acme/fs" || v.Kind != gateway.KindFS {
		t.Fatalf("create: %+v %v", v, err)
	}
	_, err = c.Volume(ctx, "acme/nope")
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusNotFound || !strings.Contains(ae.Message, "acme/nope") {
		t.Fatalf("unknown volume: %v, want an APIError 404 naming it", err)
	}
	err = NewClient(filepath.Join(t.TempDir(), "none.sock")).Health(ctx)
	if err == nil || errors.As(err, &ae) || !strings.Contains(err.Error(), "no gateway at") {
		t.Fatalf("no socket: %v", err)
	}
}

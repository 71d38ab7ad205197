package admin

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/gateway/filter"
	"github.com/sluice-storage/sluice/policy"
)

func TestPolicies(t *testing.T) {
	a := newAPI(t, Doors{})
	a.ok("POST", "/v1/volumes", CreateRequest{Tenant: "acme", Name: "db", Size: 16 << 20}, http.StatusCreated, nil)

	var specs []filter.Spec
	a.ok("GET", "/v1/filters", nil, http.StatusOK, &specs)
	if !slices.ContainsFunc(specs, func(s filter.Spec) bool { return s.Name == "compression" }) {
		t.Fatalf("filters: %+v", specs)
	}

	var p gateway.PolicyStatus
	a.ok("POST", "/v1/policies", PolicyRequest{Text: "FOR VOLUME acme/db DO SET compression WITH algo=lz4"}, http.StatusCreated, &p)
	if p.ID == 0 || !p.Active || p.Target != "volume acme/db" || p.Kind != "static" {
		t.Fatalf("add: %+v", p)
	}
	a.fails("POST", "/v1/policies", PolicyRequest{Text: "FOR VOLUME acme/db DO"}, http.StatusBadRequest, "line 1")
	a.fails("POST", "/v1/policies", PolicyRequest{Text: "FOR VOLUME acme/nope DO SET checksum"}, http.StatusNotFound, "acme/nope")
	var list []gateway.PolicyStatus
	a.ok("GET", "/v1/policies", nil, http.StatusOK, &list)
	if len(list) != 1 || list[0].ID != p.ID {
		t.Fatalf("list: %+v", list)
	}

	var vf gateway.VolumeFilters
	a.ok("GET", "/v1/volumes/acme/db/filters", nil, http.StatusOK, &vf)
	if vf.Volume != "acme/db" || !bytes.Contains([]byte(vf.Chain), []byte("compression")) || !slices.Equal(vf.Rules, []uint64{p.ID}) {
		t.Fatalf("volume filters: %+v", vf)
	}
	a.fails("GET", "/v1/volumes/acme/nope/filters", nil, http.StatusNotFound, "acme/nope")

	var rep gateway.ScrubReport
	a.ok("POST", "/v1/volumes/acme/db/scrub", nil, http.StatusOK, &rep)
	if !rep.Clean() {
		t.Fatalf("scrub of an unwritten volume: %+v", rep)
	}
	a.fails("POST", "/v1/volumes/acme/nope/scrub", nil, http.StatusNotFound, "acme/nope")

	id := strconv.FormatUint(p.ID, 10)
	a.fails("DELETE", "/v1/policies/one", nil, http.StatusBadRequest, `"one"`)
	a.ok("DELETE", "/v1/policies/"+id, nil, http.StatusNoContent, nil)
	a.fails("DELETE", "/v1/policies/"+id, nil, http.StatusNotFound, id)
}

func TestRegistry(t *testing.T) {
	a := newAPI(t, Doors{})
	var reg policy.Registry
	a.ok("PUT", "/v1/registry/group/gold", RegistryEntry{Values: []string{"acme", "beta/db"}}, http.StatusOK, &reg)
	if !slices.Equal(reg.Groups["gold"], []string{"acme", "beta/db"}) {
		t.Fatalf("set group: %+v", reg.Groups)
	}
	a.fails("PUT", "/v1/registry/colour/gold", RegistryEntry{Values: []string{"acme"}}, http.StatusBadRequest, "colour")
	a.ok("GET", "/v1/registry", nil, http.StatusOK, &reg)
	if _, ok := reg.Groups["gold"]; !ok || len(reg.Filters) == 0 {
		t.Fatalf("registry: %+v", reg)
	}
	reg = policy.Registry{}
	a.ok("DELETE", "/v1/registry/group/gold", nil, http.StatusOK, &reg)
	if _, ok := reg.Groups["gold"]; ok {
		t.Fatalf("deleted group still there: %+v", reg.Groups)
	}
	a.fails("DELETE", "/v1/registry/colour/gold", nil, http.StatusBadRequest, "colour")
}

func TestGrants(t *testing.T) {
	a := newAPI(t, Doors{})
	var gr gateway.Grant
	a.ok("POST", "/v1/grants", GrantRequest{Tenant: "acme", UID: 1000}, http.StatusCreated, &gr)
	if gr.ID == 0 || gr.Tenant != "acme" || gr.UID != 1000 {
		t.Fatalf("grant: %+v", gr)
	}
	a.fails("POST", "/v1/grants", GrantRequest{Tenant: "no tenant", UID: 1000}, http.StatusBadRequest, "no tenant")
	var list []gateway.Grant
	a.ok("GET", "/v1/grants", nil, http.StatusOK, &list)
	if len(list) != 1 || list[0] != gr {
		t.Fatalf("grants: %+v", list)
	}
	id := strconv.FormatUint(gr.ID, 10)
	a.fails("DELETE", "/v1/grants/-1", nil, http.StatusBadRequest, `"-1"`)
	a.ok("DELETE", "/v1/grants/"+id, nil, http.StatusNoContent, nil)
	a.fails("DELETE", "/v1/grants/"+id, nil, http.StatusNotFound, id)
}

func TestController(t *testing.T) {
	a := newAPI(t, Doors{})
	_, raw := a.call("GET", "/v1/controller", nil)
	var st ControllerStatus
	a.ok("GET", "/v1/controller", nil, http.StatusOK, &st)
	if st.Joined || st.URL != "" || st.Following {
		t.Fatalf("no controller: %s", raw)
	}
	// Zero times are left out, not shown as year 1.
	if got := keys(t, raw); !slices.Equal(got, []string{"assignments", "epoch", "following", "joined", "saturated"}) {
		t.Fatalf("no controller: keys %v in %s", got, raw)
	}
	if bytes.Contains(raw, []byte("0001-01-01")) {
		t.Fatalf("no controller: a zero time in %s", raw)
	}

	f := &fakeDoors{}
	a = newAPI(t, f.doors())
	a.ok("GET", "/v1/controller", nil, http.StatusOK, &st)
	if !st.Joined || st.URL != "http://controller" || st.GatewayID != "gw1" || st.Epoch != 7 {
		t.Fatalf("with a controller: %+v", st)
	}
}

// The keyring shows its path and tenants with key ids, never a key; a
// reload reads the file again; without a keyring, a reload is refused.
func TestKeyring(t *testing.T) {
	a := newAPI(t, Doors{})
	var info KeyringInfo
	a.ok("GET", "/v1/keyring", nil, http.StatusOK, &info)
	if info.Path != "" || info.Tenants == nil || len(info.Tenants) != 0 {
		t.Fatalf("no keyring: %+v", info)
	}
	a.fails("POST", "/v1/keyring/reload", nil, http.StatusBadRequest, "without --keyring")

	path := filepath.Join(t.TempDir(), "keyring")
	keyLine := func(tenant string) (string, string) {
		k := make([]byte, 32)
		rand.Read(k)
		enc := base64.StdEncoding.EncodeToString(k)
		return tenant + " " + enc + "\n", enc
	}
	acme, acmeKey := keyLine("acme")
	if err := os.WriteFile(path, []byte(acme), 0o600); err != nil {
		t.Fatal(err)
	}
	kr, err := filter.LoadKeyring(path)
	if err != nil {
		t.Fatal(err)
	}
	a = serve(t, openGateway(t, kr), Doors{})
	_, raw := a.call("GET", "/v1/keyring", nil)
	if bytes.Contains(raw, []byte(acmeKey)) {
		t.Fatalf("the keyring reply holds a key: %s", raw)
	}
	a.ok("GET", "/v1/keyring", nil, http.StatusOK, &info)
	if info.Path != path || len(info.Tenants) != 1 || info.Tenants[0].Tenant != "acme" || info.Tenants[0].KeyID == "" {
		t.Fatalf("keyring: %+v", info)
	}
	beta, betaKey := keyLine("beta")
	if err := os.WriteFile(path, []byte(acme+beta), 0o600); err != nil {
		t.Fatal(err)
	}
	_, raw = a.call("POST", "/v1/keyring/reload", nil)
	if bytes.Contains(raw, []byte(acmeKey)) || bytes.Contains(raw, []byte(betaKey)) {
		t.Fatalf("the reload reply holds a key: %s", raw)
	}
	a.ok("POST", "/v1/keyring/reload", nil, http.StatusOK, &info)
	if len(info.Tenants) != 2 {
		t.Fatalf("after a reload that adds beta: %+v", info)
	}
	if err := os.WriteFile(path, []byte(beta), 0o600); err != nil {
		t.Fatal(err)
	}
	a.fails("POST", "/v1/keyring/reload", nil, http.StatusBadRequest, "lost its key")
}

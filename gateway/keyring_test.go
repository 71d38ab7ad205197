package gateway

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/sluice-storage/sluice/gateway/filter"
)

func keyLine(tenant string) string {
	k := make([]byte, 32)
	rand.Read(k)
	return tenant + " " + base64.StdEncoding.EncodeToString(k) + "\n"
}

// TestReloadKeyring: a reload adds tenants and puts them in use at once;
// it refuses a malformed file, a dropped key and a changed key, and then
// keeps the keyring in use as it was.
func TestReloadKeyring(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "keyring")
	acme := keyLine("acme")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(path, []byte(acme), 0o600))
	kr, err := filter.LoadKeyring(path)
	must(err)
	g := openPolicyGateway(t, t.TempDir(), kr)
	defer g.Close()
	if _, err := g.CreateVolume(ctx, CreateOptions{Tenant: "globex", Name: "v", Size: 64 << 20}); err != nil {
		t.Fatal(err)
	}
	policy := "FOR VOLUME globex/v DO SET encryption"
	if _, err := g.AddPolicy(ctx, policy); !errors.Is(err, filter.ErrNoKey) {
		t.Fatalf("encryption for a tenant without a key: %v, want ErrNoKey", err)
	}

	must(os.WriteFile(path, []byte(acme+keyLine("globex")), 0o600))
	if _, err := g.ReloadKeyring(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := g.AddPolicy(ctx, policy); err != nil {
		t.Fatalf("encryption after the reload added the tenant: %v", err)
	}
	inUse := g.Keyring().Tenants()

	for name, text := range map[string]string{
		"malformed":   acme + "globex not-base64\n",
		"dropped key": acme,
		"changed key": keyLine("acme") + keyLine("globex"),
	} {
		must(os.WriteFile(path, []byte(text), 0o600))
		if _, err := g.ReloadKeyring(ctx); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: reload %v, want a refusal", name, err)
		}
		if got := g.Keyring().Tenants(); len(got) != len(inUse) {
			t.Errorf("%s: the keyring in use changed to %v", name, got)
		}
	}

	g2 := openPolicyGateway(t, t.TempDir(), nil)
	defer g2.Close()
	if _, err := g2.ReloadKeyring(ctx); !errors.Is(err, ErrInvalid) {
		t.Errorf("reload without --keyring: %v", err)
	}
}

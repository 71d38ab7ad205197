package filter

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeKeyring(t *testing.T, text string, mode os.FileMode) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "keyring")
	if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
	return p
}

var (
	rawKey = bytes.Repeat([]byte{0xA5, 0x5A, 0x3C, 0xC3}, 8)
	b64Key = base64.StdEncoding.EncodeToString(rawKey)
)

func TestLoadKeyring(t *testing.T) {
	text := "# tenants\n\nacme " + b64Key + "\n  globex\t" + base64.RawStdEncoding.EncodeToString(random(32)) + "  \r\n# end\n"
	for _, mode := range []os.FileMode{0o600, 0o400} {
		k, err := LoadKeyring(writeKeyring(t, text, mode))
		if err != nil {
			t.Fatalf("mode %o: %v", mode, err)
		}
		if got := strings.Join(k.Tenants(), ","); got != "acme,globex" || !k.Has("acme") || k.Has("initech") {
			t.Fatalf("tenants %s", got)
		}
		id, ok := k.KeyID("acme")
		if !ok || len(id) != 8 {
			t.Fatalf("key id %q", id)
		}
	}
}

func TestKeyringModeRefused(t *testing.T) {
	for _, mode := range []os.FileMode{0o644, 0o640, 0o604, 0o660, 0o606} {
		_, err := LoadKeyring(writeKeyring(t, "acme "+b64Key+"\n", mode))
		if !errors.Is(err, ErrKeyring) || !strings.Contains(err.Error(), fmt.Sprintf("%04o", mode)) || !strings.Contains(err.Error(), "chmod 600") {
			t.Errorf("mode %o: %v", mode, err)
		}
	}
	if _, err := LoadKeyring(t.TempDir()); !errors.Is(err, ErrKeyring) {
		t.Errorf("directory: %v", err)
	}
	if _, err := LoadKeyring(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, ErrKeyring) || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing: %v", err)
	}
}

func TestKeyringMalformedLines(t *testing.T) {
	short := base64.StdEncoding.EncodeToString(rawKey[:16])
	long := base64.StdEncoding.EncodeToString(append(rawKey, rawKey...))
	for _, tc := range []struct {
		text string
		want []string
	}{
		{"# c\n" + b64Key + "\n", []string{"line 2", "found 1 fields"}},
		{"acme " + b64Key + " extra\n", []string{"line 1", "found 3 fields"}},
		{"acme\n", []string{"line 1", "found 1 fields"}},
		{"-bad " + b64Key + "\n", []string{"line 1", "tenant name is not valid"}},
		{"acme " + b64Key[:40] + "!!!!\n", []string{"line 1", `"acme"`, "not base64"}},
		{"acme " + short + "\n", []string{"line 1", "16 bytes, want 32"}},
		{"acme " + long + "\n", []string{"line 1", "want 32"}},
		{"acme " + b64Key + "\n\nacme " + b64Key + "\n", []string{"line 3", "appears twice"}},
	} {
		_, err := LoadKeyring(writeKeyring(t, tc.text, 0o600))
		if !errors.Is(err, ErrKeyring) {
			t.Errorf("%q: %v, want ErrKeyring", tc.text, err)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%q: error %q does not say %q", tc.text, err, w)
			}
		}
		noKeyMaterial(t, err.Error())
	}
}

// noKeyMaterial fails if s shows rawKey in any common encoding.
func noKeyMaterial(t *testing.T, s string) {
	t.Helper()
	for _, enc := range []string{b64Key, b64Key[:20], hex.EncodeToString(rawKey), hex.EncodeToString(rawKey[:8]),
		fmt.Sprint(rawKey[:8]), string(rawKey[:8]), fmt.Sprintf("%#v", rawKey[:4])[7:]} {
		if strings.Contains(s, enc) {
			t.Fatalf("key material %q in %q", enc, s)
		}
	}
}

func TestKeyringNeverShowsKeys(t *testing.T) {
	k, err := ParseKeyring(strings.NewReader("acme "+b64Key+"\n"), "keys")
	if err != nil {
		t.Fatal(err)
	}
	var outs []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%x", "%X", "%q", "%d"} {
		outs = append(outs, fmt.Sprintf(verb, k), fmt.Sprintf(verb, *k), fmt.Sprintf(verb, k.keys["acme"]))
	}
	j, err := json.Marshal(k)
	if err != nil {
		t.Fatal(err)
	}
	outs = append(outs, string(j))
	j, _ = json.Marshal(map[string]any{"env": k, "key": k.keys["acme"]})
	outs = append(outs, string(j))
	var logged bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&logged, nil))
	log.Info("loaded", "keyring", k, "key", k.keys["acme"])
	slog.New(slog.NewTextHandler(&logged, nil)).Info("loaded", "keyring", k)
	outs = append(outs, logged.String())
	env := NewEnv(k)
	outs = append(outs, fmt.Sprintf("%+v %#v", env, env))
	for _, s := range outs {
		noKeyMaterial(t, s)
	}
	if !strings.Contains(string(j), "acme") {
		t.Fatalf("JSON lost the tenant: %s", j)
	}
}

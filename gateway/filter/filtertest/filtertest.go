// Package filtertest builds filter environments and chains for tests of
// the packages that run filters (the store's engine and its namespace).
package filtertest

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"

	"github.com/sluice-storage/sluice/gateway/filter"
)

// Env returns a filter environment whose keyring holds a random key for
// tenants "acme" and "t"; it is closed when the test ends.
func Env(t testing.TB) *filter.Env {
	t.Helper()
	var text strings.Builder
	for _, tenant := range []string{"acme", "t"} {
		k := make([]byte, 32)
		rand.Read(k)
		fmt.Fprintf(&text, "%s %s\n", tenant, base64.StdEncoding.EncodeToString(k))
	}
	kr, err := filter.ParseKeyring(strings.NewReader(text.String()), "test")
	if err != nil {
		t.Fatal(err)
	}
	env := filter.NewEnv(kr)
	t.Cleanup(env.Close)
	return env
}

// Chain builds a chain from specs, each "name" or "name:key=value"
// (e.g. "compression:algo=lz4").
func Chain(t testing.TB, env *filter.Env, specs ...string) *filter.Chain {
	t.Helper()
	var fs []*filter.Filter
	for _, s := range specs {
		name, arg, _ := strings.Cut(s, ":")
		var params map[string]string
		if arg != "" {
			k, v, _ := strings.Cut(arg, "=")
			params = map[string]string{k: v}
		}
		f, err := filter.New(env, name, params)
		if err != nil {
			t.Fatal(err)
		}
		fs = append(fs, f)
	}
	c, err := filter.NewChain(fs...)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

package main

import (
	"github.com/sluice-storage/sluice/gateway/filter"
)

// loadKeyring loads the --keyring file ("" = none). Its errors name the
// file and line, never key material.
func loadKeyring(path string) (*filter.Keyring, error) {
	if path == "" {
		return nil, nil
	}
	return filter.LoadKeyring(path)
}

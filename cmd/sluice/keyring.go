package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/sluice-storage/sluice/gateway/admin"
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

func keyringCommand() *cli.Command {
	return &cli.Command{
		Name:   "keyring",
		Usage:  "the tenants' encryption keys (the gateway's --keyring file)",
		Action: unknownSubcommand,
		Subcommands: []*cli.Command{
			{Name: "list", Usage: "show the keyring file and its tenants with key ids (never keys)", Flags: []cli.Flag{jsonFlag}, Action: keyringList},
			{Name: "reload", Usage: "read the keyring file again, as SIGHUP does (tenants may be added; a dropped or changed key is refused)",
				Flags: []cli.Flag{jsonFlag}, Action: keyringReload},
		},
	}
}

func keyringList(c *cli.Context) error {
	ctx, cancel := callCtx(c)
	defer cancel()
	k, err := apiClient(c).Keyring(ctx)
	if err != nil {
		return apiErr(err)
	}
	return printKeyring(c, k)
}

func keyringReload(c *cli.Context) error {
	ctx, cancel := callCtx(c)
	defer cancel()
	k, err := apiClient(c).ReloadKeyring(ctx)
	if err != nil {
		return apiErr(err)
	}
	return printKeyring(c, k)
}

func printKeyring(c *cli.Context, k admin.KeyringInfo) error {
	if c.Bool("json") {
		return printJSON(k)
	}
	if k.Path == "" {
		fmt.Println("no keyring: the gateway was started without --keyring")
		return nil
	}
	fmt.Printf("keyring %s: %d tenants\n", k.Path, len(k.Tenants))
	rows := make([][]string, 0, len(k.Tenants))
	for _, t := range k.Tenants {
		rows = append(rows, []string{t.Tenant, t.KeyID})
	}
	if len(rows) > 0 {
		table([]string{"TENANT", "KEY ID"}, rows)
	}
	return nil
}

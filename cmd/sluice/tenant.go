package main

import (
	"fmt"
	"os/user"
	"strconv"

	"github.com/urfave/cli/v2"

	"github.com/sluice-storage/sluice/gateway/admin"
)

func tenantCommand() *cli.Command {
	return &cli.Command{
		Name:   "tenant",
		Usage:  "which local users reach which tenants' volumes (NBD, virtio)",
		Action: unknownSubcommand,
		Subcommands: []*cli.Command{
			{Name: "allow", Usage: "let a local user reach a tenant's volumes", ArgsUsage: "TENANT",
				Flags:  []cli.Flag{&cli.StringFlag{Name: "uid", Usage: "the user: a uid or a user name"}, jsonFlag},
				Action: tenantAllow},
			{Name: "list", Usage: "list the grants", Flags: []cli.Flag{jsonFlag}, Action: tenantList},
			{Name: "revoke", Usage: "remove a grant (by id, from tenant list)", ArgsUsage: "ID", Flags: []cli.Flag{jsonFlag}, Action: tenantRevoke},
		},
	}
}

func tenantAllow(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageErr("tenant allow: want exactly one TENANT argument")
	}
	if err := requireFlag(c, "uid"); err != nil {
		return err
	}
	uid, err := lookupUID(c.String("uid"))
	if err != nil {
		return usageErr("--uid: %v", err)
	}
	ctx, cancel := callCtx(c)
	defer cancel()
	gr, err := apiClient(c).Grant(ctx, admin.GrantRequest{Tenant: c.Args().First(), UID: uid})
	if err != nil {
		return apiErr(err)
	}
	if c.Bool("json") {
		return printJSON(gr)
	}
	fmt.Printf("uid %d may use tenant %s (grant %d)\n", gr.UID, gr.Tenant, gr.ID)
	return nil
}

func tenantList(c *cli.Context) error {
	ctx, cancel := callCtx(c)
	defer cancel()
	grants, err := apiClient(c).Grants(ctx)
	if err != nil {
		return apiErr(err)
	}
	if c.Bool("json") {
		return printJSON(grants)
	}
	rows := make([][]string, 0, len(grants))
	for _, gr := range grants {
		rows = append(rows, []string{strconv.FormatUint(gr.ID, 10), gr.Tenant, strconv.FormatUint(uint64(gr.UID), 10)})
	}
	table([]string{"ID", "TENANT", "UID"}, rows)
	return nil
}

func tenantRevoke(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageErr("tenant revoke: want exactly one ID argument")
	}
	id, err := strconv.ParseUint(c.Args().First(), 10, 64)
	if err != nil {
		return usageErr("tenant revoke: grant id %q is not a number", c.Args().First())
	}
	ctx, cancel := callCtx(c)
	defer cancel()
	if err := apiClient(c).Revoke(ctx, id); err != nil {
		return apiErr(err)
	}
	return printDone(c, map[string]any{"revoked": id}, "revoked grant %d", id)
}

// lookupUID takes a uid or a user name.
func lookupUID(s string) (uint32, error) {
	if n, err := strconv.ParseUint(s, 10, 32); err == nil {
		return uint32(n), nil
	}
	u, err := user.Lookup(s)
	if err != nil {
		return 0, err
	}
	n, err := strconv.ParseUint(u.Uid, 10, 32)
	return uint32(n), err
}

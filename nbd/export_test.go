package nbd

import "github.com/sluice-storage/sluice/gateway"

// The gateway's volumes are what the server serves.
var (
	_ Export                       = (*gateway.Volume)(nil)
	_ interface{ ReadOnly() bool } = (*gateway.Volume)(nil)
)

package nbd

import (
	"context"
	"fmt"
	"net"

	"github.com/sluice-storage/sluice/gateway"
)

// Handoff is a connection that entered the transmission phase without a
// handshake: the Linux nbd driver is given a connected socket and the
// export's size and transmission flags over netlink (NBD_CMD_CONNECT),
// and then sends requests at once. The kernel client uses simple replies
// only, which is what a session without a negotiated structured reply
// gives it.
type Handoff struct {
	Size     int64
	Flags    uint16 // transmission flags (NBD_FLAG_*), for NBD_ATTR_SERVER_FLAGS
	ReadOnly bool
	// Done is closed once the connection has ended and every request it
	// carried has been answered (or abandoned by Abort).
	Done <-chan struct{}

	c *conn
}

// Abort closes the connection at once; requests in flight see a cancelled
// context.
func (h Handoff) Abort() {
	if h.c != nil {
		h.c.abort()
	}
}

// Handoff serves export name over nc, already in the transmission phase.
// The connection belongs to the server from then on (Shutdown ends it as
// it ends negotiated ones); it outlives ctx, which only scopes the lookup.
func (s *Server) Handoff(ctx context.Context, name string, nc net.Conn) (Handoff, error) {
	n := &negotiator{exports: s.exports, readOnly: s.readOnly, maxPayload: s.maxPayload, log: s.log}
	sess, err := n.open(name)
	if err != nil {
		return Handoff{}, err
	}
	tuneSocket(nc)
	c := newConn(s, context.WithoutCancel(ctx), nc)
	c.setSession(sess)
	c.preset = true
	if !s.door.Start(c) {
		c.cancel() // nc stays the caller's
		return Handoff{}, fmt.Errorf("nbd: server is shutting down: %w", gateway.ErrClosed)
	}
	return Handoff{Size: sess.size, Flags: sess.flags, ReadOnly: sess.readOnly, Done: c.done, c: c}, nil
}

package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
)

// TLS (the NBD protocol's STARTTLS, as nbdkit and qemu-nbd offer it).
//
// A listener served with ServeTLS requires TLS: before NBD_OPT_STARTTLS
// every option but ABORT is answered NBD_REP_ERR_TLS_REQD (EXPORT_NAME,
// which cannot be refused, ends the connection). STARTTLS is acknowledged
// and the TLS handshake runs on the connection; the rest of the option
// haggling and the whole transmission phase then go through TLS. With a
// tls.Config that verifies client certificates, Peer.Tenant is the
// verified certificate's common name, which an Authorizer binds to the
// tenant whose exports the client may see and use. A second STARTTLS is
// invalid; a listener served with Serve answers STARTTLS as unsupported.

// repErrTLSReqd is NBD_REP_ERR_TLS_REQD.
const repErrTLSReqd uint32 = 1<<31 | 5

// ServeTLS is Serve with TLS required on every connection (see above).
func (s *Server) ServeTLS(ctx context.Context, l net.Listener, cfg *tls.Config) error {
	if cfg == nil {
		return errors.New("nbd: ServeTLS without a TLS config")
	}
	return s.serve(ctx, l, cfg)
}

// startTLS answers NBD_OPT_STARTTLS.
func (n *negotiator) startTLS(opt uint32, data []byte) error {
	switch {
	case n.tlsConfig == nil:
		return n.reply(opt, repErrUnsup, []byte("TLS is not offered on this listener"))
	case len(data) != 0:
		return n.reply(opt, repErrInvalid, []byte("STARTTLS takes no data"))
	case n.tlsDone:
		return n.reply(opt, repErrInvalid, []byte("TLS is already negotiated"))
	}
	if err := n.reply(opt, repAck, nil); err != nil {
		return err
	}
	r, w, state, err := n.upgrade(n.tlsConfig)
	if err != nil {
		return fmt.Errorf("nbd: TLS handshake: %w", err)
	}
	n.r, n.w, n.tlsDone = r, w, true
	n.peer.TLS = true
	if len(state.VerifiedChains) > 0 && len(state.PeerCertificates) > 0 {
		n.peer.Tenant = state.PeerCertificates[0].Subject.CommonName
	}
	return nil
}

// tlsRequired answers an option sent before STARTTLS on a TLS listener;
// handled reports whether it did.
func (n *negotiator) tlsRequired(opt uint32) (handled bool, err error) {
	if n.tlsConfig == nil || n.tlsDone || opt == optStartTLS || opt == optAbort {
		return false, nil
	}
	if opt == optExportName {
		return true, errors.New("nbd: EXPORT_NAME before STARTTLS on a listener that requires TLS")
	}
	return true, n.reply(opt, repErrTLSReqd, []byte("TLS is required: send NBD_OPT_STARTTLS first"))
}

// upgradeTLS runs the server side of the TLS handshake on the connection
// and makes the rest of it go through TLS.
func (c *conn) upgradeTLS(cfg *tls.Config) (io.Reader, io.Writer, tls.ConnectionState, error) {
	nc, ok := c.nc.(net.Conn)
	if !ok {
		return nil, nil, tls.ConnectionState{}, errors.New("transport is not a network connection")
	}
	if c.br.Buffered() > 0 {
		// The client must wait for our ACK before its ClientHello.
		return nil, nil, tls.ConnectionState{}, errors.New("client sent data before the STARTTLS reply")
	}
	tc := tls.Server(nc, cfg)
	if err := tc.Handshake(); err != nil { // within the handshake deadline set on nc
		return nil, nil, tls.ConnectionState{}, err
	}
	c.nc, c.raw = tc, nil // payloads are read through TLS, not from the socket
	c.br = bufio.NewReaderSize(tc, 128<<10)
	return c.br, tc, tc.ConnectionState(), nil
}

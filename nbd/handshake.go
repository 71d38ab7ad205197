package nbd

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/sluice-storage/sluice/gateway"
	"github.com/sluice-storage/sluice/internal/logcap"
)

// errAbort is returned by negotiate when the client ends the session during
// option haggling (NBD_OPT_ABORT); it is not a failure.
var errAbort = errors.New("nbd: client aborted negotiation")

// session is the outcome of a successful negotiation.
type session struct {
	name       string
	export     Export
	size       int64
	readOnly   bool
	structured bool
	metaAlloc  bool
	flags      uint16 // transmission flags sent to the client
}

// negotiator runs the fixed-newstyle handshake over r and w. It is separate
// from the connection so that it can be fuzzed over plain byte streams.
type negotiator struct {
	r          io.Reader
	w          io.Writer
	exports    Exports
	readOnly   bool // server-wide
	maxPayload int
	log        *slog.Logger
	shutdown   func() bool // reports whether the server is shutting down; may be nil
	peer       Peer        // who the client is (Authorizer)
	tlsConfig  *tls.Config // non-nil: TLS is required (tls.go)
	tlsDone    bool
	// upgrade runs the TLS handshake and returns the new reader and
	// writer (conn.upgradeTLS).
	upgrade func(*tls.Config) (io.Reader, io.Writer, tls.ConnectionState, error)

	noZeroes   bool
	structured bool
	metaAlloc  bool   // base:allocation selected by SET_META_CONTEXT
	metaName   string // export the meta contexts were selected for
	out        []byte // scratch for replies
}

// negotiate performs the handshake: greeting, client flags, options. It returns
// the session to enter transmission with, errAbort on NBD_OPT_ABORT, or an error
// after which the connection must be closed.
func (n *negotiator) negotiate() (*session, error) {
	var hello [18]byte
	binary.BigEndian.PutUint64(hello[0:], magicNBD)
	binary.BigEndian.PutUint64(hello[8:], magicIHaveOpt)
	binary.BigEndian.PutUint16(hello[16:], flagFixedNewstyle|flagNoZeroes)
	if _, err := n.w.Write(hello[:]); err != nil {
		return nil, fmt.Errorf("nbd: send greeting: %w", err)
	}
	var cf [4]byte
	if _, err := io.ReadFull(n.r, cf[:]); err != nil {
		return nil, fmt.Errorf("nbd: read client flags: %w", err)
	}
	flags := binary.BigEndian.Uint32(cf[:])
	if flags&^clientFlagsKnown != 0 {
		return nil, fmt.Errorf("nbd: unknown client flags %#x", flags)
	}
	n.noZeroes = flags&clientFlagNoZeroes != 0
	// Clients without C_FIXED_NEWSTYLE are still answered in fixed newstyle,
	// which the spec allows; old clients only send EXPORT_NAME anyway.

	var hdr [optionHeaderLen]byte
	for i := 0; i < maxOptions; i++ {
		if _, err := io.ReadFull(n.r, hdr[:]); err != nil {
			return nil, fmt.Errorf("nbd: read option: %w", err)
		}
		oh, err := parseOptionHeader(hdr[:])
		if err != nil {
			return nil, err
		}
		if oh.length > maxOptionData {
			// Too big to buffer: skip the data and refuse. EXPORT_NAME cannot
			// be refused, so that one ends the session.
			if oh.option == optExportName {
				return nil, fmt.Errorf("nbd: EXPORT_NAME of %d bytes", oh.length)
			}
			if _, err := io.CopyN(io.Discard, n.r, int64(oh.length)); err != nil {
				return nil, fmt.Errorf("nbd: skip option data: %w", err)
			}
			if err := n.reply(oh.option, repErrTooBig, []byte("option data too large")); err != nil {
				return nil, err
			}
			continue
		}
		data := make([]byte, oh.length)
		if _, err := io.ReadFull(n.r, data); err != nil {
			return nil, fmt.Errorf("nbd: read option data: %w", err)
		}
		sess, err := n.option(oh.option, data)
		if err != nil || sess != nil {
			return sess, err
		}
	}
	return nil, fmt.Errorf("nbd: more than %d options", maxOptions)
}

// option handles one option. It returns a session when the client enters
// transmission, and an error when the connection must end.
func (n *negotiator) option(opt uint32, data []byte) (*session, error) {
	if n.shutdown != nil && n.shutdown() && opt != optAbort {
		if opt == optExportName {
			return nil, errors.New("nbd: shutting down")
		}
		return nil, n.reply(opt, repErrShut, []byte("server is shutting down"))
	}
	if handled, err := n.tlsRequired(opt); handled {
		return nil, err
	}
	switch opt {
	case optStartTLS:
		return nil, n.startTLS(opt, data)

	case optExportName:
		sess, err := n.open(string(data))
		if err != nil {
			return nil, fmt.Errorf("nbd: EXPORT_NAME %q: %w", data, err)
		}
		n.out = binary.BigEndian.AppendUint64(n.out[:0], uint64(sess.size))
		n.out = binary.BigEndian.AppendUint16(n.out, sess.flags)
		if !n.noZeroes {
			n.out = append(n.out, make([]byte, 124)...)
		}
		if _, err := n.w.Write(n.out); err != nil {
			return nil, fmt.Errorf("nbd: send export info: %w", err)
		}
		return sess, nil

	case optAbort:
		_ = n.reply(opt, repAck, nil) // the client may already be gone
		return nil, errAbort

	case optList:
		if len(data) != 0 {
			return nil, n.reply(opt, repErrInvalid, []byte("LIST takes no data"))
		}
		for _, name := range n.exports.Names() {
			if len(name) > maxStringLen || !n.authorized(name) {
				continue
			}
			d := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
			if err := n.reply(opt, repServer, append(d, name...)); err != nil {
				return nil, err
			}
		}
		return nil, n.reply(opt, repAck, nil)

	case optStructuredReply:
		if len(data) != 0 {
			return nil, n.reply(opt, repErrInvalid, []byte("STRUCTURED_REPLY takes no data"))
		}
		if n.structured {
			return nil, n.reply(opt, repErrInvalid, []byte("structured replies already negotiated"))
		}
		n.structured = true
		return nil, n.reply(opt, repAck, nil)

	case optListMetaContext, optSetMetaContext:
		return nil, n.metaContext(opt, data)

	case optInfo, optGo:
		return n.infoGo(opt, data)
	}
	// EXTENDED_HEADERS and anything unknown.
	return nil, n.reply(opt, repErrUnsup, nil)
}

// infoGo answers NBD_OPT_INFO and NBD_OPT_GO.
func (n *negotiator) infoGo(opt uint32, data []byte) (*session, error) {
	req, err := parseInfoRequest(data)
	if err != nil {
		return nil, n.reply(opt, repErrInvalid, []byte(err.Error()))
	}
	sess, err := n.open(req.name)
	if err != nil {
		if errors.Is(err, gateway.ErrNotFound) {
			return nil, n.reply(opt, repErrUnknown, []byte("unknown export"))
		}
		if errors.Is(err, gateway.ErrInvalid) { // not an export (an fs volume): say why
			msg := err.Error()
			return nil, n.reply(opt, repErrUnknown, []byte(msg[:min(len(msg), 256)]))
		}
		n.log.Warn("nbd: export lookup failed", "export", logcap.Wire(req.name), "err", err)
		return nil, n.reply(opt, repErrUnknown, []byte("export unavailable"))
	}
	info := binary.BigEndian.AppendUint16(nil, infoExport)
	info = binary.BigEndian.AppendUint64(info, uint64(sess.size))
	info = binary.BigEndian.AppendUint16(info, sess.flags)
	if err := n.reply(opt, repInfo, info); err != nil {
		return nil, err
	}
	for _, t := range req.infos {
		if t == infoName {
			d := binary.BigEndian.AppendUint16(nil, infoName)
			if err := n.reply(opt, repInfo, append(d, req.name...)); err != nil {
				return nil, err
			}
			break
		}
	}
	// Block sizes are sent unasked (the spec allows it): min 1, preferred
	// 4096, max = MaxPayload.
	bs := binary.BigEndian.AppendUint16(nil, infoBlockSize)
	bs = binary.BigEndian.AppendUint32(bs, 1)
	bs = binary.BigEndian.AppendUint32(bs, 4096)
	bs = binary.BigEndian.AppendUint32(bs, uint32(n.maxPayload))
	if err := n.reply(opt, repInfo, bs); err != nil {
		return nil, err
	}
	if err := n.reply(opt, repAck, nil); err != nil {
		return nil, err
	}
	if opt == optInfo {
		return nil, nil
	}
	return sess, nil
}

// open looks an export up and computes its session for the current state.
func (n *negotiator) open(name string) (*session, error) {
	if !n.authorized(name) {
		return nil, fmt.Errorf("export %q: %w", name, gateway.ErrNotFound)
	}
	exp, err := n.exports.Lookup(name)
	if err != nil {
		return nil, err
	}
	if exp == nil {
		return nil, fmt.Errorf("export %q: %w", name, gateway.ErrNotFound)
	}
	size := exp.Size()
	if size < 0 {
		size = 0
	}
	ro := n.readOnly
	if r, ok := exp.(interface{ ReadOnly() bool }); ok && r.ReadOnly() {
		ro = true
	}
	sess := &session{
		name:       name,
		export:     exp,
		size:       size,
		readOnly:   ro,
		structured: n.structured,
		// Meta contexts selected for another export do not carry over.
		metaAlloc: n.metaAlloc && n.metaName == name,
	}
	sess.flags = tflagHasFlags | tflagSendFlush | tflagCanMultiConn | tflagSendCache
	if ro {
		sess.flags |= tflagReadOnly
	} else {
		sess.flags |= tflagSendFUA | tflagSendTrim | tflagSendWriteZeroes
	}
	if n.structured {
		sess.flags |= tflagSendDF
	}
	return sess, nil
}

// metaContext answers NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT.
// The only context is base:allocation.
func (n *negotiator) metaContext(opt uint32, data []byte) error {
	if !n.structured {
		return n.reply(opt, repErrInvalid, []byte("structured replies not negotiated"))
	}
	req, err := parseMetaRequest(data)
	if err != nil {
		return n.reply(opt, repErrInvalid, []byte(err.Error()))
	}
	if _, err := n.exports.Lookup(req.name); err != nil || !n.authorized(req.name) {
		return n.reply(opt, repErrUnknown, []byte("unknown export"))
	}
	match := false
	if opt == optListMetaContext {
		if len(req.queries) == 0 {
			match = true
		}
		for _, q := range req.queries {
			if q == "base:" || q == metaAllocation {
				match = true
			}
		}
	} else {
		for _, q := range req.queries {
			if q == metaAllocation {
				match = true
			}
		}
		n.metaAlloc = match
		n.metaName = req.name
	}
	if match {
		d := binary.BigEndian.AppendUint32(nil, metaAllocationID)
		if err := n.reply(opt, repMetaContext, append(d, metaAllocation...)); err != nil {
			return err
		}
	}
	return n.reply(opt, repAck, nil)
}

// reply sends one option reply.
func (n *negotiator) reply(opt, typ uint32, data []byte) error {
	n.out = appendOptReply(n.out[:0], opt, typ, data)
	if _, err := n.w.Write(n.out); err != nil {
		return fmt.Errorf("nbd: send option reply: %w", err)
	}
	return nil
}

// authorized asks the exports' Authorizer, if any, whether the client may
// see and use name.
func (n *negotiator) authorized(name string) bool {
	a, ok := n.exports.(Authorizer)
	return !ok || a.Authorize(n.peer, name)
}

package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Wire constants, checked against NetworkBlockDevice/nbd doc/proto.md and
// nbdkit's common/protocol/nbd-protocol.h. All fields are big-endian.

// Magic numbers.
const (
	magicNBD           uint64 = 0x4e42444d41474943 // "NBDMAGIC"
	magicIHaveOpt      uint64 = 0x49484156454F5054 // "IHAVEOPT"
	magicOptReply      uint64 = 0x3e889045565a9
	magicRequest       uint32 = 0x25609513
	magicSimpleReply   uint32 = 0x67446698
	magicStructuredRep uint32 = 0x668e33ef
)

// Handshake flags (server, 16 bits) and client flags (32 bits).
const (
	flagFixedNewstyle uint16 = 1 << 0
	flagNoZeroes      uint16 = 1 << 1

	clientFlagFixedNewstyle uint32 = 1 << 0
	clientFlagNoZeroes      uint32 = 1 << 1
	clientFlagsKnown               = clientFlagFixedNewstyle | clientFlagNoZeroes
)

// Transmission (per-export) flags, 16 bits.
const (
	tflagHasFlags        uint16 = 1 << 0
	tflagReadOnly        uint16 = 1 << 1
	tflagSendFlush       uint16 = 1 << 2
	tflagSendFUA         uint16 = 1 << 3
	tflagRotational      uint16 = 1 << 4
	tflagSendTrim        uint16 = 1 << 5
	tflagSendWriteZeroes uint16 = 1 << 6
	tflagSendDF          uint16 = 1 << 7
	tflagCanMultiConn    uint16 = 1 << 8
	tflagSendResize      uint16 = 1 << 9
	tflagSendCache       uint16 = 1 << 10
	tflagSendFastZero    uint16 = 1 << 11
)

// Options.
const (
	optExportName      uint32 = 1
	optAbort           uint32 = 2
	optList            uint32 = 3
	optStartTLS        uint32 = 5
	optInfo            uint32 = 6
	optGo              uint32 = 7
	optStructuredReply uint32 = 8
	optListMetaContext uint32 = 9
	optSetMetaContext  uint32 = 10
	optExtendedHeaders uint32 = 11
)

// Option reply types.
const (
	repAck         uint32 = 1
	repServer      uint32 = 2
	repInfo        uint32 = 3
	repMetaContext uint32 = 4

	repErrUnsup   uint32 = 1<<31 | 1
	repErrPolicy  uint32 = 1<<31 | 2
	repErrInvalid uint32 = 1<<31 | 3
	repErrUnknown uint32 = 1<<31 | 6
	repErrShut    uint32 = 1<<31 | 7
	repErrTooBig  uint32 = 1<<31 | 9
)

// NBD_INFO_* types carried in NBD_REP_INFO replies.
const (
	infoExport      uint16 = 0
	infoName        uint16 = 1
	infoDescription uint16 = 2
	infoBlockSize   uint16 = 3
)

// Commands.
const (
	cmdRead        uint16 = 0
	cmdWrite       uint16 = 1
	cmdDisc        uint16 = 2
	cmdFlush       uint16 = 3
	cmdTrim        uint16 = 4
	cmdCache       uint16 = 5
	cmdWriteZeroes uint16 = 6
	cmdBlockStatus uint16 = 7
)

// Command flags.
const (
	cmdFlagFUA      uint16 = 1 << 0
	cmdFlagNoHole   uint16 = 1 << 1
	cmdFlagDF       uint16 = 1 << 2
	cmdFlagReqOne   uint16 = 1 << 3
	cmdFlagFastZero uint16 = 1 << 4
)

// Structured reply flags and types.
const (
	replyFlagDone uint16 = 1 << 0

	replyTypeNone        uint16 = 0
	replyTypeOffsetData  uint16 = 1
	replyTypeOffsetHole  uint16 = 2
	replyTypeBlockStatus uint16 = 5
	replyTypeError       uint16 = 1<<15 | 1
	replyTypeErrorOffset uint16 = 1<<15 | 2
)

// base:allocation status flags.
const (
	stateHole uint32 = 1 << 0
	stateZero uint32 = 1 << 1
)

// NBD error values (the only ones a reply may carry).
const (
	errnoPerm        uint32 = 1
	errnoIO          uint32 = 5
	errnoNoMem       uint32 = 12
	errnoInval       uint32 = 22
	errnoNoSpace     uint32 = 28
	errnoOverflow    uint32 = 75
	errnoNotSup      uint32 = 95
	errnoShutdown    uint32 = 108
	maxStringLen            = 4096 // spec: strings MUST be no longer than this
	metaAllocation          = "base:allocation"
	metaAllocationID        = 1 // the context ID we hand out for base:allocation
)

// Sizes of fixed-length wire structures.
const (
	requestHeaderLen    = 28 // magic 4, flags 2, type 2, handle 8, offset 8, length 4
	simpleReplyLen      = 16 // magic 4, error 4, handle 8
	structuredHeaderLen = 20 // magic 4, flags 2, type 2, handle 8, length 4
	optionHeaderLen     = 16 // magic 8, option 4, length 4
	optReplyHeaderLen   = 20 // magic 8, option 4, type 4, length 4
)

var errBadMagic = errors.New("nbd: bad magic")

// requestHeader is one parsed transmission-phase request header.
type requestHeader struct {
	flags  uint16
	typ    uint16
	handle uint64
	offset uint64
	length uint32
}

// parseRequestHeader decodes a 28-byte request header. It fails only on a
// short buffer or a bad magic; everything else is judged by checkRequest.
func parseRequestHeader(b []byte) (requestHeader, error) {
	if len(b) < requestHeaderLen {
		return requestHeader{}, fmt.Errorf("nbd: short request header (%d bytes)", len(b))
	}
	if m := binary.BigEndian.Uint32(b[0:4]); m != magicRequest {
		return requestHeader{}, fmt.Errorf("%w: request magic %#x", errBadMagic, m)
	}
	return requestHeader{
		flags:  binary.BigEndian.Uint16(b[4:6]),
		typ:    binary.BigEndian.Uint16(b[6:8]),
		handle: binary.BigEndian.Uint64(b[8:16]),
		offset: binary.BigEndian.Uint64(b[16:24]),
		length: binary.BigEndian.Uint32(b[24:28]),
	}, nil
}

// exportState is what checkRequest needs to know about the negotiated export.
type exportState struct {
	size       int64
	readOnly   bool
	structured bool // structured replies negotiated
	metaAlloc  bool // base:allocation selected
	maxPayload uint32
}

// checkRequest validates a request header against the export and returns 0
// when the request may run, or the NBD errno to reply with. It never looks
// at the payload; the caller decides how to consume a WRITE's payload.
func checkRequest(h requestHeader, st exportState) uint32 {
	var allowed uint16 = cmdFlagFUA // FUA is valid on every command (spec)
	switch h.typ {
	case cmdRead:
		if st.structured {
			allowed |= cmdFlagDF
		}
	case cmdWrite, cmdTrim, cmdCache:
	case cmdWriteZeroes:
		allowed |= cmdFlagNoHole | cmdFlagFastZero
	case cmdBlockStatus:
		allowed |= cmdFlagReqOne
	case cmdFlush, cmdDisc:
		// Offset and length are reserved (must be zero); we do not insist.
		if h.flags&^allowed != 0 {
			return errnoInval
		}
		return 0
	default:
		return errnoInval
	}
	if h.flags&^allowed != 0 {
		return errnoInval
	}
	if h.typ == cmdWriteZeroes && h.flags&cmdFlagFastZero != 0 {
		// We never advertise SEND_FAST_ZERO; ENOTSUP is the "not fast" answer.
		return errnoNotSup
	}
	if h.typ == cmdBlockStatus && !st.metaAlloc {
		return errnoInval
	}
	if h.length == 0 {
		return errnoInval
	}
	end := h.offset + uint64(h.length)
	if h.offset > uint64(1<<63-1) || end < h.offset || end > uint64(1<<63-1) {
		return errnoInval // offset+length overflows
	}
	if (h.typ == cmdRead || h.typ == cmdWrite) && h.length > st.maxPayload {
		return errnoInval
	}
	isWrite := h.typ == cmdWrite || h.typ == cmdTrim || h.typ == cmdWriteZeroes
	if isWrite && st.readOnly {
		return errnoPerm
	}
	if end > uint64(st.size) {
		if h.typ == cmdWrite || h.typ == cmdWriteZeroes {
			return errnoNoSpace
		}
		return errnoInval
	}
	return 0
}

// appendSimpleReply appends a 16-byte simple reply header.
func appendSimpleReply(b []byte, errno uint32, handle uint64) []byte {
	b = binary.BigEndian.AppendUint32(b, magicSimpleReply)
	b = binary.BigEndian.AppendUint32(b, errno)
	return binary.BigEndian.AppendUint64(b, handle)
}

// appendStructuredHeader appends a 20-byte structured reply chunk header.
func appendStructuredHeader(b []byte, flags, typ uint16, handle uint64, length uint32) []byte {
	b = binary.BigEndian.AppendUint32(b, magicStructuredRep)
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint16(b, typ)
	b = binary.BigEndian.AppendUint64(b, handle)
	return binary.BigEndian.AppendUint32(b, length)
}

// appendErrorChunk appends a complete NBD_REPLY_TYPE_ERROR chunk (DONE set).
func appendErrorChunk(b []byte, handle uint64, errno uint32, msg string) []byte {
	if len(msg) > 1024 {
		msg = msg[:1024]
	}
	b = appendStructuredHeader(b, replyFlagDone, replyTypeError, handle, uint32(6+len(msg)))
	b = binary.BigEndian.AppendUint32(b, errno)
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	return append(b, msg...)
}

// optionHeader is one parsed handshake option header.
type optionHeader struct {
	option uint32
	length uint32
}

// parseOptionHeader decodes a 16-byte option header.
func parseOptionHeader(b []byte) (optionHeader, error) {
	if len(b) < optionHeaderLen {
		return optionHeader{}, fmt.Errorf("nbd: short option header (%d bytes)", len(b))
	}
	if m := binary.BigEndian.Uint64(b[0:8]); m != magicIHaveOpt {
		return optionHeader{}, fmt.Errorf("%w: option magic %#x", errBadMagic, m)
	}
	return optionHeader{
		option: binary.BigEndian.Uint32(b[8:12]),
		length: binary.BigEndian.Uint32(b[12:16]),
	}, nil
}

// errOptInvalid marks option data that is syntactically wrong (NBD_REP_ERR_INVALID).
var errOptInvalid = errors.New("nbd: invalid option data")

// infoRequest is the data of NBD_OPT_INFO and NBD_OPT_GO.
type infoRequest struct {
	name  string
	infos []uint16
}

// parseInfoRequest decodes NBD_OPT_INFO / NBD_OPT_GO data: name length (32),
// name, number of info requests (16), info types (16 each).
func parseInfoRequest(d []byte) (infoRequest, error) {
	if len(d) < 6 {
		return infoRequest{}, fmt.Errorf("%w: %d bytes is too short for INFO/GO", errOptInvalid, len(d))
	}
	n := binary.BigEndian.Uint32(d[0:4])
	if n > maxStringLen || uint64(n)+6 > uint64(len(d)) {
		return infoRequest{}, fmt.Errorf("%w: export name length %d", errOptInvalid, n)
	}
	req := infoRequest{name: string(d[4 : 4+n])}
	rest := d[4+n:]
	count := int(binary.BigEndian.Uint16(rest[0:2]))
	rest = rest[2:]
	if len(rest) != 2*count {
		return infoRequest{}, fmt.Errorf("%w: %d info requests in %d bytes", errOptInvalid, count, len(rest))
	}
	req.infos = make([]uint16, count)
	for i := range req.infos {
		req.infos[i] = binary.BigEndian.Uint16(rest[2*i:])
	}
	return req, nil
}

// metaRequest is the data of NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT.
type metaRequest struct {
	name    string
	queries []string
}

// parseMetaRequest decodes meta-context option data: export name length (32),
// name, number of queries (32), then per query its length (32) and bytes.
func parseMetaRequest(d []byte) (metaRequest, error) {
	if len(d) < 8 {
		return metaRequest{}, fmt.Errorf("%w: %d bytes is too short for a meta context request", errOptInvalid, len(d))
	}
	n := binary.BigEndian.Uint32(d[0:4])
	if n > maxStringLen || uint64(n)+8 > uint64(len(d)) {
		return metaRequest{}, fmt.Errorf("%w: export name length %d", errOptInvalid, n)
	}
	req := metaRequest{name: string(d[4 : 4+n])}
	rest := d[4+n:]
	count := binary.BigEndian.Uint32(rest[0:4])
	rest = rest[4:]
	if uint64(count)*4 > uint64(len(rest)) {
		return metaRequest{}, fmt.Errorf("%w: %d queries in %d bytes", errOptInvalid, count, len(rest))
	}
	req.queries = make([]string, 0, count)
	for i := uint32(0); i < count; i++ {
		if len(rest) < 4 {
			return metaRequest{}, fmt.Errorf("%w: truncated query %d", errOptInvalid, i)
		}
		ql := binary.BigEndian.Uint32(rest[0:4])
		if ql > maxStringLen || uint64(ql)+4 > uint64(len(rest)) {
			return metaRequest{}, fmt.Errorf("%w: query length %d", errOptInvalid, ql)
		}
		req.queries = append(req.queries, string(rest[4:4+ql]))
		rest = rest[4+ql:]
	}
	if len(rest) != 0 {
		return metaRequest{}, fmt.Errorf("%w: %d trailing bytes", errOptInvalid, len(rest))
	}
	return req, nil
}

// appendOptReply appends an option reply header followed by data.
func appendOptReply(b []byte, option, typ uint32, data []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, magicOptReply)
	b = binary.BigEndian.AppendUint32(b, option)
	b = binary.BigEndian.AppendUint32(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

package virtio

import (
	"encoding/binary"
	"fmt"
)

// vhost-user request types (front-end → back-end), QEMU docs/interop/vhost-user.rst.
const (
	reqGetFeatures         = 1
	reqSetFeatures         = 2
	reqSetOwner            = 3
	reqResetOwner          = 4
	reqSetMemTable         = 5
	reqSetLogBase          = 6
	reqSetLogFd            = 7
	reqSetVringNum         = 8
	reqSetVringAddr        = 9
	reqSetVringBase        = 10
	reqGetVringBase        = 11
	reqSetVringKick        = 12
	reqSetVringCall        = 13
	reqSetVringErr         = 14
	reqGetProtocolFeatures = 15
	reqSetProtocolFeatures = 16
	reqGetQueueNum         = 17
	reqSetVringEnable      = 18
	reqSendRARP            = 19
	reqNetSetMTU           = 20
	reqSetBackendReqFd     = 21
	reqGetConfig           = 24
	reqSetConfig           = 25
	reqGetInflightFd       = 31
	reqSetInflightFd       = 32
	reqResetDevice         = 34
	reqGetMaxMemSlots      = 36
	reqAddMemReg           = 37
	reqRemMemReg           = 38
	reqSetStatus           = 39
	reqGetStatus           = 40
)

func reqName(r uint32) string {
	switch r {
	case reqGetFeatures:
		return "GET_FEATURES"
	case reqSetFeatures:
		return "SET_FEATURES"
	case reqSetOwner:
		return "SET_OWNER"
	case reqResetOwner:
		return "RESET_OWNER"
	case reqSetMemTable:
		return "SET_MEM_TABLE"
	case reqSetLogBase:
		return "SET_LOG_BASE"
	case reqSetLogFd:
		return "SET_LOG_FD"
	case reqSetVringNum:
		return "SET_VRING_NUM"
	case reqSetVringAddr:
		return "SET_VRING_ADDR"
	case reqSetVringBase:
		return "SET_VRING_BASE"
	case reqGetVringBase:
		return "GET_VRING_BASE"
	case reqSetVringKick:
		return "SET_VRING_KICK"
	case reqSetVringCall:
		return "SET_VRING_CALL"
	case reqSetVringErr:
		return "SET_VRING_ERR"
	case reqGetProtocolFeatures:
		return "GET_PROTOCOL_FEATURES"
	case reqSetProtocolFeatures:
		return "SET_PROTOCOL_FEATURES"
	case reqGetQueueNum:
		return "GET_QUEUE_NUM"
	case reqSetVringEnable:
		return "SET_VRING_ENABLE"
	case reqSendRARP:
		return "SEND_RARP"
	case reqNetSetMTU:
		return "NET_SET_MTU"
	case reqSetBackendReqFd:
		return "SET_BACKEND_REQ_FD"
	case reqGetConfig:
		return "GET_CONFIG"
	case reqSetConfig:
		return "SET_CONFIG"
	case reqGetInflightFd:
		return "GET_INFLIGHT_FD"
	case reqSetInflightFd:
		return "SET_INFLIGHT_FD"
	case reqResetDevice:
		return "RESET_DEVICE"
	case reqGetMaxMemSlots:
		return "GET_MAX_MEM_SLOTS"
	case reqAddMemReg:
		return "ADD_MEM_REG"
	case reqRemMemReg:
		return "REM_MEM_REG"
	case reqSetStatus:
		return "SET_STATUS"
	case reqGetStatus:
		return "GET_STATUS"
	}
	return fmt.Sprintf("request(%d)", r)
}

// Header flags.
const (
	flagVersionMask = 0x3
	flagVersion     = 0x1
	flagReply       = 0x4
	flagNeedReply   = 0x8
)

// vhost-user protocol feature bits.
const (
	protoMQ                 = 0
	protoLogShmfd           = 1
	protoRARP               = 2
	protoReplyAck           = 3
	protoMTU                = 4
	protoBackendReq         = 5
	protoCrossEndian        = 6
	protoCrypto             = 7
	protoPagefault          = 8
	protoConfig             = 9
	protoBackendSendFd      = 10
	protoHostNotifier       = 11
	protoInflightShmfd      = 12
	protoResetDevice        = 13
	protoInbandNotification = 14
	protoConfigureMemSlots  = 15
	protoStatus             = 16
)

// Virtio feature bits (transport and ring).
const (
	featNotifyOnEmpty     = 24
	featAnyLayout         = 27
	featIndirectDesc      = 28
	featEventIdx          = 29
	featProtocolFeatures  = 30 // VHOST_USER_F_PROTOCOL_FEATURES
	featVersion1          = 32
	featAccessPlatform    = 33
	featRingPacked        = 34
	featInOrder           = 35
	blkFeatSizeMax        = 1
	blkFeatSegMax         = 2
	blkFeatGeometry       = 4
	blkFeatRO             = 5
	blkFeatBlkSize        = 6
	blkFeatFlush          = 9
	blkFeatTopology       = 10
	blkFeatConfigWCE      = 11
	blkFeatMQ             = 12
	blkFeatDiscard        = 13
	blkFeatWriteZeroes    = 14
	vringStateNoFd        = 1 << 8 // SET_VRING_KICK/CALL/ERR: no fd, poll instead
	vringIndexMask        = 0xff
	vringAddrFlagLog      = 1 // SET_VRING_ADDR flags: VHOST_VRING_F_LOG
	maxQueueSize          = 32768
	maxConfigSize         = 256 // VHOST_USER_MAX_CONFIG_SIZE
	maxMemTableRegions    = 8   // VHOST_MEMORY_BASELINE_NREGIONS
	defaultMaxMemSlots    = 32
	maxVringIndex         = 255
	vhostUserMaxQueues    = 64 // our cap on GET_QUEUE_NUM and Options.Queues
	virtioBlkDeviceIDSize = 20
)

func bit(n uint) uint64 { return 1 << n }

// Split ring constants.
const (
	descFlagNext     = 1
	descFlagWrite    = 2
	descFlagIndirect = 4
	descSize         = 16

	availFlagNoInterrupt = 1 // VRING_AVAIL_F_NO_INTERRUPT
	usedFlagNoNotify     = 1 // VRING_USED_F_NO_NOTIFY
)

// virtio-blk request types and status values.
const (
	blkTypeIn          = 0
	blkTypeOut         = 1
	blkTypeFlush       = 4
	blkTypeGetID       = 8
	blkTypeGetLifetime = 10
	blkTypeDiscard     = 11
	blkTypeWriteZeroes = 13
	blkTypeSecureErase = 14

	blkStatusOK     = 0
	blkStatusIOErr  = 1
	blkStatusUnsupp = 2

	blkHeaderSize     = 16
	blkDiscardSegSize = 16
	blkWZFlagUnmap    = 1
	sectorSize        = 512
	sectorShift       = 9
)

// blkConfig is struct virtio_blk_config up to write_zeroes_may_unmap and its
// padding (60 bytes); fields after it (secure erase, zoned) read as zero.
type blkConfig struct {
	Capacity               uint64 // 512-byte sectors
	SizeMax                uint32
	SegMax                 uint32
	Cylinders              uint16
	Heads                  uint8
	Sectors                uint8
	BlkSize                uint32
	PhysicalBlockExp       uint8
	AlignmentOffset        uint8
	MinIOSize              uint16
	OptIOSize              uint32
	Writeback              uint8
	NumQueues              uint16
	MaxDiscardSectors      uint32
	MaxDiscardSeg          uint32
	DiscardSectorAlignment uint32
	MaxWriteZeroesSectors  uint32
	MaxWriteZeroesSeg      uint32
	WriteZeroesMayUnmap    uint8
}

const blkConfigSize = 60

func (c blkConfig) encode() []byte {
	b := make([]byte, blkConfigSize)
	le := binary.LittleEndian
	le.PutUint64(b[0:], c.Capacity)
	le.PutUint32(b[8:], c.SizeMax)
	le.PutUint32(b[12:], c.SegMax)
	le.PutUint16(b[16:], c.Cylinders)
	b[18] = c.Heads
	b[19] = c.Sectors
	le.PutUint32(b[20:], c.BlkSize)
	b[24] = c.PhysicalBlockExp
	b[25] = c.AlignmentOffset
	le.PutUint16(b[26:], c.MinIOSize)
	le.PutUint32(b[28:], c.OptIOSize)
	b[32] = c.Writeback
	le.PutUint16(b[34:], c.NumQueues)
	le.PutUint32(b[36:], c.MaxDiscardSectors)
	le.PutUint32(b[40:], c.MaxDiscardSeg)
	le.PutUint32(b[44:], c.DiscardSectorAlignment)
	le.PutUint32(b[48:], c.MaxWriteZeroesSectors)
	le.PutUint32(b[52:], c.MaxWriteZeroesSeg)
	b[56] = c.WriteZeroesMayUnmap
	return b
}

// decodeBlkConfig reads as much of the config as b holds; missing fields are zero.
func decodeBlkConfig(b []byte) blkConfig {
	full := make([]byte, blkConfigSize)
	copy(full, b)
	le := binary.LittleEndian
	return blkConfig{
		Capacity:               le.Uint64(full[0:]),
		SizeMax:                le.Uint32(full[8:]),
		SegMax:                 le.Uint32(full[12:]),
		Cylinders:              le.Uint16(full[16:]),
		Heads:                  full[18],
		Sectors:                full[19],
		BlkSize:                le.Uint32(full[20:]),
		PhysicalBlockExp:       full[24],
		AlignmentOffset:        full[25],
		MinIOSize:              le.Uint16(full[26:]),
		OptIOSize:              le.Uint32(full[28:]),
		Writeback:              full[32],
		NumQueues:              le.Uint16(full[34:]),
		MaxDiscardSectors:      le.Uint32(full[36:]),
		MaxDiscardSeg:          le.Uint32(full[40:]),
		DiscardSectorAlignment: le.Uint32(full[44:]),
		MaxWriteZeroesSectors:  le.Uint32(full[48:]),
		MaxWriteZeroesSeg:      le.Uint32(full[52:]),
		WriteZeroesMayUnmap:    full[56],
	}
}

// needEvent is vring_need_event from Linux include/uapi/linux/virtio_ring.h:
// notify if the other side asked to be woken at an index in (old, new].
func needEvent(event, newIdx, old uint16) bool {
	return newIdx-event-1 < newIdx-old
}

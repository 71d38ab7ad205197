package handover

import (
	"errors"
	"fmt"
)

// Limits on the virtio messages (state version 5).
const (
	// MaxVirtioConns bounds the connections of one export.
	MaxVirtioConns = 1024
	// MaxVirtioRegions bounds a connection's memory regions (32 slots
	// with ADD_MEM_REG, 8 with SET_MEM_TABLE).
	MaxVirtioRegions = 32
	// MaxVirtioRings bounds a connection's rings (vhost-user's 64 queues
	// at most, the server offers fewer).
	MaxVirtioRings = 64
	maxRingSize    = 32768
	// MaxFDs bounds the fds of one message (SCM_MAX_FD).
	MaxFDs = 253
)

// VirtioConn is a vhost-user connection the old process stopped at a
// message boundary, with its rings stopped after their in-flight requests
// completed: what the front-end set up, which the new process sets up
// again without the front-end (virtio.Server.Adopt). The fds come with
// the message in this order: the connection's socket; one per region
// (mapped from file offset 0, as the front-end sent it); the inflight
// region's, if any; then per ring, in order, its kick, call and error
// eventfds, those it has.
type VirtioConn struct {
	Features         uint64          `json:"features"`
	ProtocolFeatures uint64          `json:"protocol_features"`
	Regions          []VirtioRegion  `json:"regions,omitempty"`
	Inflight         *VirtioInflight `json:"inflight,omitempty"`
	Rings            []VirtioRing    `json:"rings,omitempty"`
}

// VirtioRegion is one region of the front-end's memory, as
// SET_MEM_TABLE or ADD_MEM_REG described it.
type VirtioRegion struct {
	GPA        uint64 `json:"gpa"`
	Size       uint64 `json:"size"`
	UVA        uint64 `json:"uva"`
	MmapOffset uint64 `json:"mmap_offset"`
}

// VirtioInflight is the inflight region's place in its fd and its shape.
type VirtioInflight struct {
	MmapSize   uint64 `json:"mmap_size"`
	MmapOffset uint64 `json:"mmap_offset"`
	NumQueues  uint16 `json:"num_queues"`
	QueueSize  uint16 `json:"queue_size"`
}

// VirtioRing is one ring's configuration and position (Base: the next
// avail entry, every request before it completed).
type VirtioRing struct {
	Index     int    `json:"index"`
	Num       int    `json:"num,omitempty"`
	AddrSet   bool   `json:"addr_set,omitempty"`
	AddrFlags uint32 `json:"addr_flags,omitempty"`
	Desc      uint64 `json:"desc,omitempty"`
	Used      uint64 `json:"used,omitempty"`
	Avail     uint64 `json:"avail,omitempty"`
	Log       uint64 `json:"log,omitempty"`
	Base      uint16 `json:"base,omitempty"`
	Started   bool   `json:"started,omitempty"`
	Enabled   bool   `json:"enabled,omitempty"`
	KickNoFd  bool   `json:"kick_no_fd,omitempty"`
	Kick      bool   `json:"kick,omitempty"`
	Call      bool   `json:"call,omitempty"`
	Err       bool   `json:"err,omitempty"`
}

// FDs is how many fds come with the connection's message.
func (v *VirtioConn) FDs() int {
	n := 1 + len(v.Regions)
	if v.Inflight != nil {
		n++
	}
	for _, r := range v.Rings {
		for _, has := range []bool{r.Kick, r.Call, r.Err} {
			if has {
				n++
			}
		}
	}
	return n
}

func (v *VirtioConn) check() error {
	switch {
	case v == nil:
		return errors.New("no virtio connection")
	case len(v.Regions) > MaxVirtioRegions:
		return fmt.Errorf("%d memory regions (at most %d)", len(v.Regions), MaxVirtioRegions)
	case len(v.Rings) > MaxVirtioRings:
		return fmt.Errorf("%d rings (at most %d)", len(v.Rings), MaxVirtioRings)
	case v.Inflight != nil && (v.Inflight.NumQueues == 0 || v.Inflight.NumQueues > MaxVirtioRings || v.Inflight.QueueSize == 0):
		return fmt.Errorf("inflight region of %d queues of %d", v.Inflight.NumQueues, v.Inflight.QueueSize)
	}
	seen := map[int]bool{}
	for _, r := range v.Rings {
		if r.Index < 0 || r.Index >= MaxVirtioRings || seen[r.Index] {
			return fmt.Errorf("ring index %d out of range or repeated", r.Index)
		}
		seen[r.Index] = true
		if r.Num < 0 || r.Num > maxRingSize || r.Num&(r.Num-1) != 0 {
			return fmt.Errorf("ring %d of %d entries", r.Index, r.Num)
		}
		if r.Kick && r.KickNoFd {
			return fmt.Errorf("ring %d with a kick fd and none", r.Index)
		}
	}
	if v.FDs() > MaxFDs {
		return fmt.Errorf("%d fds (at most %d)", v.FDs(), MaxFDs)
	}
	return nil
}

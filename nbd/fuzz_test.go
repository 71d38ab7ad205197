package nbd

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"sync"
	"testing"
)

// FuzzOptions feeds arbitrary bytes to the option parser after a valid client
// flags word. It must not panic, and a session it returns must be sane.
func FuzzOptions(f *testing.F) {
	opt := func(o uint32, d []byte) []byte {
		b := binary.BigEndian.AppendUint64(nil, magicIHaveOpt)
		b = binary.BigEndian.AppendUint32(b, o)
		b = binary.BigEndian.AppendUint32(b, uint32(len(d)))
		return append(b, d...)
	}
	f.Add(opt(optGo, infoData(testName, infoName, infoBlockSize)))
	f.Add(append(opt(optStructuredReply, nil), opt(optSetMetaContext, metaData(testName, metaAllocation))...))
	f.Add(append(opt(optList, nil), opt(optExportName, []byte(testName))...))
	f.Add(append(opt(optListMetaContext, metaData(testName)), opt(optInfo, infoData("x"))...))
	f.Add(opt(optAbort, nil))
	f.Add(opt(0xdead, []byte("junk")))
	f.Add(opt(optInfo, []byte{0xff, 0xff, 0xff, 0xff, 0, 0}))
	f.Add(opt(optSetMetaContext, []byte{0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}))
	exports := memExports{testName: newMemExport(1 << 20), "": newMemExport(512)}
	log := testLogger(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		in := binary.BigEndian.AppendUint32(nil, clientFlagFixedNewstyle|clientFlagNoZeroes)
		n := &negotiator{
			r:          bytes.NewReader(append(in, data...)),
			w:          io.Discard,
			exports:    exports,
			maxPayload: DefaultMaxPayload,
			log:        log,
		}
		sess, err := n.negotiate()
		if err != nil {
			if sess != nil {
				t.Fatal("session with an error")
			}
			return
		}
		if sess.export == nil || sess.flags&tflagHasFlags == 0 || sess.size != sess.export.Size() {
			t.Fatalf("bad session %+v", sess)
		}
		if sess.metaAlloc && !sess.structured {
			t.Fatal("base:allocation without structured replies")
		}
	})
}

// fuzzTransport is a connection whose client side is a fixed byte string.
type fuzzTransport struct {
	r  io.Reader
	mu sync.Mutex
	w  bytes.Buffer
}

func (f *fuzzTransport) Read(p []byte) (int, error) { return f.r.Read(p) }
func (f *fuzzTransport) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.w.Write(p)
}
func (f *fuzzTransport) Close() error { return nil }

// FuzzRequests feeds arbitrary bytes to the transmission phase. The first
// byte picks the negotiated mode. It must not panic, must not hang, and must
// never pass an out-of-bounds request to the export.
func FuzzRequests(f *testing.F) {
	req := func(flags, typ uint16, off uint64, n uint32, payload []byte) []byte {
		return requestBytes(flags, typ, 1, off, n, payload)
	}
	cat := func(bs ...[]byte) []byte { return bytes.Join(bs, nil) }
	f.Add(cat([]byte{3}, req(0, cmdWrite, 0, 4, []byte("abcd")), req(0, cmdRead, 0, 4, nil)))
	f.Add(cat([]byte{3}, req(0, cmdBlockStatus, 0, 8192, nil), req(cmdFlagReqOne, cmdBlockStatus, 100, 1, nil)))
	f.Add(cat([]byte{0}, req(0, cmdTrim, 0, 4096, nil), req(cmdFlagNoHole, cmdWriteZeroes, 8192, 100, nil), req(0, cmdFlush, 0, 0, nil)))
	f.Add(cat([]byte{1}, req(0, cmdWrite, 1<<16-2, 4, []byte("abcd")), req(0, cmdRead, 1<<64-1, 2, nil)))
	f.Add(cat([]byte{4}, req(0, cmdWrite, 0, 4, []byte("abcd")), req(0, cmdCache, 0, 1, nil), req(0, cmdDisc, 0, 0, nil)))
	f.Add(cat([]byte{1}, req(0, cmdWrite, 0, 1<<20, nil)))
	f.Add(cat([]byte{2}, req(0, 99, 0, 1, nil), []byte{0x25, 0x60, 0x95}))
	log := testLogger(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		mode := data[0]
		m := newMemExport(1 << 16)
		m.ro = mode&4 != 0
		s := NewServer(memExports{testName: m}, Options{Logger: log, MaxPayload: 8192})
		tr := &fuzzTransport{r: bytes.NewReader(data[1:])}
		c := newConn(s, context.Background(), tr)
		c.setSession(&session{
			name:       testName,
			export:     m,
			size:       m.Size(),
			readOnly:   m.ro,
			structured: mode&1 != 0,
			metaAlloc:  mode&3 == 3,
		})
		c.setPhase(phaseTransmission)
		c.transmit()
		c.finish()
		if n := m.outside.Load(); n != 0 {
			t.Fatalf("%d out-of-bounds requests reached the export", n)
		}
		if err := checkReplyStream(tr.w.Bytes()); err != nil {
			t.Fatalf("reply stream: %v", err)
		}
	})
}

// checkReplyStream checks that structured replies are self-delimiting and
// every reply starts with a known magic. Simple READ replies carry data whose
// length the stream does not say, so the check stops at the first one.
func checkReplyStream(b []byte) error {
	for len(b) > 0 {
		if len(b) < 4 {
			return errors.New("truncated magic")
		}
		switch binary.BigEndian.Uint32(b) {
		case magicSimpleReply:
			if len(b) < simpleReplyLen {
				return errors.New("truncated simple reply")
			}
			if binary.BigEndian.Uint32(b[4:]) == 0 {
				return nil // may be followed by READ data
			}
			b = b[simpleReplyLen:]
		case magicStructuredRep:
			if len(b) < structuredHeaderLen {
				return errors.New("truncated chunk header")
			}
			n := int(binary.BigEndian.Uint32(b[16:]))
			if len(b) < structuredHeaderLen+n {
				return errors.New("truncated chunk payload")
			}
			b = b[structuredHeaderLen+n:]
		default:
			return errors.New("bad reply magic")
		}
	}
	return nil
}

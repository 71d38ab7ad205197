package nbd

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluice-storage/sluice/internal/testpki"
)

// tenantExports authorizes TLS clients for the tenant of their
// certificate, like the gateway does.
type tenantExports struct{ memExports }

func (tenantExports) Authorize(p Peer, name string) bool {
	t, _, _ := strings.Cut(name, "/")
	return p.TLS && p.Tenant == t
}

type pki struct {
	ca     *testpki.CA
	server *tls.Config
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	ca, err := testpki.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue("localhost", true)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := leaf.TLS()
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	return &pki{ca: ca, server: &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert}}
}

// client returns a client config with a certificate for tenant cn ("":
// no client certificate).
func (p *pki) client(t testing.TB, cn string) *tls.Config {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(p.ca.Cert)
	cfg := &tls.Config{RootCAs: pool, ServerName: "localhost"}
	if cn != "" {
		leaf, err := p.ca.Issue(cn, false)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := leaf.TLS()
		if err != nil {
			t.Fatal(err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg
}

// startTLSServer serves tenant exports with TLS required on a unix socket.
func startTLSServer(t *testing.T, p *pki) string {
	t.Helper()
	exports := tenantExports{memExports{"tenant/vol": newMemExport(1 << 20), "other/vol": newMemExport(1 << 20)}}
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(exports, Options{Logger: testLogger(t)})
	done := make(chan error, 1)
	go func() { done <- s.ServeTLS(context.Background(), l, p.server) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s.Shutdown(ctx)
		<-done
	})
	return sock
}

// goTo sends NBD_OPT_GO for name and returns the export size.
func (rc *rawClient) goTo(name string) uint64 {
	rc.t.Helper()
	rc.sendOpt(optGo, infoData(name))
	var size uint64
	for {
		r := rc.readOptReply()
		if r.typ == repAck {
			return size
		}
		if r.typ != repInfo {
			rc.t.Fatalf("GO %q: reply %#x %q", name, r.typ, r.data)
		}
		if binary.BigEndian.Uint16(r.data) == infoExport {
			size = binary.BigEndian.Uint64(r.data[2:])
		}
	}
}

// starttls sends NBD_OPT_STARTTLS, checks the ACK and runs the client
// handshake; it returns the client with its stream switched to TLS.
func (rc *rawClient) starttls(cfg *tls.Config) error {
	rc.sendOpt(optStartTLS, nil)
	if r := rc.readOptReply(); r.typ != repAck {
		rc.t.Fatalf("STARTTLS: reply %#x %q", r.typ, r.data)
	}
	tc := tls.Client(rc.c, cfg)
	if err := tc.Handshake(); err != nil {
		return err
	}
	rc.c, rc.r = tc, bufio.NewReader(tc)
	return nil
}

func listNames(rc *rawClient) []string {
	rc.sendOpt(optList, nil)
	var names []string
	for {
		r := rc.readOptReply()
		if r.typ == repAck {
			return names
		}
		if r.typ != repServer {
			rc.t.Fatalf("LIST: %#x", r.typ)
		}
		names = append(names, string(r.data[4:4+binary.BigEndian.Uint32(r.data)]))
	}
}

// TestTLSRequired: on a TLS listener every option before STARTTLS is
// refused with NBD_REP_ERR_TLS_REQD (EXPORT_NAME ends the connection);
// after it a client with a certificate for its tenant lists and opens
// that tenant's exports only, and does IO through TLS.
func TestTLSRequired(t *testing.T) {
	p := newPKI(t)
	sock := startTLSServer(t, p)

	rc := dial(t, sock)
	rc.hello(clientFlagFixedNewstyle | clientFlagNoZeroes)
	for _, opt := range []uint32{optList, optInfo, optGo, optStructuredReply} {
		rc.sendOpt(opt, infoData("tenant/vol"))
		if r := rc.readOptReply(); r.typ != repErrTLSReqd {
			t.Fatalf("option %d before STARTTLS: reply %#x, want TLS_REQD", opt, r.typ)
		}
	}
	rc.sendOpt(optStartTLS, []byte("x"))
	if r := rc.readOptReply(); r.typ != repErrInvalid {
		t.Fatalf("STARTTLS with data: %#x", r.typ)
	}
	if err := rc.starttls(p.client(t, "tenant")); err != nil {
		t.Fatal(err)
	}
	rc.sendOpt(optStartTLS, nil)
	if r := rc.readOptReply(); r.typ != repErrInvalid {
		t.Fatalf("second STARTTLS: %#x", r.typ)
	}
	if names := listNames(rc); len(names) != 1 || names[0] != "tenant/vol" {
		t.Fatalf("LIST over TLS for tenant: %q", names)
	}
	rc.sendOpt(optInfo, infoData("other/vol"))
	if r := rc.readOptReply(); r.typ != repErrUnknown {
		t.Fatalf("INFO of another tenant's export: %#x", r.typ)
	}
	if size := rc.goTo("tenant/vol"); size != 1<<20 {
		t.Fatalf("GO: size %d", size)
	}
	payload := bytes.Repeat([]byte{0x5a}, 8192)
	if r := rc.do(0, cmdWrite, 4096, uint32(len(payload)), payload); r.errno != 0 {
		t.Fatalf("write over TLS: errno %d", r.errno)
	}
	if r := rc.do(0, cmdRead, 4096, uint32(len(payload)), nil); r.errno != 0 || !bytes.Equal(r.data, payload) {
		t.Fatalf("read over TLS: errno %d, %d bytes", r.errno, len(r.data))
	}

	// EXPORT_NAME before STARTTLS: the connection ends.
	rc2 := dial(t, sock)
	rc2.hello(clientFlagFixedNewstyle | clientFlagNoZeroes)
	rc2.sendOpt(optExportName, []byte("tenant/vol"))
	rc2.expectClosed()

	// No client certificate: the handshake fails.
	rc3 := dial(t, sock)
	rc3.hello(clientFlagFixedNewstyle | clientFlagNoZeroes)
	if err := rc3.starttls(p.client(t, "")); err == nil {
		// TLS 1.3 reports the server's refusal on the first read.
		hdr := binary.BigEndian.AppendUint64(nil, magicIHaveOpt)
		hdr = binary.BigEndian.AppendUint32(hdr, optList)
		hdr = binary.BigEndian.AppendUint32(hdr, 0)
		rc3.c.Write(hdr) // may fail already: the server has closed
		if _, err := io.ReadAll(rc3.r); err == nil {
			t.Fatal("a client without a certificate got through")
		}
	}
}

// TestTLSUnsupportedWithoutConfig: a plain listener answers STARTTLS as
// unsupported.
func TestTLSUnsupportedWithoutConfig(t *testing.T) {
	_, sock := startServer(t, memExports{testName: newMemExport(4096)}, Options{})
	rc := dial(t, sock)
	rc.hello(clientFlagFixedNewstyle | clientFlagNoZeroes)
	rc.sendOpt(optStartTLS, nil)
	if r := rc.readOptReply(); r.typ != repErrUnsup {
		t.Fatalf("STARTTLS on a plain listener: %#x", r.typ)
	}
}

// FuzzTLSOptions: random option streams against a listener that requires
// TLS, whose handshake always fails here: no stream reaches an export.
func FuzzTLSOptions(f *testing.F) {
	opt := func(o uint32, d []byte) []byte {
		b := binary.BigEndian.AppendUint64(nil, magicIHaveOpt)
		b = binary.BigEndian.AppendUint32(b, o)
		b = binary.BigEndian.AppendUint32(b, uint32(len(d)))
		return append(b, d...)
	}
	f.Add(opt(optGo, infoData(testName)))
	f.Add(append(opt(optStartTLS, nil), opt(optGo, infoData(testName))...))
	f.Add(append(opt(optStartTLS, []byte{1}), opt(optExportName, []byte(testName))...))
	f.Add(append(opt(optList, nil), opt(optAbort, nil)...))
	exports := memExports{testName: newMemExport(1 << 20)}
	log := testLogger(f)
	cfg := &tls.Config{}
	f.Fuzz(func(t *testing.T, data []byte) {
		in := binary.BigEndian.AppendUint32(nil, clientFlagFixedNewstyle|clientFlagNoZeroes)
		n := &negotiator{
			r: bytes.NewReader(append(in, data...)), w: io.Discard, exports: exports,
			maxPayload: DefaultMaxPayload, log: log, tlsConfig: cfg,
			upgrade: func(*tls.Config) (io.Reader, io.Writer, tls.ConnectionState, error) {
				return nil, nil, tls.ConnectionState{}, errors.New("no TLS in the fuzzer")
			},
		}
		if sess, _ := n.negotiate(); sess != nil {
			t.Fatalf("a session without TLS: %q", sess.name)
		}
	})
}

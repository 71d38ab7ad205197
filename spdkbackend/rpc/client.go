// Package rpc is Sluice's client for SPDK's JSON-RPC 2.0 socket: the
// control plane of an SPDK target (spdk_tgt or vhost), through which the
// SPDK device creates and finds bdevs, exposes one as a vhost-user-blk
// controller and reads SPDK's IO statistics. No Go module for SPDK's RPC is
// served here, so this is our own, checked against the target itself and
// against SPDK's python client (scripts/rpc.py, python/spdk/rpc/) for the
// exact requests it sends.
//
// It lives in spdkbackend/rpc because the SPDK device (spdkbackend, the
// layout in DESIGN.md) is what it serves: "JSON-RPC provisioning + virtio
// data path". Nothing in it depends on the device, so `sluice stats` and a
// launcher of spdk_tgt can use it too.
//
// # The wire
//
// A client holds one stream connection to the target's unix socket and runs
// one call at a time on it (calls from several goroutines queue on a
// mutex). A request is a JSON object {"jsonrpc":"2.0","method":M,"id":N,
// "params":P}; like rpc.py, "params" is left out when there are none or
// they are an empty object, and the id counts up from 1 per client. SPDK
// parses the stream as a sequence of JSON values, so no delimiter is needed
// (rpc.py sends none; we end each request with a newline, which SPDK skips
// as whitespace), and it answers each request with one JSON object carrying
// the same id and either "result" or "error" {"code","message"}. The client
// decodes exactly one value per request, as rpc.py's raw_decode does, and
// checks the id.
//
// # Time
//
// Every call is bounded by its context and by Options.Timeout (default
// 30 s), whichever ends first; a call never waits forever on a target that
// stopped answering. When a call fails on the transport (the target went
// away, the deadline passed mid-call, an answer that is not JSON or carries
// another id), the connection is closed, since an answer may still be on
// its way; the next call dials again. So a call that timed out may still
// have been carried out by the target: callers that must know look (e.g.
// BdevGetBdevs after a BdevMallocCreate that timed out).
//
// # Errors
//
// SPDK's error answers come back as *Error, with SPDK's code and message
// (and the method, for the log). SPDK's codes are not uniform: most bdev
// methods answer a negative errno with its strerror text (bdev_get_bdevs on
// an unknown name: -19, "No such device"), while the vhost methods answer
// -32602 (invalid params) with the same strerror text, and a method called
// in the wrong phase of start-up answers -1 with a sentence. The sentinels
// ErrNoSuchDevice, ErrExists, ErrNotInitialized and ErrAlreadyInitialized
// match with errors.Is across those forms; errors.As gives the code and
// message. Transport failures wrap the underlying error (the context's
// error when it ended the call) with %w.
package rpc

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"
)

// Options configure Dial. The zero value is usable.
type Options struct {
	// Timeout bounds each call, on top of its context (default 30 s;
	// SPDK's own client waits 60 s).
	Timeout time.Duration
	Logger  *slog.Logger
}

const defaultTimeout = 30 * time.Second

// Client is a connection to an SPDK target's RPC socket. It is safe for
// concurrent use; calls run one at a time.
type Client struct {
	path string
	opt  Options
	log  *slog.Logger

	mu     sync.Mutex // one call at a time; guards the fields below
	conn   net.Conn   // nil after a transport failure: the next call dials
	dec    *json.Decoder
	nextID uint64
	closed bool
}

// ErrClosed is returned by calls on a closed Client.
var ErrClosed = errors.New("spdk rpc: client closed")

// Dial connects to the SPDK RPC socket at path (spdk_tgt's -r; default
// /var/tmp/spdk.sock), so a wrong path or a target that is not running
// fails here rather than at the first call.
func Dial(ctx context.Context, path string, opts Options) (*Client, error) {
	if opts.Timeout <= 0 {
		opts.Timeout = defaultTimeout
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	c := &Client{path: path, opt: opts, log: opts.Logger.With("spdk_rpc", path)}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	if err := c.connect(ctx); err != nil {
		return nil, err
	}
	return c, nil
}

// Path is the socket the client talks to.
func (c *Client) Path() string { return c.path }

// Close closes the connection; calls after it return ErrClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return c.drop()
}

// connect dials the socket. c.mu is held (or c is not yet shared).
func (c *Client) connect(ctx context.Context) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.path)
	if err != nil {
		return fmt.Errorf("spdk rpc: dial %s (is the SPDK target running?): %w", c.path, err)
	}
	c.conn = conn
	c.dec = json.NewDecoder(conn)
	return nil
}

// drop closes the connection after a transport failure or on Close.
func (c *Client) drop() error {
	if c.conn == nil {
		return nil
	}
	err := c.conn.Close()
	c.conn, c.dec = nil, nil
	return err
}

// request is what goes on the wire, in rpc.py's key order.
type request struct {
	JSONRPC string          `json:"jsonrpc"`
	Method  string          `json:"method"`
	ID      uint64          `json:"id"`
	Params  json.RawMessage `json:"params,omitempty"`
}

// response is one answer. ID is a pointer because SPDK answers null when it
// could not parse the request.
type response struct {
	ID     *uint64         `json:"id"`
	Result json.RawMessage `json:"result"`
	Error  *Error          `json:"error"`
}

// Call sends method with params (nil for none; any value encoding/json
// encodes to an object) and decodes the result into result (nil to discard
// it). An error answer from SPDK is an *Error.
func (c *Client) Call(ctx context.Context, method string, params, result any) error {
	body, err := encodeParams(params)
	if err != nil {
		return fmt.Errorf("spdk rpc %s: encode params: %w", method, err)
	}
	ctx, cancel := context.WithTimeout(ctx, c.opt.Timeout)
	defer cancel()

	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return ErrClosed
	}
	if c.conn == nil {
		if err := c.connect(ctx); err != nil {
			return fmt.Errorf("spdk rpc %s: %w", method, err)
		}
	}
	c.nextID++
	req := request{JSONRPC: "2.0", Method: method, ID: c.nextID, Params: body}
	start := time.Now()
	resp, err := c.roundTrip(ctx, &req)
	if err != nil {
		c.drop()
		c.log.Debug("spdk rpc failed", "method", method, "id", req.ID, "err", err)
		if errors.Is(err, os.ErrDeadlineExceeded) || ctx.Err() != nil {
			// The connection's deadline is only ever the context's, and
			// it can pass a moment before the context's own timer fires.
			return fmt.Errorf("spdk rpc %s: no answer in time (%v): %w", method, err, cmp.Or(ctx.Err(), context.DeadlineExceeded))
		}
		return fmt.Errorf("spdk rpc %s: %w", method, err)
	}
	c.log.Debug("spdk rpc", "method", method, "id", req.ID, "took", time.Since(start), "error", resp.Error != nil)
	if resp.Error != nil {
		resp.Error.Method = method
		return resp.Error
	}
	if result == nil {
		return nil
	}
	if err := json.Unmarshal(resp.Result, result); err != nil {
		return fmt.Errorf("spdk rpc %s: decode result %.200s: %w", method, resp.Result, err)
	}
	return nil
}

// roundTrip writes req and reads its answer, bounded by ctx: the deadline
// goes on the connection, and ctx ending early moves it to the past.
func (c *Client) roundTrip(ctx context.Context, req *request) (*response, error) {
	if dl, ok := ctx.Deadline(); ok {
		c.conn.SetDeadline(dl)
	}
	fired := make(chan struct{})
	conn := c.conn
	stop := context.AfterFunc(ctx, func() {
		conn.SetDeadline(time.Unix(1, 0))
		close(fired)
	})
	defer func() {
		if !stop() {
			<-fired // so its SetDeadline cannot land on the next call
		}
	}()

	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("send: %w", err)
	}
	var resp response
	if err := c.dec.Decode(&resp); err != nil {
		return nil, fmt.Errorf("read answer to request %d: %w", req.ID, err)
	}
	if resp.ID == nil || *resp.ID != req.ID {
		id := "null"
		if resp.ID != nil {
			id = fmt.Sprint(*resp.ID)
		}
		if resp.Error != nil {
			return nil, fmt.Errorf("answer to request %d has id %s: %w", req.ID, id, resp.Error)
		}
		return nil, fmt.Errorf("answer to request %d has id %s", req.ID, id)
	}
	if resp.Error == nil && resp.Result == nil {
		return nil, fmt.Errorf("answer to request %d has neither result nor error", req.ID)
	}
	return &resp, nil
}

// encodeParams encodes params as rpc.py would send them: nothing when there
// are none or they encode to an empty object.
func encodeParams(params any) (json.RawMessage, error) {
	if params == nil {
		return nil, nil
	}
	b, err := json.Marshal(params)
	if err != nil {
		return nil, err
	}
	if bytes.Equal(b, []byte("{}")) || bytes.Equal(b, []byte("null")) {
		return nil, nil
	}
	if len(b) == 0 || b[0] != '{' {
		return nil, fmt.Errorf("params must encode to a JSON object, not %.40s", b)
	}
	return b, nil
}

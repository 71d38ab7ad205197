package admin

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"syscall"

	"github.com/sluice-storage/sluice/gateway"
)

// Client talks to a gateway's admin API over its unix socket.
type Client struct {
	socket string
	http   *http.Client
}

// NewClient returns a client for the API socket at path.
func NewClient(socket string) *Client {
	return &Client{socket: socket, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}}
}

// APIError is an error the gateway answered with.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string { return e.Message }

func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://sluice"+path, body)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return fmt.Errorf("no gateway at %s (start one with `sluice gateway`, or set --api-socket / SLUICE_API_SOCKET)", c.socket)
		}
		return fmt.Errorf("gateway at %s: %w", c.socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var e Error
		if json.NewDecoder(resp.Body).Decode(&e) != nil || e.Error == "" {
			e.Error = resp.Status
		}
		return &APIError{Status: resp.StatusCode, Message: e.Error}
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// Health checks that the gateway answers.
func (c *Client) Health(ctx context.Context) error {
	return c.do(ctx, http.MethodGet, "/v1/health", nil, nil)
}

// Volumes lists volumes.
func (c *Client) Volumes(ctx context.Context) ([]Volume, error) {
	var out []Volume
	return out, c.do(ctx, http.MethodGet, "/v1/volumes", nil, &out)
}

// Volume returns one volume by "tenant/name".
func (c *Client) Volume(ctx context.Context, ref string) (Volume, error) {
	var out Volume
	return out, c.do(ctx, http.MethodGet, "/v1/volumes/"+ref, nil, &out)
}

// CreateVolume creates a volume.
func (c *Client) CreateVolume(ctx context.Context, req CreateRequest) (Volume, error) {
	var out Volume
	return out, c.do(ctx, http.MethodPost, "/v1/volumes", req, &out)
}

// ResizeVolume grows a volume.
func (c *Client) ResizeVolume(ctx context.Context, ref string, size int64) (Volume, error) {
	var out Volume
	return out, c.do(ctx, http.MethodPatch, "/v1/volumes/"+ref, ResizeRequest{Size: size}, &out)
}

// DeleteVolume deletes a volume.
func (c *Client) DeleteVolume(ctx context.Context, ref string) error {
	return c.do(ctx, http.MethodDelete, "/v1/volumes/"+ref, nil, nil)
}

// Stats returns pool and volume counters.
func (c *Client) Stats(ctx context.Context) (Stats, error) {
	var out Stats
	return out, c.do(ctx, http.MethodGet, "/v1/stats", nil, &out)
}

// QoSRules lists QoS rules with their queue counters.
func (c *Client) QoSRules(ctx context.Context) ([]gateway.QoSRuleStats, error) {
	var out []gateway.QoSRuleStats
	return out, c.do(ctx, http.MethodGet, "/v1/qos", nil, &out)
}

// SetQoSRule creates a rule or replaces the limits of the one with the same match.
func (c *Client) SetQoSRule(ctx context.Context, r gateway.QoSRule) (gateway.QoSRule, error) {
	var out gateway.QoSRule
	return out, c.do(ctx, http.MethodPost, "/v1/qos", r, &out)
}

// DeleteQoSRule deletes a rule by id.
func (c *Client) DeleteQoSRule(ctx context.Context, id uint64) error {
	return c.do(ctx, http.MethodDelete, fmt.Sprintf("/v1/qos/%d", id), nil, nil)
}

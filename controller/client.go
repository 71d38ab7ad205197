package controller

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Client talks to a controller's HTTP API. It is safe for concurrent use.
type Client struct {
	base  string // scheme://host[:port], no trailing slash
	token string
	http  *http.Client
}

// NewClient returns a client for the controller at baseURL
// ("http://127.0.0.1:7470"); token, if set, is sent as a bearer token.
func NewClient(baseURL, token string) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("controller URL %q: %w: want http://HOST:PORT", baseURL, ErrInvalid)
	}
	return &Client{
		base:  strings.TrimSuffix(baseURL, "/"),
		token: token,
		http:  &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4, IdleConnTimeout: 90 * time.Second}},
	}, nil
}

// ReadTokenFile reads a bearer token from a file (surrounding white space
// is dropped); an empty token is an error.
func ReadTokenFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" || strings.ContainsAny(tok, " \t\r\n") {
		return "", fmt.Errorf("token file %s: %w: want one token without white space", path, ErrInvalid)
	}
	return tok, nil
}

// URL returns the controller's base URL.
func (c *Client) URL() string { return c.base }

// APIError is an error the controller answered with.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string { return e.Message }

// Is lets errors.Is match an APIError against the package's sentinels by
// status: 400 ErrInvalid, 401 ErrUnauthorized, 404 ErrNotFound, 503
// ErrClosed.
func (e *APIError) Is(target error) bool {
	switch target {
	case ErrInvalid:
		return e.Status == http.StatusBadRequest
	case ErrUnauthorized:
		return e.Status == http.StatusUnauthorized
	case ErrNotFound:
		return e.Status == http.StatusNotFound
	case ErrClosed:
		return e.Status == http.StatusServiceUnavailable
	}
	return false
}

// do sends a request; it returns the status (for 2xx) or an error.
func (c *Client) do(ctx context.Context, method, path string, in, out any) (int, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, body)
	if err != nil {
		return 0, err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, fmt.Errorf("controller at %s: %w", c.base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var e apiError
		if json.NewDecoder(resp.Body).Decode(&e) != nil || e.Error == "" {
			e.Error = resp.Status
		}
		return resp.StatusCode, &APIError{Status: resp.StatusCode, Message: e.Error}
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return resp.StatusCode, nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return resp.StatusCode, fmt.Errorf("controller at %s: reply to %s %s: %w", c.base, method, path, err)
	}
	return resp.StatusCode, nil
}

// Health checks that the controller answers.
func (c *Client) Health(ctx context.Context) error {
	_, err := c.do(ctx, http.MethodGet, "/v1/health", nil, nil)
	return err
}

// Register adds (or updates) a gateway in the registry.
func (c *Client) Register(ctx context.Context, g GatewayRegistration) (GatewayRegistration, error) {
	var out GatewayRegistration
	_, err := c.do(ctx, http.MethodPost, "/v1/gateways", g, &out)
	return out, err
}

// Deregister removes a gateway.
func (c *Client) Deregister(ctx context.Context, id string) error {
	_, err := c.do(ctx, http.MethodDelete, "/v1/gateways/"+url.PathEscape(id), nil, nil)
	return err
}

// Report sends a gateway's heartbeat. An error matching ErrNotFound means
// the controller does not know the gateway: register again.
func (c *Client) Report(ctx context.Context, r Report) (ReportReply, error) {
	var out ReportReply
	_, err := c.do(ctx, http.MethodPost, "/v1/gateways/"+url.PathEscape(r.Gateway)+"/report", r, &out)
	return out, err
}

// Assignments asks for the gateway's assignment set newer than epoch
// after, waiting up to wait (long poll; 0 answers at once). It reports
// false when there was none.
func (c *Client) Assignments(ctx context.Context, gateway string, after uint64, wait time.Duration) (AssignmentSet, bool, error) {
	var out AssignmentSet
	path := "/v1/gateways/" + url.PathEscape(gateway) + "/assignments?after=" + strconv.FormatUint(after, 10)
	if wait > 0 {
		path += "&wait=" + wait.String()
	}
	status, err := c.do(ctx, http.MethodGet, path, nil, &out)
	if err != nil || status == http.StatusNoContent {
		return AssignmentSet{}, false, err
	}
	return out, true, nil
}

// SLOs lists every SLO.
func (c *Client) SLOs(ctx context.Context) ([]SLO, error) {
	var out []SLO
	_, err := c.do(ctx, http.MethodGet, "/v1/slos", nil, &out)
	return out, err
}

// SLO returns one tenant's SLO.
func (c *Client) SLO(ctx context.Context, tenant string) (SLO, error) {
	var out SLO
	_, err := c.do(ctx, http.MethodGet, "/v1/slos/"+url.PathEscape(tenant), nil, &out)
	return out, err
}

// SetSLO creates or replaces a tenant's SLO.
func (c *Client) SetSLO(ctx context.Context, s SLO) (SLO, error) {
	var out SLO
	_, err := c.do(ctx, http.MethodPut, "/v1/slos/"+url.PathEscape(s.Tenant), s, &out)
	return out, err
}

// DeleteSLO removes a tenant's SLO.
func (c *Client) DeleteSLO(ctx context.Context, tenant string) error {
	_, err := c.do(ctx, http.MethodDelete, "/v1/slos/"+url.PathEscape(tenant), nil, nil)
	return err
}

// Status returns the controller's view of the cluster.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var out Status
	_, err := c.do(ctx, http.MethodGet, "/v1/status", nil, &out)
	return out, err
}

// TokenFileName is where a controller keeps the token it generated, in
// its data directory.
const TokenFileName = "token"

// DefaultTokenFile is the token file of a controller on the default data
// directory: where clients look when given no token file.
const DefaultTokenFile = "./sluice-controller/" + TokenFileName

// EnsureTokenFile returns the token in path, generating one (32 random
// bytes in hex, mode 0600) if the file does not exist. An existing file
// that group or others can read is refused: the token is the only thing
// between a local user and the cluster's SLOs.
func EnsureTokenFile(path string) (tok string, created bool, err error) {
	if fi, err := os.Stat(path); err == nil {
		if fi.Mode().Perm()&0o077 != 0 {
			return "", false, fmt.Errorf("token file %s has mode %04o: %w: chmod 600 it", path, fi.Mode().Perm(), ErrInvalid)
		}
		tok, err := ReadTokenFile(path)
		return tok, false, err
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", false, fmt.Errorf("token file: %w", err)
	}
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", false, err
	}
	tok = hex.EncodeToString(b[:])
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", false, fmt.Errorf("token file: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", false, fmt.Errorf("token file: %w", err)
	}
	if _, err := f.WriteString(tok + "\n"); err != nil {
		f.Close()
		return "", false, fmt.Errorf("token file: %w", err)
	}
	return tok, true, f.Close()
}

// ClientToken is the token a client sends: from path if given, else from
// DefaultTokenFile if it exists and is readable, else none (a controller
// then answers 401, and the error says where the token is).
func ClientToken(path string) (string, error) {
	if path != "" {
		return ReadTokenFile(path)
	}
	tok, err := ReadTokenFile(DefaultTokenFile)
	if err != nil {
		return "", nil
	}
	return tok, nil
}

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
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Client talks to a controller's HTTP API: one URL, or the replicas of a
// replicated controller (NewClient with "URL1,URL2,..."). It sends every
// call to the replica it believes leads and finds the leader again when
// that one fails: a refused or dropped connection, a timeout, or a
// follower's "not the leader" answer (whose leader URL it follows). It is
// safe for concurrent use.
type Client struct {
	urls  []string // scheme://host[:port], no trailing slash
	token string
	http  *http.Client

	mu      sync.Mutex
	cur     string        // the replica calls go to
	changed chan struct{} // closed and replaced when cur changes
}

// NewClient returns a client for the controller at baseURL
// ("http://127.0.0.1:7470"), or for the replicas at a comma-separated list
// of URLs; token, if set, is sent as a bearer token.
func NewClient(baseURL, token string) (*Client, error) {
	var urls []string
	for _, raw := range strings.Split(baseURL, ",") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			continue
		}
		u, err := normURL(raw)
		if err != nil {
			return nil, err
		}
		if !slices.Contains(urls, u) {
			urls = append(urls, u)
		}
	}
	if len(urls) == 0 {
		return nil, fmt.Errorf("controller URL %q: %w: want http://HOST:PORT[,http://HOST:PORT...]", baseURL, ErrInvalid)
	}
	return &Client{
		urls:    urls,
		token:   token,
		http:    &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4, IdleConnTimeout: 90 * time.Second}},
		cur:     urls[0],
		changed: make(chan struct{}),
	}, nil
}

// normURL checks one controller URL and drops a trailing slash.
func normURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("controller URL %q: %w: want http://HOST:PORT", raw, ErrInvalid)
	}
	return strings.TrimSuffix(raw, "/"), nil
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

// URL returns the replica calls go to now: the leader, as far as the
// client knows.
func (c *Client) URL() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur
}

// URLs returns the URLs the client was given.
func (c *Client) URLs() []string { return slices.Clone(c.urls) }

// setCurrent points calls at u (a URL a follower named, or the next one).
func (c *Client) setCurrent(u string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if u == c.cur {
		return
	}
	c.cur = u
	close(c.changed)
	c.changed = make(chan struct{})
}

// current returns the replica calls go to and a channel closed when that
// changes.
func (c *Client) current() (string, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur, c.changed
}

// next is the URL after failed in the list, skipping those tried in this
// call; "" when every one was tried.
func (c *Client) next(failed string, tried map[string]bool) string {
	i := slices.Index(c.urls, failed)
	for k := 1; k <= len(c.urls); k++ {
		u := c.urls[(i+k)%len(c.urls)]
		if !tried[u] {
			return u
		}
	}
	return ""
}

// APIError is an error the controller answered with. Leader is set when a
// follower refused the call: the leader's URL ("" while none is elected).
type APIError struct {
	Status    int
	Message   string
	NotLeader bool
	Leader    string
}

func (e *APIError) Error() string { return e.Message }

// Is lets errors.Is match an APIError against the package's sentinels by
// status: 400 ErrInvalid, 401 ErrUnauthorized, 404 ErrNotFound, 503
// ErrClosed (and ErrNotLeader when a follower refused).
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
	case ErrNotLeader:
		return e.NotLeader
	}
	return false
}

// errLeaderMoved ends an attempt whose replica another call found was no
// longer the leader.
var errLeaderMoved = errors.New("the controller's leader moved")

// do sends a request to the leader; it returns the status (for 2xx) or an
// error. A replica that does not answer, is closing (503), or answers that
// it does not lead,
// sends the call on to the leader it names, else to the next URL; each
// replica is tried at most once per call. A timeout (ctx's deadline) ends
// the call but points the next one at another replica.
func (c *Client) do(ctx context.Context, method, path string, in, out any) (int, error) {
	var body []byte
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, err
		}
		body = b
	}
	tried := map[string]bool{}
	var refused *APIError // a follower's "not the leader", kept for the final error
	for {
		base, changed := c.current()
		status, err := c.once(ctx, base, changed, method, path, body, out)
		if errors.Is(err, errLeaderMoved) && ctx.Err() == nil {
			continue // another call found the leader: ask it
		}
		tried[base] = true
		var ae *APIError
		switch {
		case err == nil:
			return status, nil
		case errors.As(err, &ae) && !ae.NotLeader && ae.Status != http.StatusServiceUnavailable:
			return status, err // an answer: the leader refused
		case ctx.Err() != nil:
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				c.moveOn(base, tried) // timed out: try another next time
			}
			return status, err
		}
		if ae != nil && ae.NotLeader {
			refused = ae
		}
		next := ""
		if ae != nil && ae.Leader != "" {
			if u, nerr := normURL(ae.Leader); nerr == nil && !tried[u] {
				next = u
			}
		}
		if next == "" {
			next = c.next(base, tried)
		}
		if next == "" {
			// Every replica failed: the caller retries later. A
			// follower's refusal says more than the leader's silence.
			c.moveOn(base, map[string]bool{base: true})
			if refused != nil && refused != ae {
				return http.StatusServiceUnavailable, fmt.Errorf("%w (the leader does not answer: %v)", refused, err)
			}
			return status, err
		}
		c.setCurrentFrom(base, next)
	}
}

// moveOn points the client at the URL after failed, unless another call
// already moved it.
func (c *Client) moveOn(failed string, tried map[string]bool) {
	if n := c.next(failed, tried); n != "" {
		c.setCurrentFrom(failed, n)
	}
}

// setCurrentFrom moves the client from old to u unless another call
// already moved it elsewhere.
func (c *Client) setCurrentFrom(old, u string) {
	c.mu.Lock()
	moved := c.cur != old
	c.mu.Unlock()
	if !moved {
		c.setCurrent(u)
	}
}

// once sends one request to base. It gives up with errLeaderMoved when
// changed closes (another call moved the client to another replica), so a
// long poll on a dead or deposed leader does not wait out its timeout.
func (c *Client) once(ctx context.Context, base string, changed <-chan struct{}, method, path string, body []byte, out any) (int, error) {
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-changed:
			cancel(errLeaderMoved)
		case <-stop:
		}
	}()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(actx, method, base+path, rd)
	if err != nil {
		return 0, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if errors.Is(context.Cause(actx), errLeaderMoved) {
			return 0, errLeaderMoved
		}
		return 0, fmt.Errorf("controller at %s: %w", base, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var e apiError
		if json.NewDecoder(resp.Body).Decode(&e) != nil || e.Error == "" {
			e.Error = resp.Status
		}
		return resp.StatusCode, &APIError{Status: resp.StatusCode, Message: e.Error, NotLeader: e.NotLeader, Leader: e.Leader}
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return resp.StatusCode, nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		if errors.Is(context.Cause(actx), errLeaderMoved) {
			return 0, errLeaderMoved
		}
		return resp.StatusCode, fmt.Errorf("controller at %s: reply to %s %s: %w", base, method, path, err)
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

// Status returns the controller's view of the cluster. When a follower
// answers and names another replica as the leader, the leader is asked
// too (the gateways' reports are at the leader alone); if the leader does
// not answer, the follower's view is returned.
func (c *Client) Status(ctx context.Context) (Status, error) {
	var out Status
	_, err := c.do(ctx, http.MethodGet, "/v1/status", nil, &out)
	if err != nil || out.Leader == "" || out.Leader == out.Replica || out.Replica == "" {
		return out, err
	}
	leader, err := normURL(out.Leader)
	if err != nil {
		return out, nil
	}
	var lead Status
	base := c.URL()
	if _, err := c.once(ctx, leader, nil, http.MethodGet, "/v1/status", nil, &lead); err != nil {
		return out, nil
	}
	c.setCurrentFrom(base, leader)
	return lead, nil
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

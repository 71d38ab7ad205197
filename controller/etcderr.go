package controller

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// lastCause keeps the cause of the last etcd call that could not reach
// etcd. The client waits for a connection until the call's deadline and
// then reports only "context deadline exceeded", not why: a CA that does
// not match etcd's certificate, a client certificate etcd refused, a
// refused connection. gRPC names that reason in the status it returns
// (its "latest balancer error"); an interceptor inside the client's retry
// loop sees that status before the client drops it, and records it for
// explain.
type lastCause struct {
	mu  sync.Mutex
	err error
}

// interceptor records the status of each attempt that failed unavailable
// or at its deadline with more to say than the deadline itself, and
// forgets it when a call succeeds.
func (l *lastCause) interceptor() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker,
		opts ...grpc.CallOption) error {
		err := invoker(ctx, method, req, reply, cc, opts...)
		st, _ := status.FromError(err)
		switch {
		case err == nil:
			l.set(nil) // reached: an older cause is no longer the one
		case (st.Code() == codes.Unavailable || st.Code() == codes.DeadlineExceeded) && st.Message() != context.DeadlineExceeded.Error():
			l.set(err)
		}
		return err
	}
}

func (l *lastCause) set(err error) {
	l.mu.Lock()
	l.err = err
	l.mu.Unlock()
}

// explain adds the last recorded cause to err when err is the
// deadline the retries ran into; other errors name their cause already.
func (l *lastCause) explain(err error) error {
	if !isDeadline(err) {
		return err
	}
	l.mu.Lock()
	last := l.err
	l.mu.Unlock()
	if last == nil {
		return err
	}
	return fmt.Errorf("%w; the last attempt: %s", err, status.Convert(last).Message())
}

func isDeadline(err error) bool {
	return err != nil && (errors.Is(err, context.DeadlineExceeded) || status.Code(err) == codes.DeadlineExceeded)
}

// startFailure is the error a store that could not start returns: err,
// and when err is a bare deadline, why etcd could not be reached. A TLS
// refusal is looked for first (probeTLS): the gRPC attempt may not have
// seen it.
func startFailure(ctx context.Context, err error, endpoints []string, tc *tls.Config, last *lastCause) error {
	if !isDeadline(err) {
		return err
	}
	if perr := probeTLS(context.WithoutCancel(ctx), endpoints, tc); perr != nil {
		return fmt.Errorf("%w: %w", err, perr)
	}
	return last.explain(err)
}

// probeTLS shakes hands with each https endpoint as the etcd client does
// (tc, or the system's roots when nil) and then only reads. etcd (TLS 1.3)
// refuses a client certificate, or its absence, after the handshake with
// an alert, and closes; a client that writes first, as gRPC does, may get
// a connection reset instead of the alert. Reading first gets the alert;
// an accepted client gets nothing until it speaks (the read times out).
// It returns the first refusal; nil when every endpoint that answers
// accepts this client's TLS (one that does not answer is not a TLS
// matter: the gRPC attempt names it).
func probeTLS(ctx context.Context, endpoints []string, tc *tls.Config) error {
	for _, ep := range endpoints {
		if err := probeTLSOne(ctx, ep, tc); err != nil {
			return err
		}
	}
	return nil
}

func probeTLSOne(ctx context.Context, ep string, tc *tls.Config) error {
	u, err := url.Parse(ep)
	if err != nil || u.Scheme != "https" {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return nil
	}
	defer raw.Close()
	cfg := &tls.Config{}
	if tc != nil {
		cfg = tc.Clone()
	}
	if cfg.ServerName == "" {
		cfg.ServerName = u.Hostname()
	}
	conn := tls.Client(raw, cfg)
	if err := conn.HandshakeContext(ctx); err != nil {
		return fmt.Errorf("TLS with %s: %w", ep, err)
	}
	conn.SetReadDeadline(time.Now().Add(time.Second))
	_, err = conn.Read(make([]byte, 1))
	var ne net.Error
	if err == nil || errors.As(err, &ne) && ne.Timeout() {
		return nil
	}
	return fmt.Errorf("TLS with %s: etcd closed the connection after the handshake: %w", ep, err)
}

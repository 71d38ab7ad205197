package controller

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// Desired state in etcd, under one prefix (default DefaultEtcdPrefix):
//
//	<prefix>schema            "1": the layout below; another value is refused
//	<prefix>slo/<tenant>      JSON SLO
//	<prefix>gw/<id>           JSON GatewayRegistration
//	<prefix>meta/generation   decimal: the generation of the newest term
//	<prefix>election/<lease>  the replicas' campaign keys (client v3
//	                          concurrency.Election); the value is the URL
//	                          of the replica
//
// Every write is a transaction fenced on the writer's leadership: it
// applies only if the writer's election key still exists with the create
// revision it had when the writer won. A deposed leader (its lease expired
// while it was paused, say) cannot overwrite its successor.
const (
	// DefaultEtcdPrefix is where the controller keeps its keys.
	DefaultEtcdPrefix = "/sluice/controller/"
	// EtcdSchema is the layout this controller reads and writes.
	EtcdSchema = "1"
	// DefaultEtcdSessionTTL is the election lease: a killed leader's
	// successor is elected within about this long.
	DefaultEtcdSessionTTL = 2 * time.Second

	keySchema   = "schema"
	keyElection = "election/"
)

// EtcdOptions configures an etcd store.
type EtcdOptions struct {
	Endpoints []string
	// Prefix (default DefaultEtcdPrefix) holds every key.
	Prefix string
	// CACert, Cert and Key are PEM files (as etcdctl's --cacert, --cert,
	// --key); CACert alone gives server-verified TLS.
	CACert, Cert, Key string
	// Username and Password for etcd's authentication.
	Username, Password string
	// Name is this replica's URL: the value of its election key, shown to
	// clients that reach a follower.
	Name string
	// SessionTTL is the election lease (default DefaultEtcdSessionTTL;
	// etcd rounds it up to whole seconds and its minimum).
	SessionTTL time.Duration
	// DialTimeout (default 5 s) bounds the connection and authentication;
	// the first transaction (the schema check) may take twice as long.
	DialTimeout time.Duration
	Logger      *slog.Logger
}

// fence is one won term: the election key and its create revision.
type fence struct {
	key string
	rev int64
}

// etcdStore is the Store in etcd, with leader election.
type etcdStore struct {
	cli    *clientv3.Client
	prefix string
	name   string
	ttl    int
	log    *slog.Logger
	cause  *lastCause // explains the client's bare deadline errors
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	lead    *fence
	session *concurrency.Session
}

var _ Store = (*etcdStore)(nil)

// OpenEtcdStore connects to etcd, checks (or writes) the schema version
// and starts campaigning for leadership in the background.
func OpenEtcdStore(ctx context.Context, o EtcdOptions) (Store, error) {
	s, err := openEtcdStore(ctx, o)
	if err != nil {
		return nil, err
	}
	return s, nil
}

func openEtcdStore(ctx context.Context, o EtcdOptions) (*etcdStore, error) {
	if len(o.Endpoints) == 0 {
		return nil, fmt.Errorf("etcd: no endpoints: %w", ErrInvalid)
	}
	if o.Prefix == "" {
		o.Prefix = DefaultEtcdPrefix
	}
	if !strings.HasSuffix(o.Prefix, "/") {
		o.Prefix += "/"
	}
	if o.SessionTTL <= 0 {
		o.SessionTTL = DefaultEtcdSessionTTL
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 5 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	last := &lastCause{}
	cfg := clientv3.Config{Endpoints: o.Endpoints, DialTimeout: o.DialTimeout, Username: o.Username, Password: o.Password,
		Logger: zap.NewNop(), Context: context.WithoutCancel(ctx),
		DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(last.interceptor())}}
	if o.CACert != "" || o.Cert != "" || o.Key != "" {
		tc, err := etcdTLS(o)
		if err != nil {
			return nil, err
		}
		cfg.TLS = tc
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, fmt.Errorf("etcd at %s: %w", strings.Join(o.Endpoints, ","), startFailure(ctx, err, o.Endpoints, cfg.TLS, last))
	}
	s := &etcdStore{cli: cli, prefix: o.Prefix, name: o.Name, ttl: max(int((o.SessionTTL+time.Second-1)/time.Second), 1),
		log: o.Logger, cause: last, done: make(chan struct{})}
	if err := s.checkSchema(ctx, 2*o.DialTimeout); err != nil {
		cli.Close()
		return nil, startFailure(ctx, err, o.Endpoints, cfg.TLS, last)
	}
	cctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel
	go s.campaign(cctx)
	return s, nil
}

func etcdTLS(o EtcdOptions) (*tls.Config, error) {
	if (o.Cert == "") != (o.Key == "") {
		return nil, fmt.Errorf("etcd TLS: a client certificate needs both --etcd-cert and --etcd-key: %w", ErrInvalid)
	}
	info := transport.TLSInfo{CertFile: o.Cert, KeyFile: o.Key, TrustedCAFile: o.CACert}
	tc, err := info.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("etcd TLS: %w", err)
	}
	return tc, nil
}

// checkSchema writes the schema key into an empty prefix and refuses a
// prefix written in another layout, within timeout (twice the dial
// timeout: the first call to etcd when there is no user to authenticate).
func (s *etcdStore) checkSchema(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	key := s.prefix + keySchema
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, EtcdSchema)).
		Else(clientv3.OpGet(key)).Commit()
	if errors.Is(err, rpctypes.ErrPermissionDenied) {
		return fmt.Errorf("etcd: checking the schema version at %s: %w: the controller's etcd user needs readwrite on every key under %s "+
			"(etcdctl role grant-permission --prefix=true ROLE readwrite %s)", key, err, s.prefix, s.prefix)
	}
	if err != nil {
		return fmt.Errorf("etcd: checking the schema version at %s: %w", key, err)
	}
	if resp.Succeeded {
		s.log.Info("etcd: new controller state", "prefix", s.prefix, "schema", EtcdSchema)
		return nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) != 1 || string(kvs[0].Value) != EtcdSchema {
		got := ""
		if len(kvs) == 1 {
			got = string(kvs[0].Value)
		}
		return fmt.Errorf("etcd: %s holds controller schema version %q, this sluice reads only version %q: use another --etcd-prefix or a matching sluice: %w",
			key, got, EtcdSchema, ErrInvalid)
	}
	return nil
}

// campaign keeps a session and campaigns until ctx ends: whenever this
// replica wins it leads until its session ends (lease lost, or Close).
func (s *etcdStore) campaign(ctx context.Context) {
	defer close(s.done)
	for ctx.Err() == nil {
		sess, err := concurrency.NewSession(s.cli, concurrency.WithTTL(s.ttl), concurrency.WithContext(ctx))
		if err != nil {
			s.log.Warn("etcd: no session; retrying", "err", s.cause.explain(err))
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
			continue
		}
		s.mu.Lock()
		s.session = sess
		s.mu.Unlock()
		e := concurrency.NewElection(sess, s.prefix+keyElection)
		if err := e.Campaign(ctx, s.name); err != nil {
			if ctx.Err() == nil {
				s.log.Warn("etcd: campaign failed; retrying", "err", s.cause.explain(err))
			}
			s.endSession(sess)
			continue
		}
		s.mu.Lock()
		s.lead = &fence{key: e.Key(), rev: e.Rev()}
		s.mu.Unlock()
		s.log.Info("etcd: this replica leads", "name", s.name, "key", e.Key(), "rev", e.Rev())
		select {
		case <-ctx.Done():
		case <-sess.Done():
		}
		s.mu.Lock()
		s.lead = nil
		s.mu.Unlock()
		if ctx.Err() == nil {
			s.log.Warn("etcd: session lost: this replica no longer leads", "name", s.name)
		}
		s.endSession(sess)
	}
}

// endSession revokes the session's lease at once, so that a successor need
// not wait for it to expire. (Session.Close revokes under the session's
// context, which is already cancelled when the store closes.)
func (s *etcdStore) endSession(sess *concurrency.Session) {
	sess.Orphan()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := s.cli.Revoke(ctx, sess.Lease()); err != nil {
		s.log.Debug("etcd: revoking the session's lease", "err", err)
	}
}

// Term is the create revision of this replica's election key while it
// leads: each won election has its own.
func (s *etcdStore) Term() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.lead == nil {
		return 0
	}
	return uint64(s.lead.rev)
}

// Leader is the leading replica's URL, read from etcd.
func (s *etcdStore) Leader(ctx context.Context) string {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.prefix+keyElection, clientv3.WithFirstCreate()...)
	if err != nil || len(resp.Kvs) == 0 {
		return ""
	}
	return string(resp.Kvs[0].Value)
}

func (s *etcdStore) fence(ctx context.Context) (fence, error) {
	s.mu.Lock()
	f := s.lead
	s.mu.Unlock()
	if f == nil {
		return fence{}, &NotLeaderError{Leader: s.Leader(ctx)}
	}
	return *f, nil
}

// callTimeout bounds each etcd call the store makes for a request or a
// round. Without a quorum etcd takes no write and answers no
// linearizable read, and its client retries until the call's context
// ends: unbounded, a follower's reload would hold the server's write lock
// (and every API write behind it) for as long as etcd is down.
const callTimeout = 5 * time.Second

// bounded is ctx limited to callTimeout.
func bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, callTimeout)
}

// etcdErr wraps an etcd call's error; a call that ran out of its bound
// (and not because ctx, the caller's, ended) is ErrUnavailable, with
// the last cause the client saw.
func (s *etcdStore) etcdErr(ctx context.Context, err error) error {
	if isDeadline(err) && ctx.Err() == nil {
		return fmt.Errorf("etcd: no answer within %v (are fewer than a quorum of its members up?): %w: %w", callTimeout, ErrUnavailable, s.cause.explain(err))
	}
	return fmt.Errorf("etcd: %w", err)
}

// commit runs ops if f still holds (and the schema is still ours).
func (s *etcdStore) commit(ctx context.Context, f fence, cmps []clientv3.Cmp, ops ...clientv3.Op) error {
	cmps = append(cmps,
		clientv3.Compare(clientv3.CreateRevision(f.key), "=", f.rev),
		clientv3.Compare(clientv3.Value(s.prefix+keySchema), "=", EtcdSchema))
	bctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.Txn(bctx).If(cmps...).Then(ops...).Commit()
	if err != nil {
		return s.etcdErr(ctx, err)
	}
	if !resp.Succeeded {
		return &NotLeaderError{Leader: s.Leader(ctx)}
	}
	return nil
}

func (s *etcdStore) Put(ctx context.Context, key string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	f, err := s.fence(ctx)
	if err != nil {
		return err
	}
	if err := s.commit(ctx, f, nil, clientv3.OpPut(s.prefix+key, string(b))); err != nil {
		return fmt.Errorf("storing %s: %w", key, err)
	}
	return nil
}

func (s *etcdStore) Delete(ctx context.Context, key string) error {
	f, err := s.fence(ctx)
	if err != nil {
		return err
	}
	if err := s.commit(ctx, f, nil, clientv3.OpDelete(s.prefix+key)); err != nil {
		return fmt.Errorf("deleting %s: %w", key, err)
	}
	return nil
}

// NextGeneration is fenced like every write, and also on the generation
// key not having changed since it was read.
func (s *etcdStore) NextGeneration(ctx context.Context, now time.Time) (uint64, error) {
	f, err := s.fence(ctx)
	if err != nil {
		return 0, err
	}
	key := s.prefix + keyGeneration
	bctx, cancel := bounded(ctx)
	resp, err := s.cli.Get(bctx, key)
	cancel()
	if err != nil {
		return 0, fmt.Errorf("controller generation: %w", s.etcdErr(ctx, err))
	}
	var prev uint64
	modRev := int64(0)
	if len(resp.Kvs) == 1 {
		if prev, err = strconv.ParseUint(string(resp.Kvs[0].Value), 10, 64); err != nil {
			return 0, fmt.Errorf("controller generation %q: %w", resp.Kvs[0].Value, err)
		}
		modRev = resp.Kvs[0].ModRevision
	}
	gen := nextGen(prev, now)
	cmp := clientv3.Compare(clientv3.ModRevision(key), "=", modRev)
	if err := s.commit(ctx, f, []clientv3.Cmp{cmp}, clientv3.OpPut(key, strconv.FormatUint(gen, 10))); err != nil {
		return 0, fmt.Errorf("controller generation: %w", err)
	}
	return gen, nil
}

// Load reads the whole prefix at one revision.
func (s *etcdStore) Load(ctx context.Context) (map[string]SLO, map[string]GatewayRegistration, error) {
	bctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.Get(bctx, s.prefix, clientv3.WithPrefix())
	if err != nil {
		return nil, nil, fmt.Errorf("loading controller state: %w", s.etcdErr(ctx, err))
	}
	slos := map[string]SLO{}
	gws := map[string]GatewayRegistration{}
	for _, kv := range resp.Kvs {
		if err := decodeRecord(strings.TrimPrefix(string(kv.Key), s.prefix), kv.Value, slos, gws); err != nil {
			return nil, nil, fmt.Errorf("loading controller state: %w", err)
		}
	}
	return slos, gws, nil
}

// Close resigns (revoking the lease, so another replica takes over at
// once) and disconnects.
func (s *etcdStore) Close() error {
	s.cancel()
	<-s.done
	err := s.cli.Close()
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

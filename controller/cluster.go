package controller

import (
	"context"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ReplicaStatus is one controller replica.
type ReplicaStatus struct {
	URL    string `json:"url"`
	Leader bool   `json:"leader"`
	// Term is the create revision of its election key: the term it leads
	// in when it is the leader (0 on a single controller).
	Term uint64 `json:"term"`
}

// EtcdStatus is etcd as the answering replica sees it.
type EtcdStatus struct {
	Prefix string `json:"prefix"`
	// Healthy: every endpoint answered its status call.
	Healthy   bool                 `json:"healthy"`
	Endpoints []EtcdEndpointStatus `json:"endpoints"`
}

// EtcdEndpointStatus is one etcd endpoint's answer to a status call.
type EtcdEndpointStatus struct {
	Endpoint string `json:"endpoint"`
	Healthy  bool   `json:"healthy"`
	Version  string `json:"version,omitempty"`
	// RaftLeader: this member is etcd's raft leader.
	RaftLeader bool   `json:"raft_leader"`
	RaftTerm   uint64 `json:"raft_term,omitempty"`
	DBSize     int64  `json:"db_size_bytes,omitempty"`
	Error      string `json:"error,omitempty"`
}

// replicated is a store with replicas elected in it (etcd): assignment
// sets carry its term, and the status lists its replicas and health.
type replicated interface {
	Replicas(ctx context.Context) ([]ReplicaStatus, error)
	Health(ctx context.Context) EtcdStatus
}

// setTerm is the term assignment sets carry (under mu): the leader's term
// on a replicated store, 0 otherwise.
func (s *Server) setTerm() uint64 {
	if _, ok := s.store.(replicated); ok {
		return s.term
	}
	return 0
}

// ClusterStatus is Status with the leader, the replicas and etcd's
// health: GET /v1/status.
//
// etcd is asked first (up to 3 s: a dead endpoint answers nothing), and
// the gateways' report ages are taken after, so they are not that much
// staler than the answer.
func (s *Server) ClusterStatus(ctx context.Context) Status {
	rs, ok := s.store.(replicated)
	if !ok {
		st := s.Status()
		st.Replica = s.opts.Advertise
		st.Leader = s.opts.Advertise
		st.Replicas = []ReplicaStatus{{URL: s.opts.Advertise, Leader: true}}
		return st
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var h EtcdStatus
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		h = rs.Health(ctx)
	}()
	reps, err := rs.Replicas(ctx)
	wg.Wait()
	st := s.Status()
	st.Replica = s.opts.Advertise
	st.Etcd = &h
	st.Replicas = []ReplicaStatus{}
	if err == nil {
		st.Replicas = reps
	}
	if len(st.Replicas) > 0 {
		st.Leader = st.Replicas[0].URL
	}
	s.mu.Lock()
	st.Term = s.term
	s.mu.Unlock()
	return st
}

// Replicas lists the campaign keys, oldest (the leader) first.
func (s *etcdStore) Replicas(ctx context.Context) ([]ReplicaStatus, error) {
	resp, err := s.cli.Get(ctx, s.prefix+keyElection, clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
	if err != nil {
		return nil, err
	}
	out := make([]ReplicaStatus, 0, len(resp.Kvs))
	for i, kv := range resp.Kvs {
		out = append(out, ReplicaStatus{URL: string(kv.Value), Leader: i == 0, Term: uint64(kv.CreateRevision)})
	}
	return out, nil
}

// Health asks every endpoint for its status, in parallel.
func (s *etcdStore) Health(ctx context.Context) EtcdStatus {
	eps := s.cli.Endpoints()
	out := EtcdStatus{Prefix: s.prefix, Healthy: true, Endpoints: make([]EtcdEndpointStatus, len(eps))}
	var wg sync.WaitGroup
	for i, ep := range eps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e := EtcdEndpointStatus{Endpoint: ep}
			resp, err := s.cli.Status(ctx, ep)
			if err != nil {
				e.Error = err.Error()
			} else {
				e.Healthy = len(resp.Errors) == 0
				if !e.Healthy {
					e.Error = resp.Errors[0]
				}
				e.Version, e.DBSize, e.RaftTerm = resp.Version, resp.DbSize, resp.RaftTerm
				e.RaftLeader = resp.Header != nil && resp.Leader == resp.Header.MemberId
			}
			out.Endpoints[i] = e
		}()
	}
	wg.Wait()
	for _, e := range out.Endpoints {
		out.Healthy = out.Healthy && e.Healthy
	}
	return out
}

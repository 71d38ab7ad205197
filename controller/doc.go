// Package controller is Sluice's cluster controller: tenant SLOs enforced
// across gateways. Gateways report what each tenant did; the controller
// turns cluster-wide SLOs, measured capacities and demand into per-gateway,
// per-tenant limits (Crystal's Algorithm 1, made demand-aware and work
// conserving) and hands each gateway its full assignment set, stamped with
// an epoch. The gateway enforces the set as queue limits (package qos).
//
// The package has both sides: the daemon (Server, run by `sluice
// controller`), the HTTP Client, and what a gateway runs to follow the
// controller (Agent, Follower, Meter, CapacityEstimator). It imports
// gateway/qos for qos.Limits and the clock, never package gateway.
//
// # Model
//
// Four resources, each shared out on its own: read bandwidth, write
// bandwidth (bytes/s), read IOPS and write IOPS (the gateway's QoS cost
// units per second, 8 KiB each by default, as in `sluice qos set --iops`).
// A gateway's capacity for one resource does not constrain another; this is
// Crystal's model (it runs per method) and is optimistic for devices where
// reads and writes share one budget.
//
// An SLO (SetSLO, `sluice slo set`) gives a tenant a minimum and a maximum
// per resource, summed over every gateway. A tenant without an SLO that some
// gateway reports is best effort: minimum 0, no maximum.
//
// # A round
//
// Every Interval (1 s) after a warm-up (2 s), the Server builds the
// algorithm's Input from the gateways that reported within ReportTimeout
// (5 s); a gateway silent for longer is left out, so its share goes to the
// others at once. From each report (LoadFromReport):
//
//   - Demand is max(achieved, reported demand), where the reported demand is
//     the achieved rate plus the queued work, per interval (see Meter).
//   - A tenant whose op was throttled (requests waited) is Unbounded (wants
//     whatever it is given) on the resources whose last limit it reached (at
//     least 90 %); if it reached none, the device held it back, and it is
//     Unbounded on both resources of the op. So a tenant held back by its
//     IOPS limit does not claim bandwidth it cannot use.
//   - A reported capacity of 0 is unknown: no limit comes from that
//     resource's capacity on that gateway (maximums still apply).
//
// Crystal (the default Algorithm) then works per resource:
//
//  1. Minimums: each tenant's minimum, capped by its maximum and by what it
//     asks for in total (the sum over gateways of its demand × (1+Headroom),
//     or unbounded), is split over the gateways where it has work in
//     proportion to its demand there. Overloaded gateways push minimums
//     along augmenting paths (gateway → a tenant's minimum there → another
//     gateway where that tenant has work → … → a gateway with room), so
//     every minimum is placed whenever any placement can hold them all.
//     What still does not fit is cut max-min fairly on its gateway and
//     reported as a Shortfall (Status, metrics, `sluice cluster status`),
//     with the reason; the rest of the round is unaffected.
//  2. Spare: tenants that want more grow by equal steps (progressive
//     filling); each step gives every contender on a gateway at most an
//     equal part of that gateway's spare, and each tenant takes its step
//     from its least contended gateways first. A tenant stops at its
//     maximum, at its demand × (1+Headroom) where it is not Unbounded, or
//     when its gateways are full. The result is the minimum plus an equal
//     share of the spare, cluster-wide, when placement allows it; the steps
//     are bounded (32), which costs a few per cent of equality in unusual
//     placements.
//  3. Work conservation: spare still left on a gateway goes, in equal
//     parts, to its tenants that want more there.
//  4. Leftover: capacity nobody wants is shared equally among every tenant
//     (within its maximum, spread evenly over the gateways), so a tenant
//     that starts IO anywhere has room at once.
//
// The algorithm is sparse (for 1,000 gateways and 10,000 tenants): steps
// 1-3 work on the tenant-gateway pairs with work, and step 4's share of
// the tenants without a maximum is one default per gateway. A set lists
// the tenants the gateway reported and those whose limits differ from
// the default, and carries the default for the rest (docs/CONTROLLER.md,
// "At scale").
//
// The invariants, checked by property tests against an independent
// max-flow over random clusters: no gateway is assigned above its capacity,
// no tenant above its maximum, every minimum is met exactly when some
// placement can meet them all, and capacity is idle only if every tenant is
// at its maximum.
//
// # Assignment sets and epochs
//
// LimitsFor turns a tenant's assignment on a gateway into qos.Limits:
// ReadBPS, WriteBPS, ReadIOPS and WriteIOPS are the limits (unset where the
// assignment is unlimited; at least 1 B/s or 1 IOPS where it is zero,
// because a zero field means "no limit" and a request larger than the rate
// still goes at once: the buckets are meters with debt), and
// ReservationBPS/ReservationIOPS are the tenant's placed minimum there,
// reads and writes summed, so the gateway's scheduler serves the minimum
// first even if the measured capacity was optimistic. A set lists every
// tenant the controller knows.
//
// An epoch is GENERATION<<32 | ROUND. The generation is stored in the
// database and is max(previous+1, Unix seconds) at every start, so epochs
// keep growing across restarts, even after the data directory is lost.
// Every round makes a new epoch for every gateway. On etcd a set also
// carries the leader's term: the create revision of its election key,
// which grows with every new leader (a new leader's key is the oldest
// live one, and every key older than it is gone).
//
// # The gateway side
//
// Follower orders sets by term, then epoch: it ignores (logs and counts)
// a set from an older term than the newest it accepted, and in one term
// applies sets whose epoch is at least the newest it has seen (equal:
// contact only; newer: Apply if the limits changed or it was in fallback)
// and ignores older ones. A set without a term (one controller) is
// ordered by its epoch alone. It starts in fallback (the gateway's
// static rules). If no set arrives for Grace (10 s) it calls Fallback once.
// Apply and Fallback never run concurrently and are never on the IO path.
//
// Client takes one URL or several (the replicas of a controller on etcd):
// it sends each call to the replica it believes leads and, when that one
// refuses the connection, drops it, times out or answers "not the leader",
// goes to the leader the answer names, else to the next URL, each replica
// at most once per call. A long poll in flight on a replica is abandoned
// when another call moves the client to another replica.
//
// Agent is the loop a gateway runs: register, Report every second (the
// gateway's Report callback, usually a Meter over its queue counters), long
// poll its assignments and Offer them to its Follower. It re-registers when
// the controller answers 404 (for example after its registry was lost). A
// dead controller only makes these calls fail; IO goes on under the last
// assignments and then the static rules.
//
// Meter turns cumulative per-tenant, per-op counters (bytes, cost units,
// requests, time waited, requests queued) into a Report: an op is Throttled
// when on average a quarter of a request or more waited over the interval.
// CapacityEstimator measures capacity: while the device is saturated the
// estimate follows the achieved total; while tenants press their limits and
// the device is not saturated it grows 5 % per interval, never above its
// Ceiling (a gateway sets it to the capacity --qos-capacity-iops paces
// routed IO at). docs/CONTROLLER.md has what the measurement can and cannot
// see, and the integration test's figures.
//
// # HTTP API (v1, JSON)
//
//	GET    /v1/health                              {"status":"ok"} (no token needed)
//	POST   /v1/gateways                            GatewayRegistration → GatewayRegistration
//	DELETE /v1/gateways/{id}                       204
//	POST   /v1/gateways/{id}/report                Report → ReportReply
//	GET    /v1/gateways/{id}/assignments?after=E&wait=10s
//	                                               AssignmentSet newer than E (200), or 204 if none
//	                                               came within wait (at most MaxWait, 1 min)
//	GET    /v1/slos                                [SLO]
//	GET    /v1/slos/{tenant}                       SLO
//	PUT    /v1/slos/{tenant}                       SLO → SLO (create or replace)
//	DELETE /v1/slos/{tenant}                       204
//	GET    /v1/status                              Status
//	GET    /metrics                                Prometheus text format
//
// Errors are {"error": "one line"}: 400 invalid input (unknown JSON fields
// are refused), 401 missing or wrong token, 404 unknown gateway or SLO, 503
// closing or not the leader, 500 anything else. A follower's 503 adds
// "not_leader": true and "leader": URL (absent while none is elected);
// followers refuse writes, reports and assignment polls this way (reports
// and assignments are the leader's runtime state). Client maps them back
// (errors.Is with ErrInvalid, ErrUnauthorized, ErrNotFound, ErrClosed,
// ErrNotLeader).
//
// With Options.Token set, every call but /v1/health must carry
// "Authorization: Bearer TOKEN" (compared in constant time); CheckListen
// refuses a non-loopback listen address without a token.
//
// # State
//
// Desired state, SLOs and the gateway registry, lives in badger under
// DataDir (keys slo/<tenant>, gw/<id>, meta/generation; JSON values; synced
// writes). A failed read at start is fatal: it is never taken for an empty
// state. Reports, assignments and liveness live in memory only: a restarted
// controller loads its desired state, waits out the warm-up while gateways
// report (they keep their last assignments meanwhile), and carries on with
// a higher generation.
//
// The Store interface holds it: OpenBadgerStore (the default, one host) or
// OpenEtcdStore, the same keys under one etcd prefix with a schema version
// key. On etcd any number of replicas campaign (client v3 concurrency);
// only the leader runs rounds, each won term starts a new generation, and
// every write is a transaction fenced on the leader's election key's create
// revision, so a deposed leader's write fails. Followers reload the state
// every interval, answer reads, and refuse writes with a NotLeaderError
// naming the leader (HTTP 503). ClusterStatus (GET /v1/status) adds the
// leader, the replica that answered, the replicas and etcd's health.
//
// # Metrics
//
// sluice_controller_rounds_total, _round_seconds (histogram of the
// algorithm's time), _reports_total, _report_bytes_total,
// _assignment_polls_total, _epoch, _gateways{state="live"|"silent"},
// _gateway_capacity{gateway,resource}, and per tenant and resource
// _tenant_achieved, _tenant_demand, _tenant_assigned, _tenant_slo_min,
// _tenant_slo_max, _tenant_shortfall.
//
// # Cost
//
// Measured by TestSimulation100Gateways50Tenants (100 gateways, 50 tenants,
// 841 tenant-gateway pairs, on a shared 2-core machine): a round takes
// about 5-15 ms of CPU; a report is about 2.6 KB per gateway per second
// (about 300 B per tenant on it), so about 250 KiB/s in all, half of
// Crystal's model O = |W|·s·(2|N|+|C|) for the same messages (its 2|N|
// counts a hop through a broker this design does not have); assignment sets
// add about 4 KB per gateway per round.
//
// # Not done
//
//   - Capacities are per resource and independent (no shared read/write
//     budget); the CapacityEstimator's probing is simple and untuned.
//   - Sets list every known tenant and change every round; no delta
//     encoding, no suppression of unchanged sets.
//   - A tenant that starts IO on a gateway that is full gets a token rate
//     until the next round (about a second).
//   - No weights or priorities among tenants; the spare is shared equally.
//   - HA on etcd is partial: see docs/CONTROLLER.md, "Replicas".
package controller

package netctx

import (
	"fmt"
	"net/netip"
	"sync"
	"time"

	"reachd/pkg/schedule"
	"reachd/pkg/verdict"
)

// SnapshotQuery says what a failure snapshot is of: the route the probe's packets took,
// its next hop, and its flow.
type SnapshotQuery struct {
	Route  Route
	Target netip.Addr
	Flow   Flow
}

// Snapshot reads the host's state toward a failed probe's target: the egress interface's
// state, counters and addresses, the next hop's neighbor entry, and the flow's conntrack
// entry with the table's health. At most SnapshotRate a second per interface (a burst of
// SnapshotBurst) are whole: past that it says so and reads nothing, so that a gateway with
// many failing targets does not storm netlink.
func Snapshot(q SnapshotQuery) *verdict.Context {
	out := &verdict.Context{}
	if q.Route.LinkIndex <= 0 {
		return nil
	}
	if !allow(q.Route.LinkIndex, time.Now()) {
		out.Limited = fmt.Sprintf("more than %d snapshots a second on %s: this one is left out", SnapshotRate, q.Route.Dev)
		return out
	}
	noARP := false
	if l, addrs, na, err := linkState(q.Route.LinkIndex); err == nil {
		out.Link, out.Addresses, noARP = l, addrs, na
	}
	// A local or loopback route, or a link without a neighbor table, has no next hop to
	// resolve.
	if q.Route.Type == "unicast" && !noARP && (out.Link == nil || out.Link.Name != "lo") {
		out.Neighbor = neighbor(q.Route.NextHop(q.Target), q.Route.LinkIndex)
	}
	// A namespace with no ct rule tracks nothing: its empty table says nothing either.
	if ct, err := conntrackOf(q.Flow); err == nil && (ct.Entry != nil || ct.Count > 0 || ct.Invalid+ct.InsertFailed+ct.Drop+ct.EarlyDrop > 0) {
		out.Conntrack = ct
	}
	return out
}

// The snapshot rate cap per interface.
const (
	SnapshotRate  = 10
	SnapshotBurst = 20
)

// buckets are the per-interface token buckets of the rate cap (bounded by the host's
// interfaces).
var buckets = struct {
	sync.Mutex
	m map[int]*schedule.Bucket
}{m: map[int]*schedule.Bucket{}}

func allow(index int, now time.Time) bool {
	buckets.Lock()
	defer buckets.Unlock()
	b, ok := buckets.m[index]
	if !ok {
		nb := schedule.NewBucket(SnapshotRate, SnapshotBurst)
		b = &nb
		buckets.m[index] = b
	}
	return b.Take(now)
}

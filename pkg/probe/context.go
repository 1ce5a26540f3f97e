package probe

import (
	"fmt"

	"reachd/pkg/netctx"
	"reachd/pkg/verdict"
)

// snapshot reads the host's state toward a failed attempt's target (netctx.Snapshot) and,
// when conntrack says this host is where the flow died, adds that to v's detail.
func snapshot(v *verdict.Verdict, a Attempt, rt netctx.Route, res Result) *verdict.Context {
	q := netctx.SnapshotQuery{Route: rt, Target: a.Addr.Addr()}
	if res.proto != 0 && res.Local.IsValid() {
		q.Flow = netctx.Flow{Proto: res.proto, Local: res.Local, Remote: a.Addr}
	}
	c := netctx.Snapshot(q)
	if c != nil && c.Conntrack != nil {
		if why := conntrackCause(c.Conntrack, v.Reason); why != "" {
			v.Detail += "; " + why
		}
	}
	return c
}

// conntrackCause says what the tracker knows of where the flow died, if it knows: a table
// too full to take it, packets it found INVALID (which a ct state invalid rule drops), or
// an entry that never saw a reply (the packets left; nothing came back to this host).
func conntrackCause(ct *verdict.Conntrack, r verdict.Reason) string {
	silent := r == verdict.Timeout || r == verdict.OpenFiltered || r == verdict.DNSTimeout
	switch {
	case ct.Entry == nil && (ct.InsertFailed > 0 || ct.Drop > 0 || ct.Max > 0 && ct.Count >= ct.Max):
		return fmt.Sprintf("conntrack has no entry for the flow and its table is full (%d of %d entries; %d insert failures, %d drops since the last snapshot): this host dropped the probe's packets",
			ct.Count, ct.Max, ct.InsertFailed, ct.Drop)
	case silent && ct.Invalid > 0:
		return fmt.Sprintf("conntrack found %d packet(s) INVALID since the last snapshot: a ct state invalid rule on this host may have dropped the answer", ct.Invalid)
	case silent && ct.Entry != nil && !ct.Entry.SeenReply:
		state := ct.Entry.State
		if state == "" {
			state = "UNREPLIED"
		}
		return fmt.Sprintf("conntrack saw no reply for the flow (%s, %s): the packets left this host and nothing came back to it", ct.Entry.Orig, state)
	}
	return ""
}

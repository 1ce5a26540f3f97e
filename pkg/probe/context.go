package probe

import (
	"fmt"
	"time"

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
	if c != nil && c.Conntrack != nil && q.Flow.Valid() { // causes need the flow looked up
		if why := conntrackCause(c.Conntrack, v.Reason); why != "" {
			v.Detail += "; " + why
		}
	}
	return c
}

// conntrackCause says what the tracker knows of where the flow died, if it knows, in this
// order: an entry that never saw a reply (the packets left; nothing came back to this
// host); no entry, with a table at its limit (this host could not track the flow); no
// entry, with packets found INVALID host-wide meanwhile (a ct state invalid rule drops
// them: the answer to an untracked flow is one). The counters are host-wide, so only the
// flow's own entry, or its absence, makes them its cause.
func conntrackCause(ct *verdict.Conntrack, r verdict.Reason) string {
	silent := r == verdict.Timeout || r == verdict.OpenFiltered || r == verdict.DNSTimeout
	full := ct.Max > 0 && uint64(ct.Count)*100 >= uint64(ct.Max)*95
	switch {
	case ct.Entry == nil && full:
		return fmt.Sprintf("conntrack has no entry for the flow and its table is at its limit (%d of %d entries; %d insert failures, %d drops host-wide in the last %s): this host could not track the probe's packets",
			ct.Count, ct.Max, ct.InsertFailed, ct.Drop, since(ct.SinceMs))
	case silent && ct.Entry == nil && ct.Invalid > 0:
		return fmt.Sprintf("conntrack has no entry for the flow, and found %d packet(s) INVALID host-wide in the last %s: a ct state invalid rule here drops an untracked flow's answers", ct.Invalid, since(ct.SinceMs))
	case silent && ct.Entry != nil && !ct.Entry.SeenReply:
		state := ct.Entry.State
		if state == "" {
			state = "UNREPLIED"
		}
		return fmt.Sprintf("conntrack saw no reply for the flow (%s, %s): the packets left this host and nothing came back to it", ct.Entry.Orig, state)
	}
	return ""
}

func since(ms verdict.Millis) string {
	return time.Duration(float64(ms) * float64(time.Millisecond)).Round(time.Millisecond).String()
}

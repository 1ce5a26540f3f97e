package probe

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"reachd/pkg/schedule"
	"reachd/pkg/verdict"
)

// A same-flow path trace sends a failed attempt's own flow again with TTL (hop limit) 1, 2,
// ...: the same 5-tuple (ECMP and policy routing send it the same way, as
// paris-traceroute keeps it), with only what tells one packet of it from another varying
// (trace_hops.go). Each hop's router answers with time exceeded, the target with its own
// answer, or nothing answers.

// Bounds of a trace: its hops, and the silent hops in a row that end it.
const (
	maxTraceHops   = 30
	traceSilentEnd = 3
)

// The trace rate cap, process-wide: a daemon with many targets failing at once traces a
// few, not all (each trace sends up to 30 packets).
const (
	TraceRate  = 2
	TraceBurst = 5
)

var traceTokens = schedule.NewSharedBucket(TraceRate, TraceBurst)

// TraceBudget bounds a trace's time, whatever its hops: a daemon's chain of attempts
// waits for it.
const TraceBudget = 8 * time.Second

// hopper sends a failed attempt's own flow again, one TTL (hop limit) at a time.
type hopper interface {
	// hop sends the flow's probe with ttl and says who answered within wait. An error is
	// this host's: the hop could not be sent.
	hop(ctx context.Context, ttl int, wait time.Duration) (hopAnswer, error)
	close()
}

// hopAnswer is one hop's answer: reached when it was the target, final when the answer
// ends the trace (the target's, or an ICMP error other than time exceeded); wire when TC
// timed it.
type hopAnswer struct {
	verdict.Hop
	reached, final, wire bool
}

// tracePath traces a flow hop by hop. known is a router the failed attempt heard from (its
// ICMP error), if any: silent hops before it do not end the trace.
func tracePath(ctx context.Context, hp hopper, wait time.Duration, known netip.Addr) (*verdict.Path, error) {
	ctx, cancel := context.WithTimeout(ctx, TraceBudget)
	defer cancel()
	p := &verdict.Path{TimingSource: verdict.SourceWire}
	silent := 0
	seen := map[string]int{}
	for ttl := 1; ttl <= maxTraceHops && (silent < traceSilentEnd || known.IsValid()) && ctx.Err() == nil; ttl++ {
		ans, err := hp.hop(ctx, ttl, wait)
		if err != nil {
			return nil, err
		}
		if ctx.Err() != nil { // cut short: not silence
			p.Incomplete = true
			break
		}
		h := ans.Hop
		p.Hops = append(p.Hops, h)
		if h.Addr == "" {
			silent++
			continue
		}
		if !ans.wire {
			p.TimingSource = verdict.SourceUserspace
		}
		silent = 0
		if known.IsValid() && h.Addr == known.WithZone("").String() {
			known = netip.Addr{}
		}
		if prev := len(p.Hops) - 2; ans.final && !ans.reached && prev >= 0 && p.Hops[prev].Addr == h.Addr {
			// The router that let TTL n-1 expire forwards TTL n and rejects it: its
			// error belongs to its own hop (TTL is checked before the forward hook).
			p.Hops[prev].ICMP, p.Hops = h.ICMP, p.Hops[:prev+1]
			break
		}
		p.LastAnswered = ttl
		if n, loop := seen[h.Addr]; loop && n < ttl-1 {
			p.Loop = true // the same router again, not at the next hop: a routing loop
			break
		}
		seen[h.Addr] = ttl
		if ans.reached || ans.final {
			p.Reached = ans.reached
			break
		}
	}
	if p.LastAnswered == 0 {
		p.TimingSource = ""
	}
	for i := range p.Hops {
		h := &p.Hops[i]
		if h.Addr == "" && h.N < p.LastAnswered {
			h.RateLimited = true
		} else if h.Addr == "" && p.FirstSilent == 0 && !p.Incomplete {
			p.FirstSilent = h.N
		}
	}
	return p, nil
}

// pathDetail words where a trace ended: "lost after hop 3 (198.51.100.9)".
func pathDetail(p *verdict.Path) string {
	switch {
	case p.Reached:
		return fmt.Sprintf("path: the target answers at hop %d", p.LastAnswered)
	case p.Loop:
		return fmt.Sprintf("path: a routing loop: %s answers again at hop %d", p.Hops[p.LastAnswered-1].Addr, p.LastAnswered)
	case p.LastAnswered == 0 && p.Incomplete:
		return "path: the trace was cut short before any hop answered"
	case p.LastAnswered == 0:
		return "path: no hop answered (lost at the first hop, or its router does not send time exceeded)"
	case p.FirstSilent > 0:
		return fmt.Sprintf("path: lost after hop %d (%s)", p.LastAnswered, p.Hops[p.LastAnswered-1].Addr)
	case p.Incomplete:
		return fmt.Sprintf("path: hop %d (%s) answered before the trace was cut short", p.LastAnswered, p.Hops[p.LastAnswered-1].Addr)
	}
	last := p.Hops[p.LastAnswered-1]
	return fmt.Sprintf("path: hop %d (%s) answered %s", p.LastAnswered, last.Addr, last.ICMP)
}

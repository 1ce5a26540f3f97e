package probe

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"reachd/pkg/verdict"
)

// pmtuWanted says whether a chain's path MTU is searched: after an answer (mode always),
// or after silence that full-size packets lost could explain. Not after an error that says
// what went wrong, a lost SYN (small, whatever the MTU), or a chain cut short.
func pmtuWanted(ctx context.Context, mode string, out outcome) bool {
	last := out.last
	if ctx.Err() != nil || out.stopped || !out.addr.IsValid() || !last.sent || last.proto == 0 {
		return false
	}
	if last.Reason == verdict.OK {
		return mode == PMTUAlways
	}
	if !silent(last) && last.Reason != verdict.DNSTimeout {
		return false
	}
	if last.proto == unix.IPPROTO_TCP { // the handshake completed: its data may be full-size
		return last.Reason == verdict.DNSTimeout || last.Layer != "" && last.Layer != verdict.LayerTransport && last.Layer != verdict.LayerNetwork
	}
	return true
}

// pmtuExplains says whether a search's finding is the verdict's reason: the probe was
// answered (the verdict is then about the path); or, for silence, a black hole that its
// own packets were larger than, or that a TCP exchange past its handshake met (the peer's
// packets may be full-size). A router's "fragmentation needed" does not explain silence:
// the kernel follows it (and an attempt it answered would have heard it).
func pmtuExplains(last Result, r pmtuResult) bool {
	switch {
	case last.Reason == verdict.OK:
		return true
	case r.ptb != nil:
		return false
	case last.proto == unix.IPPROTO_TCP:
		return true
	}
	return probeSize(last) > r.limit()
}

// probeSize is the size of an attempt's datagram or echo request, IP header included.
func probeSize(last Result) int {
	hdr := ipHeader(last.proto == unix.IPPROTO_ICMPV6 || last.Local.Addr().Is6() && !last.Local.Addr().Is4In6())
	switch last.proto {
	case unix.IPPROTO_UDP:
		return hdr + 8 + len(last.payload)
	case unix.IPPROTO_ICMP, unix.IPPROTO_ICMPV6:
		return hdr + len(last.payload)
	}
	return 0
}

// pmtu searches the path MTU after a chain's last attempt and writes what it found into
// v: its reason when the finding explains the verdict, else a note in the detail. Past the
// rate cap, a recent search of the same path stands in, so that a daemon's verdicts do
// not flip with the cap.
func pmtu(ctx context.Context, v *verdict.Verdict, out outcome) {
	a := out.attempt
	key := pmtuKey{addr: out.addr, port: a.Addr.Port(), proto: out.last.proto, iface: a.Interface, mark: a.Mark, source: a.Source}
	var r pmtuResult
	note := ""
	if now := time.Now(); pmtuTokens.Take(now) {
		var err error
		if r, err = searchPMTU(ctx, a, out.last, min(a.Timeout, time.Second)); err != nil {
			v.Detail += "; path MTU not searched: " + err.Error()
			return
		}
		if r.cut == "" {
			pmtuRecent.put(key, r, now)
		}
	} else {
		var ok bool
		if r, ok = pmtuRecent.get(key, now); !ok {
			v.Detail += fmt.Sprintf("; path MTU not searched: over %d searches a second", PMTURate)
			return
		}
		note = fmt.Sprintf(" [searched %s ago; over %d searches a second now]", now.Sub(r.at).Round(time.Second), PMTURate)
	}
	text, reason := r.finding()
	v.Detail += "; path MTU: " + text + note
	switch {
	case reason == "":
	case pmtuExplains(out.last, r):
		v.Reason, v.Layer, v.OK = reason, verdict.LayerNetwork, false
		failureEvidence(v, out)
	case r.ptb != nil:
		v.Detail += " (not why this probe failed: the kernel follows a router's fragmentation needed)"
	default:
		v.Detail += fmt.Sprintf(" (not why this probe failed: its %d-byte packets are within it, unless the answer was larger)", probeSize(out.last))
	}
}

// pmtuKey is a searched path: where to, by what, and through which interface.
type pmtuKey struct {
	addr   netip.Addr // with its zone
	port   uint16
	proto  uint8
	iface  string
	mark   uint32
	source netip.Addr
}

// pmtuKept is how long a search's result stands in for one the rate cap leaves out.
const pmtuKept = 10 * time.Minute

// pmtuRecent remembers the searches' results, bounded: past its size it starts over.
var pmtuRecent = &pmtuCache{m: map[pmtuKey]pmtuResult{}}

type pmtuCache struct {
	mu sync.Mutex
	m  map[pmtuKey]pmtuResult
}

const maxPMTUCache = 4096

func (c *pmtuCache) get(k pmtuKey, now time.Time) (pmtuResult, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	r, ok := c.m[k]
	return r, ok && now.Sub(r.at) < pmtuKept
}

func (c *pmtuCache) put(k pmtuKey, r pmtuResult, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= maxPMTUCache {
		clear(c.m)
	}
	r.at = now
	c.m[k] = r
}

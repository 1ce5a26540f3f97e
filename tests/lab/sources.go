package lab

import (
	"fmt"
	"net/netip"
	"time"
)

// A router answers a packet it cannot route (an unreachable or prohibit route, no route at
// all) from ip_error(), which rate-limits per source address with constants that are
// host-wide (net.ipv4.route.error_burst/error_cost: 5 errors, then 1 a second) and that a
// test must not change. Parallel cases sharing one source would take each other's budget
// and see a timeout instead of the error. So every case that expects a router-made IPv4
// error sends from a client address of its own, taken from ErrorSourcesV4; IPv6 routers
// have no such per-source budget, and every other ICMP limit is off in the lab's
// namespaces (icmp_ratemask, see build).
var ErrorSourcesV4 = netip.MustParsePrefix("198.51.100.64/26")

// sourceReuseAfter is when a source handed out may go to another case: its case draws its
// errors within its probe's timeout (seconds), and ip_error refills a whole budget 5 s after
// the last draw.
const sourceReuseAfter = 15 * time.Second

type sourcePool struct {
	next   netip.Addr
	usable map[netip.Addr]time.Time // per source handed out: when its budget is whole again
}

// ErrorSourceV4 hands out the next client source from ErrorSourcesV4 (.65 to .126), adding it
// to the client's interface on first use. Each case may draw up to the router's burst (5
// errors, more than a probe's SYNs within its timeout) from it. A run of the lab tests takes
// about 20; past the block's end (go test -count) they are handed out again in turn, each
// once its budget is whole again, waiting if need be. So no budget can run dry, whatever
// the number and order of cases.
func (l *Lab) ErrorSourceV4() (netip.Addr, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n := l.sources.next; !n.IsValid() || !ErrorSourcesV4.Contains(n.Next()) {
		l.sources.next = ErrorSourcesV4.Addr().Next()
	}
	src := l.sources.next
	l.sources.next = src.Next()
	if l.sources.usable == nil {
		l.sources.usable = map[netip.Addr]time.Time{}
	}
	usable, seen := l.sources.usable[src]
	if !seen {
		if err := addAddr(l.Client, ClientIf, src.String()+"/32"); err != nil {
			return netip.Addr{}, fmt.Errorf("error source: %w", err)
		}
	}
	// Waiting under the lock also holds back later callers, whose sources were handed
	// out after this one and are whole no sooner.
	time.Sleep(time.Until(usable))
	l.sources.usable[src] = time.Now().Add(sourceReuseAfter)
	return src, nil
}

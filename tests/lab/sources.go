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

// errorBudgetRefill is how long ip_error takes to refill a source's whole budget.
const errorBudgetRefill = 5 * time.Second

type sourcePool struct {
	next  netip.Addr
	added map[netip.Addr]time.Time // when each source was last handed out
}

// ErrorSourceV4 hands out the next client source from ErrorSourcesV4, adding it to the
// client's interface on first use. Each case may draw up to the router's burst (5 errors,
// more than a probe's 3 SYNs) from it. After the block runs out addresses are handed out
// again in turn, each only once its budget has refilled, waiting if it must; so a budget
// cannot run dry however many cases run, nor in what order.
func (l *Lab) ErrorSourceV4() (netip.Addr, error) {
	l.mu.Lock()
	// Neither the block's first address nor its last (.64, .127) is handed out.
	if n := l.sources.next; !n.IsValid() || !ErrorSourcesV4.Contains(n.Next()) {
		l.sources.next = ErrorSourcesV4.Addr().Next()
	}
	src := l.sources.next
	l.sources.next = src.Next()
	if l.sources.added == nil {
		l.sources.added = map[netip.Addr]time.Time{}
	}
	last, used := l.sources.added[src]
	wait := time.Until(last.Add(errorBudgetRefill))
	l.sources.added[src] = time.Now().Add(max(wait, 0))
	l.mu.Unlock()
	if used {
		time.Sleep(wait) // no-op when the budget has long refilled
		return src, nil
	}
	if err := addAddr(l.Client, ClientIf, src.String()+"/32"); err != nil {
		return netip.Addr{}, fmt.Errorf("error source: %w", err)
	}
	return src, nil
}

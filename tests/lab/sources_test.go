package lab

import (
	"net/netip"
	"testing"
	"time"

	"reachd/pkg/verdict"
)

// TestRouterErrorsFromOneSource: the lab's ICMP settings must not turn a router's error into
// silence. From one source, one after another: a datagram the router's nftables rejects, then
// ones it has no usable route for (ip_error's per-source budget). Each must come back as its
// error. With the lab's old icmp_ratelimit=0, the reject emptied that source's budget and the
// next unroutable datagram got no answer for a second.
func TestRouterErrorsFromOneSource(t *testing.T) {
	l := requireLab(t)
	src, err := l.ErrorSourceV4()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		target string
		reason verdict.Reason
	}{
		{ap(AdminV4, PortDNS), verdict.AdminProhibited},
		{ap(UnroutedV4, PortDNS), verdict.NetUnreachable},
		{ap(GhostV4, PortDNS), verdict.HostUnreachable},
		{ap(ProhibV4.Addr(), PortDNS), verdict.AdminProhibited},
		{ap(UnreachV4.Addr(), PortDNS), verdict.HostUnreachable},
	} {
		vs, _ := probeKind(t, l, "udp", nil, "--no-ebpf", "--retries", "0", "--timeout", "2s", "--source", src.String(), c.target)
		if len(vs) != 1 {
			t.Fatalf("%s: %d verdicts", c.target, len(vs))
		}
		if got := verdict.Reason(vs[0]["reason"].(string)); got != c.reason || icmpFrom(vs[0]) != RouterClientV4.String() {
			t.Logf("router counters:\n%s", l.Router.ICMPCounters())
			t.Fatalf("%s from %s: %s from %q, want %s from %s: %v", c.target, src, got, icmpFrom(vs[0]), c.reason, RouterClientV4, vs[0]["detail"])
		}
	}
}

// TestRouterErrorsV6Burst: IPv6 routers have no per-source budget of ip_error's kind, but
// ICMPv6 errors are limited per destination (net.ipv6.icmp.ratelimit: a burst of 6) unless
// the lab's empty ratemask exempts them. Twelve datagrams at once from one source, each to a
// destination the router rejects or cannot reach, must all get their error.
func TestRouterErrorsV6Burst(t *testing.T) {
	l := requireLab(t)
	want := map[string]verdict.Reason{
		ap(AdminV6, PortDNS):          verdict.AdminProhibited,
		ap(ProhibV6.Addr(), PortDNS):  verdict.AdminProhibited,
		ap(UnreachV6.Addr(), PortDNS): verdict.NetUnreachable,
		ap(GhostV6, PortDNS):          verdict.HostUnreachable,
	}
	unrouted := UnroutedV6
	for len(want) < 12 {
		want[ap(unrouted, PortDNS)] = verdict.NetUnreachable
		unrouted = unrouted.Next()
	}
	args := []string{"--no-ebpf", "--retries", "0", "--timeout", "2s"}
	for target := range want {
		args = append(args, target)
	}
	vs, _ := probeKind(t, l, "udp", nil, args...)
	if len(vs) != len(want) {
		t.Fatalf("%d verdicts, want %d", len(vs), len(want))
	}
	for _, v := range vs {
		target := v["target"].(string)
		if got := verdict.Reason(v["reason"].(string)); got != want[target] || icmpFrom(v) != RouterClientV6.String() {
			t.Errorf("%s: %s from %q, want %s from %s: %v", target, got, icmpFrom(v), want[target], RouterClientV6, v["detail"])
		}
	}
}

// TestErrorSourcesWrap: past the end of ErrorSourcesV4 the sources come round again, each
// only once its budget is whole.
func TestErrorSourcesWrap(t *testing.T) {
	l := requireLab(t)
	first, last := ErrorSourcesV4.Addr().Next(), netip.MustParseAddr("198.51.100.126")
	l.mu.Lock()
	_, seen := l.sources.usable[first]
	// Later tests go on from where the pool was, not from sources used a moment ago.
	resume := l.sources.next
	defer func() { l.mu.Lock(); l.sources.next = resume; l.mu.Unlock() }()
	if !seen {
		l.sources.next = netip.Addr{} // start of the block
	}
	l.mu.Unlock()
	if !seen {
		if _, err := l.ErrorSourceV4(); err != nil { // hands out and adds first
			t.Fatal(err)
		}
	}
	// Nothing else runs now: make last the next one, free at once, and first busy a while.
	const wait = 300 * time.Millisecond
	l.mu.Lock()
	l.sources.next = last
	if _, ok := l.sources.usable[last]; ok {
		l.sources.usable[last] = time.Time{}
	}
	l.sources.usable[first] = time.Now().Add(wait)
	l.mu.Unlock()
	for _, want := range []netip.Addr{last, first} {
		start := time.Now()
		got, err := l.ErrorSourceV4()
		if err != nil || got != want {
			t.Fatalf("got %v %v, want %s", got, err, want)
		}
		if waited := time.Since(start); want == first && waited < wait-10*time.Millisecond {
			t.Errorf("%s handed out again after %s, before its budget was whole", first, waited)
		}
	}
	// The client must hold both: a source it lacks would make every probe a local error.
	vs, _ := probeKind(t, l, "udp", nil, "--no-ebpf", "--retries", "0", "--source", last.String(), ap(ServerV4, PortUDPEcho))
	if len(vs) != 1 || vs[0]["reason"] != "ok" {
		t.Fatalf("probe from %s: %v", last, vs)
	}
}

package lab

import (
	"testing"

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

package lab

import (
	"net/netip"
	"testing"

	"reachd/pkg/verdict"
)

// relayCases probe through a relayed link, from its client address: TCP, echo and UDP
// answered, and an echo and a datagram that draw ICMP errors from the router.
func relayCases(rl relayLink) []struct {
	kind, target string
	src          netip.Addr
	reason       verdict.Reason
} {
	type c = struct {
		kind, target string
		src          netip.Addr
		reason       verdict.Reason
	}
	v4, v6 := rl.ClientV4.Addr(), rl.ClientV6.Addr()
	return []c{
		{"tcp", ap(ServerV4, PortOpen), v4, verdict.OK},
		{"tcp", ap(ServerV6, PortOpen), v6, verdict.OK},
		{"icmp", ServerV4.String(), v4, verdict.OK},
		{"icmp", ServerV6.String(), v6, verdict.OK},
		{"udp", ap(ServerV4, PortUDPEcho), v4, verdict.OK},
		{"udp", ap(ServerV6, PortUDPEcho), v6, verdict.OK},
		// Router errors: each link's v4 source is its own, so ip_error's per-source burst
		// (5) is not shared with other tests.
		{"icmp", ProhibV4.Addr().String(), v4, verdict.AdminProhibited},
		{"udp", ap(ProhibV4.Addr(), PortDNS), v4, verdict.AdminProhibited},
		{"icmp", ProhibV6.Addr().String(), v6, verdict.AdminProhibited},
		{"udp", ap(ProhibV6.Addr(), PortDNS), v6, verdict.AdminProhibited},
	}
}

func testRelayLink(t *testing.T, rl relayLink) {
	l := requireLab(t)
	if err := l.RelayLink(rl); err != nil {
		t.Fatal(err)
	}
	for _, c := range relayCases(rl) {
		t.Run(c.kind+"/"+c.target, func(t *testing.T) {
			t.Parallel()
			vs, _ := probeKind(t, l, c.kind, nil, "--retries", "0", "--timeout", "2s", "--source", c.src.String(), c.target)
			if len(vs) != 1 {
				t.Fatalf("want 1 verdict, got %d", len(vs))
			}
			v := vs[0]
			t.Logf("%s from %s → %s [%s]: %s", c.target, c.src, v["reason"], v["timing_source"], v["detail"])
			if v["reason"] != string(c.reason) || v["timing_source"] != verdict.SourceWire {
				t.Errorf("reason %v timing_source %v, want %s and wire", v["reason"], v["timing_source"], c.reason)
			}
		})
	}
}

// TestL3Link: over a link without Ethernet headers (tun), every kind is timed at the wire.
func TestL3Link(t *testing.T) { testRelayLink(t, TunLink) }

// TestNonLinearPackets: over a link whose received packets keep all but their first
// headers in page fragments (the TCP flags, the ICMP error's quote), every kind is timed
// at the wire.
func TestNonLinearPackets(t *testing.T) { testRelayLink(t, FragsLink) }

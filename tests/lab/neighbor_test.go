package lab

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"reachd/pkg/verdict"
)

// TestDeadNeighbor: a host on the client's own link that never answers ARP/NDP. Every kind
// says the same, whether its timeout ends before the kernel gives up on the neighbor (about
// 3 s: 2s here) or after (5s, when the kernel's own host unreachable arrives): the next hop
// did not resolve, at layer link, and this host is never named as the sender of an ICMP
// error, as if a router had answered.
func TestDeadNeighbor(t *testing.T) {
	l := requireLab(t)
	n := 0
	for _, timeout := range []string{"2s", "5s"} {
		for _, v6 := range []bool{false, true} {
			if v6 && timeout == "2s" {
				continue // the path before the kernel gives up is the same for both families
			}
			for _, kind := range []string{"tcp", "icmp", "udp"} {
				// Each case a neighbor of its own: probes of one share its resolution.
				n++
				ghost := netip.MustParseAddr(fmt.Sprintf("198.51.100.%d", 19+n))
				if v6 {
					ghost = netip.MustParseAddr(fmt.Sprintf("2001:db8:c::%x", 0x20+n))
				}
				target := ap(ghost, PortUDPEcho)
				if kind == "icmp" {
					target = ghost.String()
				}
				t.Run(fmt.Sprintf("%s/%s/%s", kind, timeout, target), func(t *testing.T) {
					t.Parallel()
					vs, _ := probeKind(t, l, kind, nil, "--retries", "0", "--timeout", timeout, target)
					if len(vs) != 1 {
						t.Fatalf("want 1 verdict, got %d", len(vs))
					}
					v := vs[0]
					t.Logf("%s → %s/%s [%s] wire %v: %s", target, v["reason"], v["layer"], v["timing_source"], v["wire"], v["detail"])
					if v["reason"] != string(verdict.HostUnreachable) || v["layer"] != string(verdict.LayerLink) {
						t.Errorf("reason %v layer %v, want host_unreachable at link", v["reason"], v["layer"])
					}
					if from := icmpFrom(v); from != "" {
						t.Errorf("wire.icmp.from %s: this host presented as the router that answered", from)
					}
					if d, _ := v["detail"].(string); !strings.Contains(d, "did not answer neighbor resolution") {
						t.Errorf("detail does not name the neighbor that never answered")
					}
				})
			}
		}
	}
}

// TestLocalReject: this host's own firewall rejects the probe. That is no router's answer:
// layer local, for TCP (whose SYN draws an ICMP error this host makes: wire.icmp.local) and
// UDP (whose send the kernel fails at once) alike.
func TestLocalReject(t *testing.T) {
	l := requireLab(t)
	const port = 9998
	if err := l.Client.Nft(fmt.Sprintf(`table inet reachd_lab_local {
 chain out { type filter hook output priority 0; policy accept;
  ip daddr %s tcp dport %d reject with icmpx host-unreachable
  ip daddr %s udp dport %d reject with icmpx admin-prohibited
 }
}
`, ServerV4, port, ServerV4, port)); err != nil {
		t.Fatal(err)
	}
	defer l.Client.Run("nft", "delete", "table", "inet", "reachd_lab_local")
	for _, c := range []struct {
		kind   string
		reason verdict.Reason
	}{{"tcp", verdict.HostUnreachable}, {"udp", verdict.AdminProhibited}} {
		t.Run(c.kind, func(t *testing.T) {
			vs, _ := probeKind(t, l, c.kind, nil, "--retries", "0", "--timeout", "1s", ap(ServerV4, port))
			if len(vs) != 1 {
				t.Fatalf("want 1 verdict, got %d", len(vs))
			}
			v := vs[0]
			w, _ := v["wire"].(map[string]any)
			ic, _ := w["icmp"].(map[string]any)
			t.Logf("%s → %s/%s icmp %v: %s", c.kind, v["reason"], v["layer"], ic, v["detail"])
			if v["reason"] != string(c.reason) || v["layer"] != string(verdict.LayerLocal) || (c.kind == "tcp") != (ic["local"] == true) {
				t.Errorf("reason %v layer %v icmp %v, want %s at local with icmp.local", v["reason"], v["layer"], ic, c.reason)
			}
		})
	}
}

package lab

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"reachd/pkg/verdict"
)

// TestPathTrace: with --trace, a TCP probe that fails on a chain of four routers traces
// its own flow hop by hop, over IPv4 and IPv6: a drop at hop 3 ends the path at hop 2; a
// router that sends no time exceeded (hop 2: rate limited or filtered) is passed over,
// not taken for the break; a router's reject ends the path at that router.
func TestPathTrace(t *testing.T) {
	l := requireLab(t)
	c, err := l.Chain(4)
	if err != nil {
		t.Fatal(err)
	}
	const dropAt3, dropAt4, rejectAt4 = 8101, 8102, 8104
	for _, port := range []int{dropAt3, dropAt4, rejectAt4} {
		if _, err := l.Serve(c.Server, fmt.Sprintf("[::]:%d", port)); err != nil {
			t.Fatal(err)
		}
	}
	drop := func(ns *NS, rule string) {
		t.Helper()
		if err := ns.Nft(fmt.Sprintf("table inet trace {\n chain pre { type filter hook prerouting priority -300; %s; }\n}\n", rule)); err != nil {
			t.Fatal(err)
		}
	}
	drop(c.Routers[2], fmt.Sprintf("tcp dport %d drop", dropAt3))
	drop(c.Routers[3], fmt.Sprintf("tcp dport %d drop", dropAt4))
	if err := c.Routers[3].Nft(fmt.Sprintf("table inet rej {\n chain forw { type filter hook forward priority 0; tcp dport %d reject with icmpx admin-prohibited; }\n}\n", rejectAt4)); err != nil {
		t.Fatal(err)
	}
	// Hop 2 sends no time exceeded for the second trace's flow (as a rate-limited router):
	// the quoted TCP header's destination port follows the ICMP header (8 bytes) and the
	// quoted IP header (20 bytes, or IPv6's 40).
	if err := c.Routers[1].Nft(fmt.Sprintf("table inet quiet {\n chain out { type filter hook output priority 0; icmp type time-exceeded @th,240,16 %d drop; icmpv6 type time-exceeded @th,400,16 %d drop; }\n}\n", dropAt4, dropAt4)); err != nil {
		t.Fatal(err)
	}
	for _, v6 := range []bool{false, true} {
		fam := map[bool]string{false: "ipv4", true: "ipv6"}[v6]
		for _, tc := range []struct {
			name         string
			port         int
			reason       verdict.Reason
			last, silent int
			quiet        int // a hop passed over as rate limited
			detail       string
		}{
			{"drop at hop 3", dropAt3, verdict.Timeout, 2, 3, 0, "lost after hop 2"},
			{"hop 2 quiet, drop at hop 4", dropAt4, verdict.Timeout, 3, 4, 2, "lost after hop 3"},
			{"reject at hop 4", rejectAt4, verdict.AdminProhibited, 4, 0, 0, "hop 4"},
		} {
			t.Run(fam+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				target := netip.AddrPortFrom(c.ServerAddr(v6), uint16(tc.port)).String()
				cmd := c.Client.Command(reachdBin, "probe", "tcp", "--json", "--retries", "0", "--timeout", "1s", "--trace", target)
				vs, code := runVerdicts(t, cmd)
				if len(vs) != 1 {
					t.Fatalf("want 1 verdict, got %d (exit %d)", len(vs), code)
				}
				v := vs[0]
				p, _ := v["path"].(map[string]any)
				t.Logf("→ %s: %s\npath %v", v["reason"], v["detail"], p)
				if v["reason"] != string(tc.reason) || !strings.Contains(v["detail"].(string), tc.detail) || p == nil {
					t.Fatalf("got %v %q path %v; want %s ~%q", v["reason"], v["detail"], p, tc.reason, tc.detail)
				}
				if p["last_answered"] != float64(tc.last) || numOr0(p, "first_silent") != float64(tc.silent) {
					t.Errorf("last answered %v, first silent %v; want %d, %d", p["last_answered"], p["first_silent"], tc.last, tc.silent)
				}
				hops, _ := p["hops"].([]any)
				for i := 1; i <= tc.last && i <= len(hops); i++ {
					h := hops[i-1].(map[string]any)
					want := c.Hop(i, v6).String()
					switch {
					case i == tc.quiet && (h["addr"] != nil || h["rate_limited"] != true):
						t.Errorf("hop %d: %v, want silent and rate limited", i, h)
					case i != tc.quiet && h["addr"] != want:
						t.Errorf("hop %d answered from %v, want %s", i, h["addr"], want)
					}
				}
			})
		}
	}
}

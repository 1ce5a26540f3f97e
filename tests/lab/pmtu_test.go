package lab

import (
	"strings"
	"testing"

	"reachd/pkg/verdict"
)

// TestPMTU: a chain whose third link has an MTU of 1400. With the routers' "fragmentation
// needed" / "packet too big" filtered, full-size echoes vanish while small ones pass:
// mtu_blackhole, and the largest size that passes; with them allowed: frag_needed with
// the MTU the router gives. IPv4 and IPv6.
func TestPMTU(t *testing.T) {
	l := requireLab(t)
	build := func(filtered bool) *Chain {
		c, err := l.Chain(3)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Routers[1].Run("ip", "link", "set", "r0", "mtu", "1400"); err != nil {
			t.Fatal(err)
		}
		if err := c.Routers[2].Run("ip", "link", "set", "l0", "mtu", "1400"); err != nil {
			t.Fatal(err)
		}
		if filtered {
			if err := c.Routers[1].Nft("table inet ptb {\n chain out { type filter hook output priority 0; icmp type destination-unreachable icmp code frag-needed drop; icmpv6 type packet-too-big drop; }\n}\n"); err != nil {
				t.Fatal(err)
			}
		}
		return c
	}
	hole, told := build(true), build(false)
	for _, v6 := range []bool{false, true} {
		fam := map[bool]string{false: "ipv4", true: "ipv6"}[v6]
		for _, tc := range []struct {
			name   string
			c      *Chain
			reason verdict.Reason
			detail string
		}{
			{"black hole", hole, verdict.MTUBlackhole, "the largest that passes is 1400 bytes"},
			{"told", told, verdict.FragNeeded, "a path MTU of 1400"},
		} {
			t.Run(fam+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				cmd := tc.c.Client.Command(reachdBin, "probe", "icmp", "--json", "--retries", "0", "--timeout", "1s", "--pmtu", tc.c.ServerAddr(v6).String())
				vs, code := runVerdicts(t, cmd)
				if len(vs) != 1 {
					t.Fatalf("want 1 verdict, got %d (exit %d)", len(vs), code)
				}
				v := vs[0]
				t.Logf("→ %s/%s: %s", v["reason"], v["layer"], v["detail"])
				if v["reason"] != string(tc.reason) || v["layer"] != string(verdict.LayerNetwork) || !strings.Contains(v["detail"].(string), tc.detail) {
					t.Fatalf("got %v %q; want %s ~%q", v["reason"], v["detail"], tc.reason, tc.detail)
				}
			})
		}
	}
}

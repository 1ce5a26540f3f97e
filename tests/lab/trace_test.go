package lab

import (
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"

	"reachd/pkg/verdict"
)

// TestPathTrace: with --trace, a tcp, udp or icmp probe that fails on a chain of four
// routers traces its own flow hop by hop, over IPv4 and IPv6, each hop timed at the wire:
// a drop at hop 3 ends the path at hop 2; a router that sends no time exceeded (hop 2:
// rate limited or filtered) is passed over, not taken for the break; a router's reject
// ends the path at that router.
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
	// th: the TCP or UDP header alike. The echo requests of the icmp cases are dropped
	// at hop 3 (the chain's other probes are TCP and UDP).
	drop(c.Routers[2], fmt.Sprintf("th dport %d drop; icmp type echo-request drop; icmpv6 type echo-request drop", dropAt3))
	drop(c.Routers[3], fmt.Sprintf("th dport %d drop", dropAt4))
	if err := c.Routers[3].Nft(fmt.Sprintf("table inet rej {\n chain forw { type filter hook forward priority 0; th dport %d reject with icmpx admin-prohibited; }\n}\n", rejectAt4)); err != nil {
		t.Fatal(err)
	}
	// Hop 2 sends no time exceeded for the second trace's flow (as a rate-limited router):
	// the quoted TCP or UDP header's destination port follows the ICMP header (8 bytes) and the
	// quoted IP header (20 bytes, or IPv6's 40).
	if err := c.Routers[1].Nft(fmt.Sprintf("table inet quiet {\n chain out { type filter hook output priority 0; icmp type time-exceeded @th,240,16 %d drop; icmpv6 type time-exceeded @th,400,16 %d drop; }\n}\n", dropAt4, dropAt4)); err != nil {
		t.Fatal(err)
	}
	for _, v6 := range []bool{false, true} {
		fam := map[bool]string{false: "ipv4", true: "ipv6"}[v6]
		for _, tc := range []struct {
			kind         string
			name         string
			port         int
			reason       verdict.Reason
			last, silent int
			quiet        int // a hop passed over as rate limited
			detail       string
		}{
			{"tcp", "drop at hop 3", dropAt3, verdict.Timeout, 2, 3, 0, "lost after hop 2"},
			{"tcp", "hop 2 quiet, drop at hop 4", dropAt4, verdict.Timeout, 3, 4, 2, "lost after hop 3"},
			{"tcp", "reject at hop 4", rejectAt4, verdict.AdminProhibited, 4, 0, 0, "path: hop 4 (" + c.Hop(4, v6).String() + ") answered communication administratively prohibited"},
			{"udp", "drop at hop 3", dropAt3, verdict.OpenFiltered, 2, 3, 0, "lost after hop 2"},
			{"udp", "hop 2 quiet, drop at hop 4", dropAt4, verdict.OpenFiltered, 3, 4, 2, "lost after hop 3"},
			{"udp", "reject at hop 4", rejectAt4, verdict.AdminProhibited, 4, 0, 0, "path: hop 4 (" + c.Hop(4, v6).String() + ") answered communication administratively prohibited"},
			{"icmp", "drop at hop 3", 0, verdict.Timeout, 2, 3, 0, "lost after hop 2"},
		} {
			t.Run(fam+"/"+tc.kind+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				target := netip.AddrPortFrom(c.ServerAddr(v6), uint16(tc.port)).String()
				if tc.kind == "icmp" {
					target = c.ServerAddr(v6).String()
				}
				cmd := c.Client.Command(reachdBin, "probe", tc.kind, "--json", "--retries", "0", "--timeout", "1s", "--trace", target)
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
				if p["timing_source"] != verdict.SourceWire {
					t.Errorf("hops timed by %v, want wire", p["timing_source"])
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
					case i != tc.quiet && (numOr0(h, "rtt_ms") <= 0 || numOr0(h, "rtt_ms") > 500):
						t.Errorf("hop %d: round trip %v ms", i, h["rtt_ms"])
					}
				}
			})
		}
	}
}

// TestPathTraceECMP: of two equal-cost paths at hop 2 only one is broken (r2b drops the
// port); a failed probe's trace follows its own flow down the broken path (hop 2 silent),
// never the working one, whose r2a would answer. Each probe has a new source port, so
// over a few the hash sends some each way.
func TestPathTraceECMP(t *testing.T) {
	l := requireLab(t)
	e, err := l.ECMPChain()
	if err != nil {
		t.Fatal(err)
	}
	const port = 8201
	if _, err := l.Serve(e.Server, fmt.Sprintf("[::]:%d", port)); err != nil {
		t.Fatal(err)
	}
	if err := e.R2b.Nft(fmt.Sprintf("table inet trace {\n chain pre { type filter hook prerouting priority -300; tcp dport %d drop; }\n}\n", port)); err != nil {
		t.Fatal(err)
	}
	for _, v6 := range []bool{false, true} {
		fam := map[bool]string{false: "ipv4", true: "ipv6"}[v6]
		srv, hop1 := ECMPServerV4, "198.51.100.166"
		if v6 {
			srv, hop1 = ECMPServerV6, "2001:db8:e::2"
		}
		t.Run(fam, func(t *testing.T) {
			t.Parallel()
			// 16 flows: the chance that the hash sends them all one way is 2^-15.
			var ok, lost atomicCount
			t.Cleanup(func() {
				t.Logf("%s: %d ok through r2a, %d lost at r2b", fam, ok.get(), lost.get())
				if ok.get() == 0 || lost.get() == 0 {
					t.Errorf("%s: %d ok, %d lost: the hash did not split the flows (want some of each)", fam, ok.get(), lost.get())
				}
			})
			for i := range 16 {
				t.Run(fmt.Sprint(i), func(t *testing.T) {
					t.Parallel()
					cmd := e.Client.Command(reachdBin, "probe", "tcp", "--json", "--retries", "0", "--timeout", "500ms", "--trace", netip.AddrPortFrom(srv, port).String())
					vs, _ := runVerdicts(t, cmd)
					if len(vs) != 1 {
						t.Fatalf("want 1 verdict, got %d", len(vs))
					}
					v := vs[0]
					if v["reason"] == string(verdict.OK) {
						ok.add()
						return
					}
					lost.add()
					p, _ := v["path"].(map[string]any)
					hops, _ := p["hops"].([]any)
					t.Logf("%s from %v: %s", v["reason"], v["local"], v["detail"])
					if v["reason"] != string(verdict.Timeout) || p["last_answered"] != float64(1) || numOr0(p, "first_silent") != float64(2) ||
						len(hops) == 0 || hops[0].(map[string]any)["addr"] != hop1 {
						t.Errorf("the trace did not follow the flow down r2b: %v %v", v["reason"], p)
					}
				})
			}
		})
	}
}

type atomicCount struct{ n atomic.Int64 }

func (c *atomicCount) add()       { c.n.Add(1) }
func (c *atomicCount) get() int64 { return c.n.Load() }

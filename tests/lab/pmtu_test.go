package lab

import (
	"fmt"
	"io"
	"log"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"

	"reachd/pkg/verdict"
)

// TestPMTU: a chain whose third link has an MTU of 1400. With the routers' "fragmentation
// needed" / "packet too big" filtered, full-size packets vanish while small ones pass:
// mtu_blackhole, and the largest size that passes; with them allowed: frag_needed with
// the MTU the router gives. IPv4 and IPv6; icmp and udp search with echo requests, tcp
// and http with TCP segments to the probe's port. The http probe's large answer is what
// the black hole eats: a timeout that --pmtu=on-failure names.
func TestPMTU(t *testing.T) {
	l := requireLab(t)
	const webPort, silentPort = 8301, 8302
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
		for _, r := range c.Routers[1:] { // both ends of the link: both ways are black holes
			if !filtered {
				break
			}
			if err := r.Nft("table inet ptb {\n chain out { type filter hook output priority 0; icmp type destination-unreachable icmp code frag-needed drop; icmpv6 type packet-too-big drop; }\n}\n"); err != nil {
				t.Fatal(err)
			}
		}
		// A web server whose page is larger than the link's MTU, and a UDP port that
		// answers nothing.
		ln, err := c.Server.Listen("tcp", fmt.Sprintf("[::]:%d", webPort))
		if err != nil {
			t.Fatal(err)
		}
		page := strings.Repeat("reachd ", 2000)
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, page) }),
			ErrorLog: log.New(io.Discard, "", 0)}
		go srv.Serve(ln)
		l.AddCloser(func() { srv.Close() })
		if err := c.Server.Nft(fmt.Sprintf("table inet silent {\n chain in { type filter hook input priority 0; udp dport %d drop; }\n}\n", silentPort)); err != nil {
			t.Fatal(err)
		}
		return c
	}
	// A router's packet too big is remembered by the client's route: the tcp search
	// then starts at that path MTU. The tcp cases have a chain of their own.
	hole, told, toldTCP := build(true), build(false), build(false)
	for _, v6 := range []bool{false, true} {
		fam := map[bool]string{false: "ipv4", true: "ipv6"}[v6]
		for _, tc := range []struct {
			name   string
			c      *Chain
			args   []string
			reason verdict.Reason
			detail string
		}{
			{"icmp/black hole", hole, []string{"icmp", "--pmtu"}, verdict.MTUBlackhole, "the largest that passes is 1400 bytes"},
			{"icmp/told", told, []string{"icmp", "--pmtu"}, verdict.FragNeeded, "a path MTU of 1400"},
			{"udp/black hole", hole, []string{"udp", "--pmtu=on-failure"}, verdict.MTUBlackhole, "the largest that passes is 1400 bytes"},
			{"udp/told", told, []string{"udp", "--pmtu=on-failure"}, verdict.FragNeeded, "a path MTU of 1400"},
			{"tcp/black hole", hole, []string{"tcp", "--pmtu"}, verdict.MTUBlackhole, "the largest that passes is 1400 bytes"},
			{"tcp/told", toldTCP, []string{"tcp", "--pmtu"}, verdict.FragNeeded, "a path MTU of 1400"},
			{"http/black hole", hole, []string{"http", "--pmtu=on-failure"}, verdict.MTUBlackhole, "the largest that passes is 1400 bytes"},
		} {
			t.Run(fam+"/"+tc.name, func(t *testing.T) {
				t.Parallel()
				srv := tc.c.ServerAddr(v6)
				target := srv.String()
				switch tc.args[0] {
				case "udp":
					target = netip.AddrPortFrom(srv, silentPort).String()
				case "tcp":
					target = netip.AddrPortFrom(srv, webPort).String()
				case "http":
					target = "http://" + netip.AddrPortFrom(srv, webPort).String() + "/"
				}
				args := append([]string{"probe"}, tc.args...)
				cmd := tc.c.Client.Command(reachdBin, append(args, "--json", "--retries", "0", "--timeout", "1s", target)...)
				vs, code := runVerdicts(t, cmd)
				if len(vs) != 1 {
					t.Fatalf("want 1 verdict, got %d (exit %d)", len(vs), code)
				}
				v := vs[0]
				t.Logf("→ %s/%s: %s", v["reason"], v["layer"], v["detail"])
				if v["reason"] != string(tc.reason) || v["layer"] != string(verdict.LayerNetwork) || !strings.Contains(v["detail"].(string), tc.detail) {
					t.Fatalf("got %v %q; want %s ~%q", v["reason"], v["detail"], tc.reason, tc.detail)
				}
				if tc.reason == verdict.FragNeeded && !strings.Contains(v["detail"].(string), "fragmenting at "+tc.c.Hop(2, v6).String()) {
					t.Errorf("the router that said so is not named (%s)", tc.c.Hop(2, v6))
				}
			})
		}
	}
	// The daemon searches on failure: its http probe over the black hole times out and
	// says why, and its icmp probe, answered, is not searched.
	t.Run("daemon", func(t *testing.T) {
		t.Parallel()
		web := "http://" + netip.AddrPortFrom(hole.ServerAddr(false), webPort).String() + "/"
		cfg := fmt.Sprintf("defaults: {interval: 15s, timeout: 1s, retries: 0, pmtu: on-failure}\nmetrics: {listen: \"\"}\nlog: {verdicts: all, journald: off}\nprobes:\n"+
			"  - {name: web, kind: http, targets: [%q]}\n  - {name: ping, kind: icmp, interval: 2s, targets: [%q]}\n", web, hole.ServerAddr(true).String())
		d := startReady(t, l, cfg, DaemonOptions{NS: hole.Client})
		got := map[string]map[string]any{}
		// First runs are spread over the interval.
		for deadline := time.Now().Add(25 * time.Second); len(got) < 2 && time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			for _, ln := range d.Lines() {
				if p, _ := ln.V["probe"].(string); p != "" {
					got[p] = ln.V
				}
			}
		}
		web1, ping := got["web"], got["ping"]
		if web1 == nil || ping == nil {
			t.Fatalf("verdicts: %v; stderr:\n%s", got, d.Stderr())
		}
		t.Logf("web → %s: %s", web1["reason"], web1["detail"])
		t.Logf("ping → %s: %s", ping["reason"], ping["detail"])
		if web1["reason"] != string(verdict.MTUBlackhole) || !strings.Contains(web1["detail"].(string), "the largest that passes is 1400 bytes") {
			t.Errorf("web: %v %v", web1["reason"], web1["detail"])
		}
		if ping["reason"] != string(verdict.OK) || strings.Contains(ping["detail"].(string), "path MTU") {
			t.Errorf("ping: %v %v: an answered probe is searched only with pmtu: always", ping["reason"], ping["detail"])
		}
	})
}

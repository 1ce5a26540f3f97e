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
// and http with TCP segments to the probe's port, then echo requests for the way back.
// The search's finding is the verdict's reason where it explains it: an answered probe
// (--pmtu), a lost datagram larger than the path passes, an http page lost after the
// handshake, also on a path whose way back alone is a black hole; not a lost small
// datagram.
func TestPMTU(t *testing.T) {
	l := requireLab(t)
	const webPort, silentPort = 8301, 8302
	hole, told, toldTCP, back := pmtuChain(t, l, "hole"), pmtuChain(t, l, "told"), pmtuChain(t, l, "told"), pmtuChain(t, l, "back")
	// A router's packet too big is remembered by the client's route: the tcp search
	// then starts at that path MTU. The tcp case has a chain of its own.
	big := func(v6 bool) string { // a datagram of 1500 bytes, headers included
		if v6 {
			return strings.Repeat("00", 1500-48)
		}
		return strings.Repeat("00", 1500-28)
	}
	for _, v6 := range []bool{false, true} {
		fam := map[bool]string{false: "ipv4", true: "ipv6"}[v6]
		for _, tc := range []struct {
			name   string
			c      *Chain
			args   []string
			reason verdict.Reason
			detail string
			fam    string // only over this family ("": both)
		}{
			{"icmp/black hole", hole, []string{"icmp", "--pmtu"}, verdict.MTUBlackhole, "the largest that passes is 1400 bytes", ""},
			{"icmp/told", told, []string{"icmp", "--pmtu"}, verdict.FragNeeded, "a path MTU of 1400", ""},
			{"udp/small datagram", hole, []string{"udp", "--pmtu=on-failure"}, verdict.OpenFiltered, "the largest that passes is 1400 bytes", ""},
			{"udp/full-size datagram", hole, []string{"udp", "--pmtu=on-failure", "--payload-hex", big(v6)}, verdict.MTUBlackhole, "the largest that passes is 1400 bytes", ""},
			{"tcp/black hole", hole, []string{"tcp", "--pmtu"}, verdict.MTUBlackhole, "the largest that passes is 1400 bytes", ""},
			{"tcp/told", toldTCP, []string{"tcp", "--pmtu"}, verdict.FragNeeded, "a path MTU of 1400", ""},
			{"http/black hole", hole, []string{"http", "--pmtu=on-failure"}, verdict.MTUBlackhole, "the largest that passes is 1400 bytes", ""},
			{"http/way back only", back, []string{"http", "--pmtu=on-failure"}, verdict.MTUBlackhole, "the largest that passes is 1400 bytes", "ipv6"},
			// Linux's echo replies have no DF: the third router fragments them.
			{"http/way back only", back, []string{"http", "--pmtu=on-failure"}, verdict.Timeout, "1500-byte echo replies come back, but over IPv4 maybe in fragments", "ipv4"},
		} {
			if tc.fam != "" && tc.fam != fam {
				continue
			}
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
				// The second tcp search starts from the path MTU the route learned from the
				// first one's router: the same finding.
				runs := map[bool]int{false: 1, true: 2}[tc.name == "tcp/told"]
				for range runs {
					args := append([]string{"probe"}, tc.args...)
					cmd := tc.c.Client.Command(reachdBin, append(args, "--json", "--retries", "0", "--timeout", "1s", target)...)
					vs, code := runVerdicts(t, cmd)
					if len(vs) != 1 {
						t.Fatalf("want 1 verdict, got %d (exit %d)", len(vs), code)
					}
					v := vs[0]
					t.Logf("→ %s/%s: %s", v["reason"], v["layer"], v["detail"])
					if v["reason"] != string(tc.reason) || !strings.Contains(v["detail"].(string), tc.detail) {
						t.Fatalf("got %v %q; want %s ~%q", v["reason"], v["detail"], tc.reason, tc.detail)
					}
					switch {
					case tc.reason == verdict.OpenFiltered && !strings.Contains(v["detail"].(string), "not why this probe failed"):
						t.Errorf("a lost small datagram is put on the black hole")
					case tc.reason != verdict.OpenFiltered && tc.reason != verdict.Timeout && v["layer"] != string(verdict.LayerNetwork):
						t.Errorf("layer %v", v["layer"])
					case tc.reason == verdict.FragNeeded && !strings.Contains(v["detail"].(string), "fragmenting at "+tc.c.Hop(2, v6).String()):
						t.Errorf("the router that said so is not named (%s)", tc.c.Hop(2, v6))
					case tc.c == back && v6 && !strings.Contains(v["detail"].(string), "reach the target: the way back"):
						t.Errorf("the way back is not named")
					case tc.reason != verdict.OK && v["context"] == nil:
						t.Errorf("a failed verdict without its snapshot")
					}
				}
			})
		}
	}
}

// pmtuChain is a chain of three routers with an MTU of 1400 between the second and the
// third, serving a web page larger than that and a UDP port that answers nothing:
//   - hole: the link's MTU, "fragmentation needed" / "packet too big" filtered both ways;
//   - told: the link's MTU, those errors allowed;
//   - back: only the way back (server to client) limited, by a route's locked mtu on the
//     third router, and its errors filtered.
func pmtuChain(t *testing.T, l *Lab, kind string) *Chain {
	t.Helper()
	const webPort, silentPort = 8301, 8302
	c, err := l.Chain(3)
	if err != nil {
		t.Fatal(err)
	}
	run := func(ns *NS, args ...string) {
		t.Helper()
		if err := ns.Run(args[0], args[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	filter := func(ns *NS) {
		t.Helper()
		if err := ns.Nft("table inet ptb {\n chain out { type filter hook output priority 0; icmp type destination-unreachable icmp code frag-needed drop; icmpv6 type packet-too-big drop; }\n}\n"); err != nil {
			t.Fatal(err)
		}
	}
	switch kind {
	case "hole", "told":
		run(c.Routers[1], "ip", "link", "set", "r0", "mtu", "1400")
		run(c.Routers[2], "ip", "link", "set", "l0", "mtu", "1400")
		if kind == "hole" {
			filter(c.Routers[1])
			filter(c.Routers[2])
		}
	case "back":
		for _, v6 := range []bool{false, true} {
			bits := map[bool]int{false: 32, true: 128}[v6]
			run(c.Routers[2], "ip", "route", "add", fmt.Sprintf("%s/%d", ChainLeft(0, v6), bits), "via", ChainLeft(2, v6).String(), "mtu", "lock", "1400")
		}
		filter(c.Routers[2])
	}
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

// TestPMTUDaemon: a daemon with pmtu: on-failure searches when a probe fails: its http
// probe over the black hole times out and says why; its icmp probe, answered, is not
// searched.
func TestPMTUDaemon(t *testing.T) {
	l := requireLab(t)
	const webPort = 8301
	hole := pmtuChain(t, l, "hole")
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
}

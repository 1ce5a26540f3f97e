package lab

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"reachd/pkg/verdict"
)

// TestSourcePolicyRouting: with two uplinks chosen by source address, --source decides
// which link the probe leaves by: its packets are watched there (wire timing) and a
// failure names that link and its gateway.
func TestSourcePolicyRouting(t *testing.T) {
	l := requireLab(t)
	if err := l.SecondUplink(); err != nil {
		t.Fatal(err)
	}
	type uplink struct {
		src, gw netip.Addr
		dev     string
	}
	links := map[string]uplink{
		"main v4":   {ClientV4, RouterClientV4, ClientIf},
		"second v4": {UplinkClientV4, UplinkRouterV4, UplinkClientIf},
		"main v6":   {ClientV6, RouterClientV6, ClientIf},
		"second v6": {UplinkClientV6, UplinkRouterV6, UplinkClientIf},
	}
	for name, u := range links {
		server, echo := ServerV4, EchoDropV4
		if u.src.Is6() {
			server, echo = ServerV6, EchoDropV6
		}
		cases := []struct {
			kind, target string
			args         []string
			ok           bool
		}{
			{"tcp", ap(server, PortOpen), nil, true},
			{"icmp", server.String(), nil, true},
			{"udp", ap(server, PortUDPEcho), []string{"--payload-hex", "6869"}, true},
			{"tcp", ap(server, PortDrop), []string{"--timeout", "700ms"}, false},
			{"icmp", echo.String(), []string{"--timeout", "700ms"}, false},
		}
		for _, c := range cases {
			t.Run(name+"/"+c.kind+"/"+c.target, func(t *testing.T) {
				t.Parallel()
				args := append([]string{"--retries", "0", "--source", u.src.String()}, c.args...)
				vs, _ := probeKind(t, l, c.kind, nil, append(args, c.target)...)
				if len(vs) != 1 {
					t.Fatalf("want 1 verdict, got %d", len(vs))
				}
				v := vs[0]
				t.Logf("%s → %s [%s] route %v: %s", c.target, v["reason"], v["timing_source"], v["route"], v["detail"])
				if (v["reason"] == string(verdict.OK)) != c.ok {
					t.Fatalf("reason %v, want ok=%v", v["reason"], c.ok)
				}
				if v["timing_source"] != verdict.SourceWire {
					t.Errorf("timing_source %v, want wire: TC must watch the link the source's route leaves by", v["timing_source"])
				}
				if c.ok {
					return
				}
				rt, _ := v["route"].(map[string]any)
				if rt["dev"] != u.dev || rt["gateway"] != u.gw.String() {
					t.Errorf("route %v, want dev %s gateway %s", rt, u.dev, u.gw)
				}
			})
		}
	}
}

// TestMultiUplink: several --interface give one verdict per interface, each saying which,
// each leaving by its own link (its local address is that link's) and watched there; and
// --mark chooses the uplink by policy routing (ip rule fwmark), which a failure's route
// evidence follows.
func TestMultiUplink(t *testing.T) {
	l := requireLab(t)
	if err := l.SecondUplink(); err != nil {
		t.Fatal(err)
	}
	for _, fam := range []struct {
		server, main, second netip.Addr
		echo                 netip.Addr
	}{{ServerV4, ClientV4, UplinkClientV4, EchoDropV4}, {ServerV6, ClientV6, UplinkClientV6, EchoDropV6}} {
		for _, c := range []struct{ kind, target string }{
			{"tcp", ap(fam.server, PortOpen)}, {"icmp", fam.server.String()}, {"udp", ap(fam.server, PortUDPEcho)},
		} {
			t.Run("interfaces/"+c.kind+"/"+c.target, func(t *testing.T) {
				t.Parallel()
				vs, code := probeKind(t, l, c.kind, nil, "--retries", "0", "--interface", ClientIf, "--interface", UplinkClientIf, c.target)
				if code != 0 || len(vs) != 2 {
					t.Fatalf("exit %d, %d verdicts; want 0 and one per interface: %v", code, len(vs), vs)
				}
				for i, want := range []struct {
					dev string
					src netip.Addr
				}{{ClientIf, fam.main}, {UplinkClientIf, fam.second}} {
					v := vs[i]
					t.Logf("%s via %v: %s [%s] local %v", c.target, v["interface"], v["reason"], v["timing_source"], v["local"])
					if v["interface"] != want.dev || v["timing_source"] != verdict.SourceWire {
						t.Errorf("verdict %d: interface %v timing %v, want %s, wire", i, v["interface"], v["timing_source"], want.dev)
					}
					if loc, _ := v["local"].(string); c.kind != "icmp" && !strings.HasPrefix(loc, want.src.String()) && !strings.HasPrefix(loc, "["+want.src.String()+"]") {
						t.Errorf("verdict %d: local %q, want an address of %s (%s)", i, loc, want.dev, want.src)
					}
				}
			})
		}
		t.Run("mark/"+fam.server.String(), func(t *testing.T) {
			t.Parallel()
			mark := fmt.Sprintf("%#x", UplinkMark)
			vs, _ := probeKind(t, l, "tcp", nil, "--retries", "0", "--mark", mark, ap(fam.server, PortOpen))
			if len(vs) != 1 || vs[0]["reason"] != "ok" {
				t.Fatalf("want one ok verdict, got %v", vs)
			}
			if loc, _ := vs[0]["local"].(string); !strings.Contains(loc, fam.second.String()) {
				t.Errorf("local %q: the mark's table must choose the second uplink (%s)", loc, fam.second)
			}
			vs, _ = probeKind(t, l, "icmp", nil, "--retries", "0", "--timeout", "500ms", "--mark", mark, fam.echo.String())
			if len(vs) != 1 {
				t.Fatalf("want one verdict, got %v", vs)
			}
			rt, _ := vs[0]["route"].(map[string]any)
			if rt["dev"] != UplinkClientIf {
				t.Errorf("route %v: the failure's route must be the marked one (dev %s)", rt, UplinkClientIf)
			}
		})
	}
}

// TestDaemonEchoRouteChange: a daemon keeps an echo destination registered with TC between
// ticks. When the route to it changes to another uplink (another interface, another local
// address), the next echoes must be watched there — the kept registration revalidated, not
// reused blindly — and stay wire-timed.
func TestDaemonEchoRouteChange(t *testing.T) {
	l := requireLab(t)
	if err := l.SecondUplink(); err != nil {
		t.Fatal(err)
	}
	const target = "203.0.113.172" // routed by the main uplink until the test adds a route
	d := startReady(t, l, smallConfig("  - {name: moved, kind: icmp, targets: ["+target+"]}\n"), DaemonOptions{})
	wireOK := func(since time.Time, n int) {
		t.Helper()
		vs, ok := waitFor(time.Duration(n+3)*time.Second, d.exited, func() ([]Line, bool) {
			var vs []Line
			for _, ln := range d.Lines() {
				if ln.V != nil && !ln.At.Before(since) {
					vs = append(vs, ln)
				}
			}
			return vs[:min(n, len(vs))], len(vs) >= n
		})
		if !ok {
			t.Fatalf("%d of %d verdicts since %v; stderr:\n%s", len(vs), n, since.Format(time.StampMilli), d.Stderr())
		}
		for _, ln := range vs {
			if ln.V["reason"] != string(verdict.OK) || ln.V["timing_source"] != verdict.SourceWire {
				t.Errorf("verdict %s: want ok and wire-timed", ln.Text)
			}
		}
	}
	wireOK(time.Time{}, 2) // the second one's echo uses the kept registration
	if err := l.Client.Run("ip", "route", "add", target+"/32", "via", UplinkRouterV4.String(), "dev", UplinkClientIf); err != nil {
		t.Fatal(err)
	}
	defer l.Client.Run("ip", "route", "del", target+"/32")
	// The route cache hears the change at once; a verdict whose attempt began before the
	// change may still have used the old way: skip one interval.
	wireOK(time.Now().Add(1100*time.Millisecond), 3)
	// The router counts the target's echo requests by the link they came in by (a link's
	// own counters also count its neighbor discovery).
	echoesBy := func(routerIf string) *routerCounter {
		return newRouterCounter(t, l, "reachd_moved_"+routerIf, fmt.Sprintf("iifname %q ip daddr %s icmp type echo-request", routerIf, target))
	}
	byMain, byUplink := echoesBy(RouterClientIf), echoesBy(UplinkRouterIf)
	wireOK(time.Now(), 2)
	if n0, n1 := byMain.packets(t), byUplink.packets(t); n1 < 2 || n0 != 0 {
		t.Errorf("echo requests by %s: %d, by %s: %d; want them all by the new route's %s", ClientIf, n0, UplinkClientIf, n1, UplinkClientIf)
	}
}

package lab

import (
	"net/netip"
	"testing"

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

package lab

import (
	"fmt"
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"

	"reachd/pkg/verdict"
)

// TestUDPIntervalShorterThanRTT: ten datagrams 5 ms apart to a server that answers each
// after 20 ms. Every reply comes after later datagrams have left, and must be matched to
// the datagram it answers: 10 received, each round trip 20 ms (not 15, one interval short).
func TestUDPIntervalShorterThanRTT(t *testing.T) {
	l := requireLab(t)
	for _, mode := range []string{"ebpf", "no-ebpf"} {
		for _, c := range []struct{ name, target, payload string }{
			{"text v4", ap(ServerV4, PortUDPDelay), ""},
			{"dns v6", ap(ServerV6, PortUDPDelay), "dns"}, // matched by DNS id
			{"text v6", ap(ServerV6, PortUDPDelay), ""},
		} {
			t.Run(mode+"/"+c.name, func(t *testing.T) {
				t.Parallel()
				args := []string{"--retries", "0", "--count", "10", "--interval", "5ms", "--timeout", "1s"}
				if c.payload != "" {
					args = append(args, "--payload", c.payload)
				}
				if mode == "no-ebpf" {
					args = append(args, "--no-ebpf")
				}
				vs, _ := probeKind(t, l, "udp", nil, append(args, c.target)...)
				if len(vs) != 1 {
					t.Fatalf("want 1 verdict, got %d", len(vs))
				}
				v := vs[0]
				st := stats(t, v)
				t.Logf("%s → %s [%s]: %s; stats %v", c.target, v["reason"], v["timing_source"], v["detail"], st)
				if v["reason"] != string(verdict.OK) || numOr0(st, "received") != 10 {
					t.Fatalf("reason %v received %v, want ok and 10", v["reason"], st["received"])
				}
				// Within 1 ms of 20 ms, beyond whatever the server itself was late (a reply
				// matched to the wrong datagram is off by the 5 ms interval).
				want := float64(UDPDelay.Milliseconds())
				local, _ := netip.ParseAddrPort(fmt.Sprint(v["local"]))
				late := float64(l.UDPDelayLate(local)) / float64(time.Millisecond)
				if got := numOr0(st, "min_ms"); math.Abs(got-want) > 1 {
					t.Errorf("min_ms %.3f, want within 1 ms of %.0f", got, want)
				}
				if got := numOr0(st, "max_ms"); got < want-1 || got > want+1+late {
					t.Errorf("max_ms %.3f, want within 1 ms of %.0f (+%.3f ms the server was late)", got, want, late)
				}
				if numOr0(st, "late")+numOr0(st, "duplicates") != 0 {
					t.Errorf("late or duplicate replies counted: %v", st)
				}
			})
		}
	}
}

// TestUDPDefaultPayload: with no payload given, the request of the port's protocol goes
// (DNS on 53, which ignores an empty datagram), else a short text; udp.payload says which.
func TestUDPDefaultPayload(t *testing.T) {
	l := requireLab(t)
	for _, c := range []struct {
		target, payload, detail string
	}{
		{ap(ServerV4, PortDNS), "dns", "DNS response NOERROR with 1 answer"},
		{ap(ServerV6, PortDNS), "dns", "DNS response NOERROR"},
		{ap(ServerV4, PortUDPEcho), "text", "7-byte reply"},
	} {
		t.Run(c.target, func(t *testing.T) {
			t.Parallel()
			vs, _ := probeKind(t, l, "udp", nil, "--retries", "0", "--timeout", "1s", c.target)
			if len(vs) != 1 {
				t.Fatalf("want 1 verdict, got %d", len(vs))
			}
			v := vs[0]
			t.Logf("%s → %s: %s; udp %v", c.target, v["reason"], v["detail"], v["udp"])
			if v["reason"] != string(verdict.OK) {
				t.Fatalf("reason %v, want ok", v["reason"])
			}
			u, _ := v["udp"].(map[string]any)
			if u["payload"] != c.payload || !strings.Contains(fmt.Sprint(v["detail"]), c.detail) {
				t.Errorf("udp.payload %v detail %v, want %s and %q", u["payload"], v["detail"], c.payload, c.detail)
			}
		})
	}
}

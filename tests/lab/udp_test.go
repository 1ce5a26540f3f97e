package lab

import (
	"net/netip"
	"strings"
	"testing"

	"reachd/pkg/verdict"
)

func TestUDPReasons(t *testing.T) {
	l := requireLab(t)
	short := []string{"--timeout", "700ms"}
	cases := []struct {
		name, target string
		args         []string
		reason       verdict.Reason
		from         netip.Addr
		detail       string // a substring the detail must have
	}{
		{"echo v4", ap(ServerV4, PortUDPEcho), []string{"--payload-hex", "7265616368640a"}, verdict.OK, netip.Addr{}, "7-byte reply"},
		{"echo v6", ap(ServerV6, PortUDPEcho), []string{"--payload-hex", "7265616368640a"}, verdict.OK, netip.Addr{}, "7-byte reply"},
		{"echo --expect", ap(ServerV4, PortUDPEcho), []string{"--payload-hex", "7265616368640a", "--expect", `^reachd\s*$`}, verdict.OK, netip.Addr{}, ""},
		{"echo --expect-hex", ap(ServerV6, PortUDPEcho), []string{"--payload-hex", "7265616368640a", "--expect-hex", "6864"}, verdict.OK, netip.Addr{}, ""},
		{"echo --expect mismatch", ap(ServerV4, PortUDPEcho), []string{"--payload-hex", "6f6b", "--expect", "^pong"}, verdict.BodyMismatch, netip.Addr{}, `"ok"`},
		{"closed v4", ap(ServerV4, PortUDPClosed), nil, verdict.PortUnreachable, ServerV4, ""},
		{"closed v6", ap(ServerV6, PortUDPClosed), nil, verdict.PortUnreachable, ServerV6, ""},
		{"--expect-closed", ap(ServerV4, PortUDPClosed), []string{"--expect-closed"}, verdict.OK, ServerV4, "port closed"},
		{"--expect-closed but open", ap(ServerV6, PortUDPEcho), []string{"--expect-closed"}, verdict.ProtocolMismatch, netip.Addr{}, "answered"},
		{"dropped v4", ap(ServerV4, PortUDPDrop), short, verdict.OpenFiltered, netip.Addr{}, "never taken for closed"},
		{"dropped v6", ap(ServerV6, PortUDPDrop), short, verdict.OpenFiltered, netip.Addr{}, ""},
		{"router reject v4", ap(AdminV4, PortDNS), nil, verdict.AdminProhibited, RouterClientV4, ""},
		{"router reject v6", ap(AdminV6, PortDNS), nil, verdict.AdminProhibited, RouterClientV6, ""},
		{"dns v4", ap(ServerV4, PortDNS), []string{"--payload", "dns"}, verdict.OK, netip.Addr{}, "DNS response NOERROR with 1 answer"},
		{"dns v6", ap(ServerV6, PortDNS), []string{"--payload", "dns"}, verdict.OK, netip.Addr{}, "DNS response NOERROR"},
		// The echo server sends the NTP request back: mode 3, not a server's answer.
		{"ntp to an echo server", ap(ServerV4, PortUDPEcho), append([]string{"--payload", "ntp"}, short...), verdict.ProtocolMismatch, netip.Addr{}, "mode 3"},
		{"count 5", ap(ServerV6, PortUDPEcho), []string{"--count", "5", "--interval", "20ms"}, verdict.OK, netip.Addr{}, "5/5 datagrams"},
	}
	for _, mode := range []string{"ebpf", "no-ebpf"} {
		for _, c := range cases {
			t.Run(mode+"/"+c.name, func(t *testing.T) {
				t.Parallel()
				args := withErrorSource(t, l, c.from, append([]string{"--retries", "0"}, c.args...))
				if mode == "no-ebpf" {
					args = append(args, "--no-ebpf")
				}
				vs, code := probeKind(t, l, "udp", nil, append(args, c.target)...)
				if len(vs) != 1 {
					t.Fatalf("want 1 verdict, got %d (exit %d)", len(vs), code)
				}
				v := vs[0]
				t.Logf("%s → %s [%s] rtt %v: %s", c.target, v["reason"], v["timing_source"], v["rtt_ms"], v["detail"])
				if verdict.Reason(v["reason"].(string)) != c.reason {
					t.Fatalf("reason %v, want %s: %v", v["reason"], c.reason, v["detail"])
				}
				if wantCode := map[bool]int{true: 0, false: 1}[c.reason == verdict.OK]; code != wantCode {
					t.Errorf("exit %d, want %d", code, wantCode)
				}
				if c.from.IsValid() && icmpFrom(v) != c.from.String() {
					t.Errorf("ICMP from %q, want %s", icmpFrom(v), c.from)
				}
				if !strings.Contains(v["detail"].(string), c.detail) {
					t.Errorf("detail lacks %q", c.detail)
				}
				st := stats(t, v)
				replied := c.reason == verdict.OK && !c.from.IsValid() || c.reason == verdict.BodyMismatch || c.name == "--expect-closed but open"
				if replied != (v["rtt_ms"] != nil) || replied != (numOr0(st, "received") > 0) {
					t.Errorf("replied=%v but rtt %v stats %v", replied, v["rtt_ms"], st)
				}
				// Replies and ICMP errors are timed at TC with eBPF, by kernel timestamps without.
				if replied || c.from.IsValid() {
					want := map[string]string{"ebpf": verdict.SourceWire, "no-ebpf": verdict.SourceKernel}[mode]
					if v["timing_source"] != want {
						t.Errorf("timing_source %v, want %s", v["timing_source"], want)
					}
				}
			})
		}
	}
}

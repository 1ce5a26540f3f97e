package lab

import (
	"math"
	"net/netip"
	"testing"

	"reachd/pkg/verdict"
)

func num(m map[string]any, k string) (float64, bool) {
	f, ok := m[k].(float64)
	return f, ok
}

// TestWireTiming checks that with eBPF loaded the verdicts are timed at the wire and carry
// what TC saw: the SYNs, the answer and the router that sent an ICMP error.
func TestWireTiming(t *testing.T) {
	l := requireLab(t)
	cases := []struct {
		name, target string
		reason       verdict.Reason
		answer       string // the wire field that must hold the answer's instant
		retransmits  int
		from         netip.Addr
	}{
		{"open v4", ap(ServerV4, PortOpen), verdict.OK, "synack", 0, netip.Addr{}},
		{"open v6", ap(ServerV6, PortOpen), verdict.OK, "synack", 0, netip.Addr{}},
		{"link-local", "[fe80::1%" + ClientIf + "]:8080", verdict.OK, "synack", 0, netip.Addr{}},
		{"refused v4", ap(ServerV4, PortClosed), verdict.Refused, "rst", 0, netip.Addr{}},
		{"refused v6", ap(ServerV6, PortClosed), verdict.Refused, "rst", 0, netip.Addr{}},
		{"router reset v4", ap(ServerV4, PortReset), verdict.Refused, "rst", 0, netip.Addr{}},
		{"admin v4", ap(AdminV4, PortOpen), verdict.AdminProhibited, "icmp_at", 0, RouterClientV4},
		{"admin v6", ap(AdminV6, PortOpen), verdict.AdminProhibited, "icmp_at", 0, RouterClientV6},
		{"first SYN dropped v4", ap(ServerV4, PortFirstSYNDrop), verdict.OK, "synack", 1, netip.Addr{}},
		{"first SYN dropped v6", ap(ServerV6, PortFirstSYNDrop), verdict.OK, "synack", 1, netip.Addr{}},
		// 1.9 s: the SYN and its retransmission 1 s later (the initial RTO), never the next
		// one (2 s after the SYN); the SYN may leave up to 0.9 s after the attempt begins.
		{"drop v4", ap(ServerV4, PortDrop), verdict.Timeout, "", 1, netip.Addr{}},
		{"drop v6", ap(ServerV6, PortDrop), verdict.Timeout, "", 1, netip.Addr{}},
	}
	// TCX, legacy cls_bpf filters (what kernels before 6.6 get), and no TC at all, where the
	// TCP tracepoints time the handshake in the kernel.
	modes := []struct{ tc, source string }{{"tcx", verdict.SourceWire}, {"legacy", verdict.SourceWire}, {"off", verdict.SourceKernel}}
	for _, m := range modes {
		for _, c := range cases {
			t.Run(m.tc+"/"+c.name, func(t *testing.T) {
				t.Parallel()
				timeout := "2500ms"
				if c.reason == verdict.Timeout {
					timeout = "1900ms"
				}
				args := withErrorSource(t, l, c.from, []string{"--retries", "0", "--timeout", timeout})
				vs, _ := probeEnv(t, l, []string{"REACHD_TC=" + m.tc}, append(args, c.target)...)
				if len(vs) != 1 {
					t.Fatalf("want 1 verdict, got %d", len(vs))
				}
				v := vs[0]
				if v["reason"] != string(c.reason) {
					t.Fatalf("reason %v, want %s: %v", v["reason"], c.reason, v["detail"])
				}
				if v["timing_source"] != m.source {
					t.Fatalf("timing_source %v, want %s: %v", v["timing_source"], m.source, v["detail"])
				}
				w, _ := v["wire"].(map[string]any)
				synTx, ok := num(w, "syn_tx")
				if !ok {
					t.Fatalf("no wire.syn_tx: %v", w)
				}
				if n, _ := num(w, "syn_retransmits"); int(n) != c.retransmits {
					t.Errorf("syn_retransmits %v, want %d", w["syn_retransmits"], c.retransmits)
				}
				retx, _ := w["syn_retransmit_tx"].([]any)
				if len(retx) != c.retransmits {
					t.Errorf("syn_retransmit_tx %v, want %d instants", retx, c.retransmits)
				}
				lastSYN := synTx
				for _, r := range retx {
					at := r.(float64)
					// Linux retransmits an unanswered SYN after its initial RTO of 1 s.
					if at-lastSYN < 900 || at-lastSYN > 1500 {
						t.Errorf("retransmission %.3f ms after the SYN before it, want about 1000 ms", at-lastSYN)
					}
					lastSYN = at
				}
				rtt, hasRTT := num(v, "rtt_ms")
				if c.answer == "" {
					if hasRTT {
						t.Errorf("rtt_ms %v for an unanswered probe", rtt)
					}
					t.Logf("%s: %v", c.target, v["detail"])
					return
				}
				at, ok := num(w, c.answer)
				if !ok {
					t.Fatalf("no wire.%s: %v", c.answer, w)
				}
				if at < lastSYN {
					t.Errorf("wire.%s %.3f before the last SYN %.3f", c.answer, at, lastSYN)
				}
				switch {
				case c.answer == "icmp_at":
					if hasRTT {
						t.Errorf("rtt_ms %v for an ICMP error: the target did not answer", rtt)
					}
					if icmpFrom(v) != c.from.String() {
						t.Errorf("ICMP from %q, want %s", icmpFrom(v), c.from)
					}
				case !hasRTT:
					t.Errorf("no rtt_ms for an answered probe")
				default:
					// rtt_ms is the answer minus the last SYN; both are rounded to the µs.
					if math.Abs(rtt-(at-lastSYN)) > 0.002 {
						t.Errorf("rtt_ms %.3f, want %s − last SYN = %.3f", rtt, c.answer, at-lastSYN)
					}
					// timings_ms.connect is the whole phase, retransmission waits included.
					tm, _ := v["timings_ms"].(map[string]any)
					if conn, _ := num(tm, "connect"); math.Abs(conn-(at-synTx)) > 0.002 {
						t.Errorf("timings_ms.connect %.3f, want %s − first SYN = %.3f", conn, c.answer, at-synTx)
					}
					if rtt >= 5 {
						t.Errorf("rtt_ms %.3f, want below 5 ms in the lab", rtt)
					}
				}
				t.Logf("%s → %s rtt=%v syn_tx=%.3f retx=%v %s=%.3f: %v", c.target, v["reason"], v["rtt_ms"], synTx, retx, c.answer, at, v["detail"])
			})
		}
	}
}

package lab

import (
	"encoding/hex"
	"strings"
	"testing"

	"reachd/pkg/verdict"
)

// TestFragmentedUDP: a 3000-byte datagram leaves in fragments and its echo comes back in
// fragments (MTU 1500); TC sees each by its first fragment, which carries the ports.
func TestFragmentedUDP(t *testing.T) {
	l := requireLab(t)
	payload := hex.EncodeToString([]byte(strings.Repeat("reachd fragments ", 3000/17+1)[:3000]))
	for _, target := range []string{ap(ServerV4, PortUDPEcho), ap(ServerV6, PortUDPEcho)} {
		t.Run(target, func(t *testing.T) {
			t.Parallel()
			vs, _ := probeKind(t, l, "udp", nil, "--retries", "0", "--payload-hex", payload, target)
			if len(vs) != 1 {
				t.Fatalf("want 1 verdict, got %d", len(vs))
			}
			v := vs[0]
			t.Logf("%s → %s [%s]: %s", target, v["reason"], v["timing_source"], v["detail"])
			if v["reason"] != string(verdict.OK) || v["timing_source"] != verdict.SourceWire {
				t.Errorf("reason %v timing_source %v, want ok and wire", v["reason"], v["timing_source"])
			}
		})
	}
}

package lab

import (
	"testing"

	"reachd/pkg/verdict"
)

// TestEchoConcurrentErrors: four attempts at once to one destination share its flow, and
// each of their 20 echoes draws an ICMP error from the router. Every attempt must get its
// own errors' events (they carry the quoted echo's sequence), none dropped: each verdict is
// wire-timed.
func TestEchoConcurrentErrors(t *testing.T) {
	l := requireLab(t)
	dst := ProhibV6.Addr().String()
	vs, _ := probeKind(t, l, "icmp", nil, "--retries", "0", "--count", "20", "--interval", "10ms", "--timeout", "1s", dst, dst, dst, dst)
	if len(vs) != 4 {
		t.Fatalf("want 4 verdicts, got %d", len(vs))
	}
	for i, v := range vs {
		w, _ := v["wire"].(map[string]any)
		t.Logf("%d: %s [%s] icmp_at %v: %s", i, v["reason"], v["timing_source"], w["icmp_at"], v["detail"])
		if v["reason"] != string(verdict.AdminProhibited) || v["timing_source"] != verdict.SourceWire || w["icmp_at"] == nil {
			t.Errorf("attempt %d: reason %v timing_source %v icmp_at %v, want admin_prohibited, wire and an instant",
				i, v["reason"], v["timing_source"], w["icmp_at"])
		}
	}
}

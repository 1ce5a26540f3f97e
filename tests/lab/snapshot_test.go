package lab

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"reachd/pkg/verdict"
)

// Ports on the snapshot tests' gateway: one whose SYNs it drops, one it serves but whose
// SYNs the host does not track (its SYN-ACKs are then INVALID there, and dropped).
const (
	portSnapDrop    = 7778
	portSnapNoTrack = 7777
)

// TestFailureSnapshot: a failed verdict carries the host's state toward the target (its
// link, addresses, the next hop's neighbor entry, the flow's conntrack entry), every field
// as docs/verdict.md has it, and detail names conntrack when the flow died there: an entry
// that never saw a reply, and SYN-ACKs found INVALID and dropped by a ct state invalid rule
// (a notrack rule for the SYNs only: an asymmetric firewall).
func TestFailureSnapshot(t *testing.T) {
	l := requireLab(t)
	host, gw, err := l.GatewayPair()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Serve(gw, fmt.Sprintf("[::]:%d", portSnapNoTrack)); err != nil {
		t.Fatal(err)
	}
	if err := gw.Nft(fmt.Sprintf("table inet snap { chain in { type filter hook input priority 0; tcp dport %d drop; }\n}\n", portSnapDrop)); err != nil {
		t.Fatal(err)
	}
	if err := host.Nft(fmt.Sprintf(`table inet snap {
  chain raw_out { type filter hook output priority raw; tcp dport %d notrack; }
  chain in { type filter hook input priority 0; ct state invalid drop; }
}
`, portSnapNoTrack)); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, target, detail, state string
	}{
		{"no reply v4", ap(ProfileGwV4, portSnapDrop), "conntrack saw no reply for the flow", "SYN_SENT"},
		{"no reply v6", fmt.Sprintf("[fe80::1%%h0]:%d", portSnapDrop), "conntrack saw no reply for the flow", "SYN_SENT"},
		{"invalid", ap(ProfileGwV4, portSnapNoTrack), "INVALID", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			cmd := host.Command(reachdBin, "probe", "tcp", "--json", "--retries", "0", "--timeout", "1s", c.target)
			cmd.Env = os.Environ()
			vs, code := runVerdicts(t, cmd)
			if len(vs) != 1 {
				t.Fatalf("want 1 verdict, got %d (exit %d)", len(vs), code)
			}
			v := vs[0]
			t.Logf("→ %s: %s\ncontext %v", v["reason"], v["detail"], v["context"])
			if v["reason"] != string(verdict.Timeout) || !strings.Contains(v["detail"].(string), c.detail) {
				t.Fatalf("got %v %q, want timeout ~%q", v["reason"], v["detail"], c.detail)
			}
			cx, _ := v["context"].(map[string]any)
			link, _ := cx["link"].(map[string]any)
			if link["name"] != "h0" || link["oper_state"] != "up" || link["carrier"] != true || link["mtu"] != float64(1500) {
				t.Errorf("link %v, want h0 up with carrier, MTU 1500", link)
			}
			if addrs := fmt.Sprint(cx["addresses"]); !strings.Contains(addrs, ProfileHostV4.String()+"/29") || !strings.Contains(addrs, "fe80::2/64") {
				t.Errorf("addresses %s", addrs)
			}
			nb, _ := cx["neighbor"].(map[string]any)
			if nb["state"] == "NONE" || nb["state"] == "FAILED" || nb["lladdr"] == nil {
				t.Errorf("neighbor %v, want the gateway's resolved entry", nb)
			}
			ct, _ := cx["conntrack"].(map[string]any)
			entry, _ := ct["entry"].(map[string]any)
			switch {
			case c.state != "" && (entry["state"] != c.state || entry["seen_reply"] != false || entry["proto"] != "tcp"):
				t.Errorf("conntrack entry %v, want tcp %s without a reply", entry, c.state)
			case c.state == "" && (entry != nil || ct["invalid"] == float64(0)):
				t.Errorf("conntrack %v, want no entry (notrack) and INVALID packets counted", ct)
			}
		})
	}
}

package lab

import (
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"reachd/pkg/netctx"
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
			if nb["state"] == "NONE" || nb["state"] == "FAILED" || nb["lladdr"] == nil || nb["updated_ms"] == nil || nb["confirmed_ms"] == nil {
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

// TestSnapshotRateCap: a daemon with 1,000 targets failing at once (refused, on the server's
// AnyIP block) takes whole snapshots at no more than the cap per interface (a burst of 20,
// then 10 a second); the others say they were left out. The whole ones are its netlink load.
func TestSnapshotRateCap(t *testing.T) {
	l := requireLab(t)
	var targets []string
	for i := range 1000 {
		targets = append(targets, ap(netip.MustParseAddr(fmt.Sprintf("2001:db8:a::9:%x", i+1)), PortClosed))
	}
	cfg := fmt.Sprintf("defaults: {interval: 4s, timeout: 500ms, retries: 0}\nmetrics: {listen: \"\"}\nlog: {verdicts: all, journald: off}\nprobes:\n  - {name: closed, kind: tcp, targets: %s}\n", yamlList(targets))
	d := startReady(t, l, cfg, DaemonOptions{})
	var first, last time.Time
	whole, limited := 0, 0
	seen := map[string]bool{}
	deadline := time.Now().Add(15 * time.Second)
	for len(seen) < len(targets) && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
		for _, ln := range d.Lines() {
			tg, _ := ln.V["target"].(string)
			if ln.V == nil || ln.V["probe"] != "closed" || seen[tg] {
				continue
			}
			seen[tg] = true
			if first.IsZero() || ln.At.Before(first) {
				first = ln.At
			}
			if ln.At.After(last) {
				last = ln.At
			}
			cx, _ := ln.V["context"].(map[string]any)
			switch {
			case cx["limited"] != nil:
				limited++
			case cx["link"] != nil:
				whole++
			default:
				t.Fatalf("a refused verdict without a snapshot: %s", ln.Text)
			}
		}
	}
	d.Kill()
	span := last.Sub(first).Seconds()
	capped := netctx.SnapshotBurst + int(span*netctx.SnapshotRate) + 2
	t.Logf("%d verdicts over %.1f s: %d whole snapshots (cap %d), %d left out", len(seen), span, whole, capped, limited)
	if len(seen) < len(targets) {
		t.Fatalf("only %d of %d targets gave a verdict", len(seen), len(targets))
	}
	if whole > capped || limited == 0 || whole < netctx.SnapshotBurst {
		t.Errorf("%d whole snapshots in %.1f s, want between %d and %d (the burst, then %d a second), and some left out",
			whole, span, netctx.SnapshotBurst, capped, netctx.SnapshotRate)
	}
}

package lab

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"reachd/pkg/netctx"
)

// TestBenchSnapshot is `make bench`: what a failure snapshot costs, beside the route lookup
// a failed verdict made before it (route only): wall time per call, read in the gateway
// pair's host namespace (conntrack on, the flow's entry there), at the snapshot's own rate
// cap (10 a second). A snapshot reads netlink only: the host's link counts the packets it
// sent meanwhile, which must stay 0.
func TestBenchSnapshot(t *testing.T) {
	l := benchOnly(t)
	host, gw, err := l.GatewayPair()
	if err != nil {
		t.Fatal(err)
	}
	if err := gw.Nft(fmt.Sprintf("table inet snap { chain in { type filter hook input priority 0; tcp dport %d drop; }\n}\n", portSnapDrop)); err != nil {
		t.Fatal(err)
	}
	// Conntrack on in the host, and a count of the IPv4 packets it sends (its IPv6
	// link-local chatter, neighbor discovery and MLD, is the kernel's own).
	if err := host.Nft("table inet snap { counter sent { }\n chain out { type filter hook output priority 0; ct state new counter; meta nfproto ipv4 counter name sent; }\n}\n"); err != nil {
		t.Fatal(err)
	}
	// A flow for the snapshot to find: one unanswered SYN.
	cmd := host.Command(reachdBin, "probe", "tcp", "--json", "--retries", "0", "--timeout", "300ms", ap(ProfileGwV4, portSnapDrop))
	out, _ := cmd.Output()
	var local netip.AddrPort
	if i := strings.Index(string(out), `"local":"`); i >= 0 {
		local, _ = netip.ParseAddrPort(strings.SplitN(string(out[i+9:]), `"`, 2)[0])
	}
	const n = 200
	var route, snap []time.Duration
	var sentBefore, sentAfter uint64
	err = host.Do(func() error {
		netctx.Release() // the pooled sockets are opened in this namespace, and closed after
		defer netctx.Release()
		sentBefore = sentCount(t, host)
		q := netctx.RouteQuery{Dst: ProfileGwV4}
		for range n {
			t0 := time.Now()
			r, err := netctx.RouteTo(q)
			if err != nil {
				return err
			}
			t1 := time.Now()
			c := netctx.Snapshot(netctx.SnapshotQuery{Route: r, Target: ProfileGwV4,
				Flow: netctx.Flow{Proto: 6, Local: local, Remote: netip.AddrPortFrom(ProfileGwV4, portSnapDrop)}})
			t2 := time.Now()
			if c == nil || c.Limited != "" || c.Link == nil || c.Conntrack == nil || c.Conntrack.Entry == nil {
				return fmt.Errorf("snapshot not whole: %+v", c)
			}
			route, snap = append(route, t1.Sub(t0)), append(snap, t2.Sub(t1))
			time.Sleep(time.Second / netctx.SnapshotRate)
		}
		sentAfter = sentCount(t, host)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	q := func(d []time.Duration, p float64) float64 {
		slices.Sort(d)
		return float64(d[min(len(d)-1, int(p*float64(len(d))))]) / float64(time.Microsecond)
	}
	fmt.Printf("BENCH snapshot route-only  : %d lookups, p50 %6.1f µs  p99 %6.1f µs\n", n, q(route, .5), q(route, .99))
	fmt.Printf("BENCH snapshot full        : %d snapshots, p50 %6.1f µs  p99 %6.1f µs (link, addresses, neighbor, conntrack entry and stats)\n", n, q(snap, .5), q(snap, .99))
	fmt.Printf("BENCH snapshot ratio full/route-only p50: %.1f; packets sent by the snapshots: %d\n", q(snap, .5)/q(route, .5), sentAfter-sentBefore)
	if sentAfter != sentBefore {
		t.Errorf("the snapshots sent %d packets, want none", sentAfter-sentBefore)
	}
}

// sentCount reads the host's count of IPv4 packets it sent.
func sentCount(t *testing.T, host *NS) uint64 {
	out, err := host.Command("nft", "list", "counter", "inet", "snap", "sent").Output()
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(out))
	for i, w := range f {
		if w == "packets" && i+1 < len(f) {
			n, _ := strconv.ParseUint(f[i+1], 10, 64)
			return n
		}
	}
	t.Fatalf("no packet count in %q", out)
	return 0
}

// TestBenchTrace is `make bench`: what a path trace costs a failed probe, beside the probe
// without one, on the four-router chain with the flow dropped at hop 3: wall time and the
// packets each sends (counted on the client).
func TestBenchTrace(t *testing.T) {
	l := benchOnly(t)
	c, err := l.Chain(4)
	if err != nil {
		t.Fatal(err)
	}
	const port = 8301
	if err := c.Routers[2].Nft(fmt.Sprintf("table inet trace {\n chain pre { type filter hook prerouting priority -300; tcp dport %d drop; }\n}\n", port)); err != nil {
		t.Fatal(err)
	}
	if err := c.Client.Nft("table inet snap { counter sent { }\n chain out { type filter hook output priority 0; tcp dport 8301 counter name sent; }\n}\n"); err != nil {
		t.Fatal(err)
	}
	target := netip.AddrPortFrom(c.ServerAddr(false), port).String()
	const n = 5
	for _, side := range []struct {
		name string
		args []string
	}{{"without trace", nil}, {"with trace", []string{"--trace"}}} {
		before := sentCount(t, c.Client)
		var walls []time.Duration
		for range n {
			args := append([]string{"probe", "tcp", "--json", "--retries", "0", "--timeout", "500ms"}, side.args...)
			cmd := c.Client.Command(reachdBin, append(args, target)...)
			t0 := time.Now()
			out, _ := cmd.Output()
			walls = append(walls, time.Since(t0))
			if side.args != nil && !strings.Contains(string(out), "lost after hop 2") {
				t.Fatalf("the trace did not end at hop 2: %s", out)
			}
		}
		slices.Sort(walls)
		fmt.Printf("BENCH trace, a flow dropped at hop 3, %-13s: wall p50 %6.0f ms, %.1f packets a probe\n",
			side.name, float64(walls[n/2])/float64(time.Millisecond), float64(sentCount(t, c.Client)-before)/n)
	}
}

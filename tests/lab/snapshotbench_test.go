package lab

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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

// TestBenchSnapshotNetlink is `make bench`: the daemon's netlink load with 1,000 targets
// failing at once (refused, as TestSnapshotRateCap). strace, attached to every thread of
// the daemon for one whole round of the targets, counts the netlink requests it sends by
// message type: the snapshot's (link, addresses, neighbor, conntrack) must stay within what
// the cap allows (a burst of 20 snapshots, then 10 a second, on the one interface), beside
// the route lookup every attempt makes whatever its outcome.
func TestBenchSnapshotNetlink(t *testing.T) {
	l := benchOnly(t)
	if _, err := exec.LookPath("strace"); err != nil {
		t.Fatal("this benchmark counts netlink requests with strace: apt-get install strace")
	}
	var targets []string
	for i := range 1000 {
		targets = append(targets, ap(netip.MustParseAddr(fmt.Sprintf("2001:db8:a::9:%x", i+1)), PortClosed))
	}
	const interval = 10 * time.Second
	cfg := fmt.Sprintf("defaults: {interval: %s, timeout: 500ms, retries: 0}\nmetrics: {listen: \"\"}\nlog: {verdicts: all, journald: off, max_rate: 0}\nprobes:\n  - {name: closed, kind: tcp, targets: %s}\n",
		interval, yamlList(targets))
	d := startReady(t, l, cfg, DaemonOptions{})
	trace := filepath.Join(t.TempDir(), "strace")
	st := exec.Command("strace", "-f", "-qq", "-yy", "-e", "trace=sendto,sendmsg", "-o", trace, "-p", strconv.Itoa(d.cmd.Process.Pid))
	from := time.Now()
	if err := st.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(interval + time.Second)  // a whole round: every target fails once
	_ = st.Process.Signal(os.Interrupt) // detaches
	_ = st.Wait()
	span := time.Since(from).Seconds()
	whole, limited := 0, 0
	for _, ln := range d.Lines() {
		if cx, _ := ln.V["context"].(map[string]any); cx != nil && ln.At.After(from) {
			if cx["limited"] != nil {
				limited++
			} else {
				whole++
			}
		}
	}
	d.Kill()
	b, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	byType := map[string]int{}
	for _, m := range regexp.MustCompile(`nlmsg_type=([A-Za-z0-9_|<x]+)`).FindAllStringSubmatch(string(b), -1) {
		byType[m[1]]++
	}
	// RTM_GETLINK, RTM_GETADDR, RTM_GETNEIGH; ctnetlink's IPCTNL_MSG_CT_GET, _GET_STATS_CPU,
	// _GET_STATS (strace names the first three, numbers the rest in a namespace).
	snapTypes := []string{"RTM_GETLINK", "0x12", "RTM_GETADDR", "0x16", "RTM_GETNEIGH", "0x1e", "0x101", "0x104", "0x105",
		"NFNL_SUBSYS_CTNETLINK<<8|IPCTNL_MSG_CT_GET", "NFNL_SUBSYS_CTNETLINK<<8|IPCTNL_MSG_CT_GET_STATS_CPU", "NFNL_SUBSYS_CTNETLINK<<8|IPCTNL_MSG_CT_GET_STATS"}
	snap, route, other := 0, byType["RTM_GETROUTE"]+byType["0x1a"], 0
	for k, n := range byType {
		switch {
		case slices.Contains(snapTypes, k):
			snap += n
		case k != "RTM_GETROUTE" && k != "0x1a":
			other += n
		}
	}
	perSnap := 0.0
	if whole > 0 {
		perSnap = float64(snap) / float64(whole)
	}
	capped := float64(netctx.SnapshotBurst) + span*netctx.SnapshotRate
	fmt.Printf("BENCH daemon netlink, 1000 targets refused at once, %.1f s (a whole round, under strace): %d verdicts with a whole snapshot, %d left out\n", span, whole, limited)
	fmt.Printf("BENCH daemon netlink   snapshot requests (link, addresses, neighbor, conntrack): %d = %.1f/s, %.1f per snapshot; cap %.0f snapshots in the window = %.0f requests\n",
		snap, float64(snap)/span, perSnap, capped, capped*perSnap)
	fmt.Printf("BENCH daemon netlink   route lookups (an attempt's, not capped; cached while no route, address or link changes): %d = %.1f/s; other requests: %d; by type: %v\n", route, float64(route)/span, other, byType)
	if whole == 0 || limited == 0 {
		t.Fatalf("%d whole snapshots, %d left out: the targets did not fail at once", whole, limited)
	}
	if float64(whole) > capped {
		t.Errorf("%d whole snapshots in %.1f s: over the cap (%.0f)", whole, span, capped)
	}
	// A snapshot asks 6 things: the link, its addresses, the neighbor, the flow's conntrack
	// entry, the table's counters and their per-CPU statistics.
	if float64(snap) > capped*6 {
		t.Errorf("%d snapshot requests: over what the cap allows (%.0f snapshots of 6)", snap, capped)
	}
}

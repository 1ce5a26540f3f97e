package lab

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"reachd/pkg/verdict"
)

func stats(t *testing.T, v map[string]any) map[string]any {
	t.Helper()
	st, ok := v["stats"].(map[string]any)
	if !ok {
		t.Fatalf("no stats in %v", v)
	}
	return st
}

func numOr0(m map[string]any, k string) float64 { f, _ := m[k].(float64); return f }

func TestICMPReasons(t *testing.T) {
	l := requireLab(t)
	ll := func(s string) string { return s + "%" + ClientIf }
	cases := []struct {
		name, target string
		args         []string
		reason       verdict.Reason
		layer        verdict.Layer
		from         netip.Addr
	}{
		{"ok v4", ServerV4.String(), nil, verdict.OK, verdict.LayerOK, netip.Addr{}},
		{"ok v6", ServerV6.String(), nil, verdict.OK, verdict.LayerOK, netip.Addr{}},
		{"drop v4", EchoDropV4.String(), []string{"--timeout", "1s"}, verdict.Timeout, verdict.LayerTransport, netip.Addr{}},
		{"drop v6", EchoDropV6.String(), []string{"--timeout", "1s"}, verdict.Timeout, verdict.LayerTransport, netip.Addr{}},
		{"admin v4", AdminV4.String(), nil, verdict.AdminProhibited, verdict.LayerNetwork, RouterClientV4},
		{"admin v6", AdminV6.String(), nil, verdict.AdminProhibited, verdict.LayerNetwork, RouterClientV6},
		{"host unreachable v4", GhostV4.String(), nil, verdict.HostUnreachable, verdict.LayerNetwork, RouterClientV4},
		{"host unreachable v6", GhostV6.String(), nil, verdict.HostUnreachable, verdict.LayerNetwork, RouterClientV6},
		{"net unreachable v4", UnroutedV4.String(), nil, verdict.NetUnreachable, verdict.LayerNetwork, RouterClientV4},
		{"net unreachable v6", UnroutedV6.String(), nil, verdict.NetUnreachable, verdict.LayerNetwork, RouterClientV6},
		{"no route v4", NoRouteV4.String(), nil, verdict.NoRoute, verdict.LayerLocal, netip.Addr{}},
		{"link-local zone", ll(RouterLL.String()), nil, verdict.OK, verdict.LayerOK, netip.Addr{}},
		{"link-local --interface", RouterLL.String(), []string{"--interface", ClientIf}, verdict.OK, verdict.LayerOK, netip.Addr{}},
		// Nobody owns fe80::99: NDP fails (3 solicitations, 1 s apart) and this host says so.
		{"link-local no neighbor", ll("fe80::99"), []string{"--timeout", "5s"}, verdict.HostUnreachable, verdict.LayerLink, netip.Addr{}},
	}
	for _, mode := range []string{"ebpf", "no-ebpf"} {
		for _, c := range cases {
			t.Run(mode+"/"+c.name, func(t *testing.T) {
				t.Parallel()
				args := withErrorSource(t, l, c.from, append([]string{"--retries", "0"}, c.args...))
				if mode == "no-ebpf" {
					args = append(args, "--no-ebpf")
				}
				vs, code := probeKind(t, l, "icmp", nil, append(args, c.target)...)
				if len(vs) != 1 {
					t.Fatalf("want 1 verdict, got %d (exit %d)", len(vs), code)
				}
				v := vs[0]
				t.Logf("%s → %s/%s [%s] rtt %v: %s", c.target, v["reason"], v["layer"], v["timing_source"], v["rtt_ms"], v["detail"])
				if verdict.Reason(v["reason"].(string)) != c.reason || verdict.Layer(v["layer"].(string)) != c.layer {
					t.Fatalf("reason %v layer %v, want %s %s: %v", v["reason"], v["layer"], c.reason, c.layer, v["detail"])
				}
				if c.from.IsValid() && icmpFrom(v) != c.from.String() {
					t.Errorf("ICMP from %q, want %s", icmpFrom(v), c.from)
				}
				if c.reason == verdict.NoRoute {
					return
				}
				st := stats(t, v)
				if c.reason == verdict.OK {
					if v["rtt_ms"] == nil || numOr0(st, "received") != 1 || numOr0(st, "loss_pct") != 0 {
						t.Errorf("ok without rtt or stats: %v %v", v["rtt_ms"], st)
					}
					w := v["wire"].(map[string]any)
					if ttl := numOr0(w, "reply_ttl"); ttl != 63 && ttl != 64 {
						t.Errorf("reply_ttl %v", w["reply_ttl"])
					}
					want := map[string]string{"ebpf": verdict.SourceWire, "no-ebpf": verdict.SourceKernel}[mode]
					if v["timing_source"] != want {
						t.Errorf("timing_source %v, want %s", v["timing_source"], want)
					}
				} else if v["rtt_ms"] != nil || numOr0(st, "received") != 0 {
					t.Errorf("failure with rtt or replies: %v %v", v["rtt_ms"], st)
				}
			})
		}
	}
}

// TestICMPPartialLoss: --count 20 through a router that drops echo requests two of every
// four in turn. Exactly 10 come back; nothing else sends echo requests to these targets.
func TestICMPPartialLoss(t *testing.T) {
	l := requireLab(t)
	for _, dst := range []netip.Addr{EchoHalfV4, EchoHalfV6} {
		t.Run(dst.String(), func(t *testing.T) {
			t.Parallel()
			vs, _ := probeKind(t, l, "icmp", nil, "--retries", "0", "--count", "20", "--interval", "20ms", "--timeout", "1s", dst.String())
			st := stats(t, vs[0])
			t.Logf("%v: %v", vs[0]["detail"], st)
			if numOr0(st, "count") != 20 || numOr0(st, "received") != 10 || numOr0(st, "loss_pct") != 50 {
				t.Errorf("count %v received %v loss_pct %v, want 20, 10 and 50", st["count"], st["received"], st["loss_pct"])
			}
			if vs[0]["reason"] != "ok" || st["min_ms"] == nil || st["stddev_ms"] == nil {
				t.Errorf("reason %v stats %v", vs[0]["reason"], st)
			}
		})
	}
}

// TestICMPOddReplies: a host that answers each echo with a damaged reply, a reply with
// other data, the reply and a duplicate. Only the reply counts.
func TestICMPOddReplies(t *testing.T) {
	l := requireLab(t)
	for _, mode := range []string{"ebpf", "no-ebpf"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			args := []string{"--retries", "0", "--count", "3", "--interval", "200ms", OddV4.String()}
			if mode == "no-ebpf" {
				args = append(args, "--no-ebpf")
			}
			vs, _ := probeKind(t, l, "icmp", nil, args...)
			st := stats(t, vs[0])
			t.Logf("%v: %v", vs[0]["detail"], st)
			if vs[0]["reason"] != "ok" || numOr0(st, "received") != 3 || numOr0(st, "loss_pct") != 0 {
				t.Errorf("reason %v, stats %v", vs[0]["reason"], st)
			}
			// The right reply leaves the responder 2 ms after the damaged one (1 ms sleeps):
			// a round trip under that was timed on a rejected packet.
			if numOr0(st, "min_ms") < 1.5 {
				t.Errorf("min_ms %v: timed on a damaged or wrong reply", st["min_ms"])
			}
			// Damaged and wrong-data replies come before each answer, so all six are counted;
			// the last duplicate may come after the attempt ended.
			if numOr0(st, "corrupt") != 6 || numOr0(st, "duplicates") < 2 || numOr0(st, "duplicates") > 3 {
				t.Errorf("corrupt %v duplicates %v, want 6 and 2–3", st["corrupt"], st["duplicates"])
			}
		})
	}
}

// TestICMPOthersPings: iputils ping and a second reachd ping the same targets at the same
// time as reachd; each reachd counts only its own replies, and sees the others' as foreign.
func TestICMPOthersPings(t *testing.T) {
	l := requireLab(t)
	if _, err := exec.LookPath("ping"); err != nil {
		t.Fatal("ping (iputils-ping) is not installed; .ci/run installs it")
	}
	targets := []string{ServerV4.String(), ServerV6.String()}
	// The pings run until both reachd runs are over (bounded by -w), so they overlap them
	// however long reachd takes to start.
	for _, dst := range []netip.Addr{ServerV4, ServerV6} {
		defer startPing(t, l, dst)()
	}
	type run struct {
		vs  []map[string]any
		err error
	}
	runs := make([]run, 2)
	var wg sync.WaitGroup
	for i := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cmd := l.Client.Command(reachdBin, append([]string{"probe", "icmp", "--json", "--retries", "0", "--count", "20", "--interval", "20ms"}, targets...)...)
			out, err := cmd.Output()
			runs[i].err = err
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				var m map[string]any
				if json.Unmarshal([]byte(line), &m) == nil {
					runs[i].vs = append(runs[i].vs, m)
				}
			}
		}()
	}
	wg.Wait()
	foreign := 0.0
	for i, r := range runs {
		if r.err != nil || len(r.vs) != 2 {
			t.Fatalf("run %d: %v, %d verdicts", i, r.err, len(r.vs))
		}
		for _, v := range r.vs {
			st := stats(t, v)
			t.Logf("run %d %s: %v", i, v["target"], st)
			if numOr0(st, "received") != 20 || numOr0(st, "duplicates") != 0 || numOr0(st, "corrupt") != 0 || v["reason"] != "ok" {
				t.Errorf("run %d %s: %v %v", i, v["target"], v["reason"], st)
			}
			foreign += numOr0(st, "foreign")
		}
	}
	if foreign == 0 {
		t.Errorf("no foreign replies seen: the runs did not overlap with ping or each other")
	}
}

// startPing starts iputils ping to dst in the client namespace, returns once its first
// reply is in, and returns the function that stops it.
func startPing(t *testing.T, l *Lab, dst netip.Addr) (stop func()) {
	t.Helper()
	cmd := l.Client.Command("ping", map[bool]string{true: "-4", false: "-6"}[dst.Is4()], "-i", "0.01", "-w", "30", dst.String())
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	replied, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		for first := true; sc.Scan(); {
			if first && strings.Contains(sc.Text(), "bytes from") {
				first = false
				close(replied)
			}
		}
	}()
	stop = func() { _ = cmd.Process.Signal(os.Interrupt); <-done; _ = cmd.Wait() }
	select {
	case <-replied:
		return stop
	case <-done:
		stop()
		t.Fatalf("ping %s: no reply", dst)
		return nil
	}
}

// TestICMPUnprivileged runs reachd as nobody: without CAP_NET_RAW and with the
// namespace's ping_group_range closed (the default of a new namespace) it exits 2 naming
// both fixes; once the range admits nobody's group, ping sockets work (timed by the kernel,
// eBPF being unavailable) and ICMP errors still come back with their sender.
func TestICMPUnprivileged(t *testing.T) {
	l := requireLab(t)
	// The binary must be reachable by nobody: a 0755 copy in a 0755 directory.
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "reachd")
	data, err := os.ReadFile(reachdBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	asNobody := func(args ...string) (string, string, int) {
		cmd := l.Client.Command("setpriv", append([]string{"--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--", bin}, args...)...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err := cmd.Run()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return out.String(), errb.String(), code
	}
	out, stderr, code := asNobody("probe", "icmp", ServerV4.String())
	t.Logf("exit %d, stderr: %s", code, stderr)
	if code != 2 || out != "" {
		t.Fatalf("exit %d stdout %q, want 2 and nothing", code, out)
	}
	for _, want := range []string{"CAP_NET_RAW", "ping_group_range", "setcap"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q", want)
		}
	}
	if strings.Contains(stderr, "goroutine") || strings.Contains(stderr, "panic") {
		t.Errorf("stack trace on stderr")
	}

	if err := l.Client.Sysctl("net.ipv4.ping_group_range", "65534 65534"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Client.Sysctl("net.ipv4.ping_group_range", "1 0") })
	out, stderr, code = asNobody("probe", "icmp", "--json", "--retries", "0", ServerV4.String(), ServerV6.String(), AdminV6.String())
	t.Logf("exit %d\n%s%s", code, out, stderr)
	var vs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if err := schema.Validate([]byte(line)); err != nil {
			t.Errorf("%v: %s", err, line)
		}
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) == nil {
			vs = append(vs, m)
		}
	}
	if len(vs) != 3 {
		t.Fatalf("%d verdicts", len(vs))
	}
	for _, v := range vs[:2] {
		if v["reason"] != "ok" || v["timing_source"] != verdict.SourceKernel {
			t.Errorf("%s: %v [%v] %v", v["target"], v["reason"], v["timing_source"], v["detail"])
		}
	}
	if vs[2]["reason"] != string(verdict.AdminProhibited) || icmpFrom(vs[2]) != RouterClientV6.String() {
		t.Errorf("%s: %v from %q", vs[2]["target"], vs[2]["reason"], icmpFrom(vs[2]))
	}
	if !strings.Contains(stderr, "eBPF unavailable") {
		t.Errorf("no warning that eBPF is unavailable: %s", stderr)
	}
}

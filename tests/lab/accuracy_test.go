package lab

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// stormEnv makes the in-process prober (runChild) run an allocating goroutine storm
// alongside the probes: the Go scheduler and GC busy, as in a loaded daemon.
const stormEnv = "REACHD_LAB_STORM"

// storm starts goroutines that allocate and touch memory without pause until stopped (or
// for at most two minutes).
func storm() (stop func()) {
	var done atomic.Bool
	var wg sync.WaitGroup
	deadline := time.Now().Add(2 * time.Minute)
	for range 8 * runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var keep [][]byte
			for i := 0; !done.Load() && time.Now().Before(deadline); i++ {
				b := make([]byte, 32<<10)
				for j := 0; j < len(b); j += 512 {
					b[j] = byte(i)
				}
				if keep = append(keep, b); len(keep) > 64 {
					keep = keep[:0]
				}
			}
		}()
	}
	return func() { done.Store(true); wg.Wait() }
}

// busyLoops saturates every CPU with shell loops, killed by stop, after d at the latest,
// or with this process (Pdeathsig).
func busyLoops(t *testing.T, d time.Duration) (stop func()) {
	var cmds []*exec.Cmd
	for range runtime.NumCPU() {
		c := exec.Command("sh", "-c", "while :; do :; done")
		c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, c)
	}
	var once sync.Once
	stop = func() {
		once.Do(func() {
			for _, c := range cmds {
				c.Process.Kill()
				c.Wait()
			}
		})
	}
	time.AfterFunc(d, stop)
	return stop
}

// capture runs tcpdump on the client's veth with nanosecond timestamps until stop.
func capture(t *testing.T, l *Lab, path, filter string) (stop func()) {
	t.Helper()
	cmd := l.Client.Command("tcpdump", "-i", ClientIf, "-n", "-U", "--immediate-mode", "-B", "8192", "-s", "128", "--time-stamp-precision=nano", "-w", path, filter)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("tcpdump: %v", err)
	}
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(stderr.String(), "listening on"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("tcpdump did not start: %s", stderr.String())
		}
	}
	return func() {
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
		t.Logf("tcpdump: %s", strings.ReplaceAll(strings.TrimSpace(stderr.String()), "\n", "; "))
	}
}

// captured runs the in-process prober with args (and --no-ebpf), with the storm and both
// cores saturated if load, while tcpdump captures on the client's veth; it returns the
// prober's output and the capture's path.
func captured(t *testing.T, l *Lab, args string, targets []string, noEBPF, load bool) ([]byte, string) {
	return capturedFilter(t, l, args, targets, noEBPF, load, "tcp")
}

// capturedFilter is captured with the capture's filter.
func capturedFilter(t *testing.T, l *Lab, args string, targets []string, noEBPF, load bool, filter string) ([]byte, string) {
	if noEBPF {
		args += " --no-ebpf"
	}
	var env []string
	if load {
		env = append(env, stormEnv+"=1")
		stop := busyLoops(t, time.Minute)
		defer stop()
	}
	pcap := t.TempDir() + "/cap.pcap"
	stopCap := capture(t, l, pcap, filter)
	_, out := runInClient(t, l, args, targets, env)
	time.Sleep(100 * time.Millisecond) // let tcpdump write the last packets
	stopCap()
	return out, pcap
}

type accuracy struct {
	n             int
	p50, p99, max float64 // µs
}

// quantiles summarises the errors (µs) of a bench against a capture; none at all fails it.
func quantiles(t *testing.T, diffs []float64) accuracy {
	t.Helper()
	if len(diffs) == 0 {
		t.FailNow()
	}
	slices.Sort(diffs)
	q := func(p float64) float64 { return diffs[min(len(diffs)-1, int(math.Ceil(p*float64(len(diffs))))-1)] }
	return accuracy{len(diffs), q(0.50), q(0.99), diffs[len(diffs)-1]}
}

// measure probes targets in-process (so that the storm can run inside the prober) while
// capturing, and compares each verdict's rtt_ms with the capture's SYN→SYN-ACK interval.
func measure(t *testing.T, l *Lab, targets []string, noEBPF, load bool) (accuracy, map[string]int) {
	// One handshake at a time: with several in flight the lab's veth backlog batches them,
	// and the capture (stamped when a packet is queued) and TC (run when it is processed)
	// drift apart by that queueing, which is the lab's, not the timing's.
	out, pcap := captured(t, l, "probe tcp --json --timeout 3s --retries 0 --concurrency 1", targets, noEBPF, load)
	hs, err := ReadHandshakes(pcap)
	if err != nil {
		t.Fatal(err)
	}
	var diffs []float64
	sources, missing := map[string]int{}, 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var v struct {
			Target, Addr, Local, Reason string
			TimingSource                string   `json:"timing_source"`
			RTT                         *float64 `json:"rtt_ms"`
		}
		if err := json.Unmarshal([]byte(line), &v); err != nil {
			t.Fatal(err)
		}
		if v.Reason != "ok" || v.RTT == nil {
			t.Fatalf("%s: %s (all targets are open)", v.Target, v.Reason)
		}
		sources[v.TimingSource]++
		remote := netip.AddrPortFrom(netip.MustParseAddr(v.Addr), netip.MustParseAddrPort(v.Target).Port())
		h, ok := hs[v.Local+" "+remote.String()]
		if !ok {
			if missing++; missing <= 3 {
				t.Logf("not in the capture: %s %s", v.Local, remote)
			}
			continue
		}
		capUs := float64(h.SYNACK-h.LastSYN) / 1e3
		diffs = append(diffs, math.Abs(*v.RTT*1e3-capUs))
	}
	if missing > 0 {
		t.Errorf("%d of %d handshakes not in the capture (%d handshakes captured)", missing, missing+len(diffs), len(hs))
	}
	return quantiles(t, diffs), sources
}

// TestBenchWireAccuracy is `make bench`: how far each verdict's rtt_ms is from the same
// SYN→SYN-ACK interval in a packet capture on the client's veth, idle and with both cores
// saturated, for wire timing and for userspace timing.
func TestBenchWireAccuracy(t *testing.T) {
	if os.Getenv("REACHD_BENCH") == "" {
		t.Skip("benchmark: run with make bench")
	}
	if _, err := exec.LookPath("tcpdump"); err != nil {
		t.Fatal("tcpdump is needed (apt-get install tcpdump)")
	}
	l := requireLab(t)
	var targets []string
	a, b := netip.MustParseAddr("203.0.113.150"), netip.MustParseAddr("2001:db8:a::5:0")
	for i := 0; i < 600; i++ {
		if i%2 == 0 && i/2 < 100 {
			targets = append(targets, netip.AddrPortFrom(a, PortOpen).String())
			a = a.Next()
			continue
		}
		targets = append(targets, netip.AddrPortFrom(b, PortOpen).String())
		b = b.Next()
	}
	type row struct {
		name         string
		noEBPF, load bool
		target       float64
	}
	for _, r := range []row{
		{"idle, wire timing", false, false, 20},
		{"idle, userspace timing", true, false, 0},
		{"loaded, wire timing", false, true, 50},
		{"loaded, userspace timing", true, true, 0},
	} {
		acc, sources := measure(t, l, targets, r.noEBPF, r.load)
		var src []string
		for k, n := range sources {
			src = append(src, fmt.Sprintf("%s %d", k, n))
		}
		slices.Sort(src)
		source := strings.Join(src, ", ")
		verdictLine := ""
		if r.target > 0 {
			verdictLine = fmt.Sprintf("; target p99 ≤ %.0f µs: %s", r.target, map[bool]string{true: "met", false: "NOT MET"}[acc.p99 <= r.target])
			if acc.p99 > r.target {
				t.Errorf("%s: p99 %.1f µs above the %.0f µs target", r.name, acc.p99, r.target)
			}
		}
		fmt.Printf("BENCH rtt_ms vs capture on %s, %d handshakes, %-25s (timing_source %s): |error| p50 %7.1f µs  p99 %8.1f µs  max %8.1f µs%s\n",
			ClientIf, acc.n, r.name, source, acc.p50, acc.p99, acc.max, verdictLine)
	}
}

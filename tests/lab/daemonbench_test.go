package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// The daemon's benchmarks (make bench): each runs reachd and the tool users compare it
// with on the same targets at the same rate, one after the other in one run, and prints
// both and the ratio. CPU is read from /proc (user + system) over a steady window, after a
// warm-up; packets are counted on the router, for both tools alike.

func benchOnly(t *testing.T) *Lab {
	t.Helper()
	if os.Getenv("REACHD_BENCH") == "" {
		t.Skip("benchmark: run with make bench")
	}
	return requireLab(t)
}

// procCPU is a process's user + system CPU time.
func procCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command (which may hold spaces) start after the last ')'.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ 100
}

// hostCPU is the CPU time the whole machine spent busy (every process and the kernel's
// interrupt and softirq work), from /proc/stat.
func hostCPU(t *testing.T) time.Duration {
	t.Helper()
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		t.Fatal(err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	var busy int64
	for _, i := range []int{1, 2, 3, 6, 7} {
		v, _ := strconv.ParseInt(f[i], 10, 64)
		busy += v
	}
	return time.Duration(busy) * 10 * time.Millisecond
}

// procMem returns a process's resident set and its peak (VmRSS, VmHWM), in KiB.
func procMem(t *testing.T, pid int) (rss, peak int) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			rss, _ = strconv.Atoi(strings.Fields(v)[0])
		}
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			peak, _ = strconv.Atoi(strings.Fields(v)[0])
		}
	}
	return rss, peak
}

// routerCounter is an nft counter on the router's forward path, matching expr.
type routerCounter struct {
	l     *Lab
	table string
}

func newRouterCounter(t *testing.T, l *Lab, table, expr string) *routerCounter {
	t.Helper()
	if err := l.Router.Nft(fmt.Sprintf("table inet %s {\n chain c { type filter hook forward priority -2; policy accept;\n  %s counter\n }\n}\n", table, expr)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Router.Nft("delete table inet " + table + "\n") })
	return &routerCounter{l, table}
}

func (c *routerCounter) packets(t *testing.T) int {
	t.Helper()
	out, err := c.l.Router.Command("nft", "list", "table", "inet", c.table).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	n := 0
	if i := strings.Index(string(out), "packets "); i >= 0 {
		fmt.Sscanf(string(out[i:]), "packets %d", &n)
	}
	return n
}

// steady is one tool's steady-state window: CPU spent and packets sent in it.
type steady struct {
	cpu     time.Duration
	host    time.Duration
	packets int
	wall    time.Duration
}

func (s steady) cpuPerPacket() time.Duration { return s.cpu / time.Duration(max(s.packets, 1)) }

// steadyWindow waits warm, then reads the process's CPU and the counter over window.
func steadyWindow(t *testing.T, pid int, c *routerCounter, warm, window time.Duration) steady {
	t.Helper()
	time.Sleep(warm)
	cpu0, h0, p0, t0 := procCPU(t, pid), hostCPU(t), c.packets(t), time.Now()
	time.Sleep(window)
	return steady{cpu: procCPU(t, pid) - cpu0, host: hostCPU(t) - h0, packets: c.packets(t) - p0, wall: time.Since(t0)}
}

func benchWindow() time.Duration {
	if d, err := time.ParseDuration(os.Getenv("REACHD_BENCH_WINDOW")); err == nil {
		return d
	}
	return 60 * time.Second
}

func printSides(name string, a, b steady, an, bn string, target float64) float64 {
	for _, x := range []struct {
		n string
		s steady
	}{{an, a}, {bn, b}} {
		fmt.Printf("BENCH %s %-8s: %d packets in %.0f s (%.0f/s), CPU %.3f s = %.1f µs per packet; host %.1f µs\n",
			name, x.n, x.s.packets, x.s.wall.Seconds(), float64(x.s.packets)/x.s.wall.Seconds(), x.s.cpu.Seconds(),
			float64(x.s.cpuPerPacket())/float64(time.Microsecond), float64(x.s.host/time.Duration(max(x.s.packets, 1)))/float64(time.Microsecond))
	}
	ratio := float64(a.cpuPerPacket()) / float64(b.cpuPerPacket())
	fmt.Printf("BENCH %s ratio %s/%s CPU per packet: %.2f (target <= %.2f)\n", name, an, bn, ratio, target)
	return ratio
}

// TestBenchDaemonICMPvsFping: 1,000 targets, one echo each per second, steady state: the
// CPU per echo of `reachd run` and of `fping -l` at the same period.
//
// The daemon spreads its targets over the interval (phases; no herd), so it sends an echo
// every millisecond or so (in batches of ticks due within 10 ms). fping is run both ways:
// as a burst of all 1,000 each period (-i 0), and paced as reachd is (-i 1: an echo a
// millisecond); reachd is compared with both. On this machine a burst costs fping a third
// to a sixth of what the same echoes paced cost it, host-wide too (the host column: every
// process, interrupts and softirqs) — likely because the kernel batches a burst's packets,
// and an idle machine woken a thousand times a second pays for each wake-up.
func TestBenchDaemonICMPvsFping(t *testing.T) {
	l := benchOnly(t)
	if _, err := exec.LookPath("fping"); err != nil {
		t.Fatal("fping is not installed (apt-get install fping)")
	}
	targets := benchEchoTargets()
	c := newRouterCounter(t, l, "reachd_bench_icmp", "ip6 daddr 2001:db8:a::1:0/112 icmpv6 type echo-request")
	window := benchWindow()

	fping := func(pace string) steady {
		fp := l.Client.Command("fping", append([]string{"-6", "-l", "-q", "-p", "1000", "-i", pace, "-t", "900", "-r", "0"}, targets...)...)
		if err := fp.Start(); err != nil {
			t.Fatal(err)
		}
		defer fp.Wait()
		defer fp.Process.Kill()
		return steadyWindow(t, fp.Process.Pid, c, 5*time.Second, window)
	}
	burst := fping("0")
	paced := fping("1")

	cfg := fmt.Sprintf("defaults: {interval: 1s, timeout: 900ms, retries: 0}\nmetrics: {listen: \"\"}\nlog: {json: off, journald: off}\nprobes:\n  - {name: ping, kind: icmp, targets: %s}\n", yamlList(targets))
	d := startReady(t, l, cfg, DaemonOptions{})
	r := steadyWindow(t, d.cmd.Process.Pid, c, 5*time.Second, window)
	// The target is against both: the burst as first measured, and the same pacing.
	if ratio := printSides("daemon-icmp-1000@1s-burst", r, burst, "reachd", "fping-i0", 1.0); ratio > 1.0 {
		t.Errorf("CPU per echo %.2f× fping's in bursts (-i 0), target <= 1.0", ratio)
	}
	if ratio := printSides("daemon-icmp-1000@1s", r, paced, "reachd", "fping-i1", 1.0); ratio > 1.0 {
		t.Errorf("CPU per echo %.2f× fping's at the same pacing (-i 1), target <= 1.0", ratio)
	}
	// fping -i 1 falls a little short of 1,000 a second (its own overhead on the 1 ms).
	if min(r.packets, burst.packets) < int(0.95*window.Seconds()*1000) || paced.packets < int(0.8*window.Seconds()*1000) {
		t.Errorf("echoes sent: reachd %d, fping %d (burst) and %d (paced) in %v; want 1,000 a second", r.packets, burst.packets, paced.packets, window)
	}
}

// TestBenchDaemonTCPvsBlackbox: 1,000 TCP targets, each probed once a second: the CPU per
// probe of `reachd run` and of blackbox_exporter driven by /probe requests at that rate
// (the driver's own CPU is not counted).
func TestBenchDaemonTCPvsBlackbox(t *testing.T) {
	l := benchOnly(t)
	bbe, err := exec.LookPath("prometheus-blackbox-exporter")
	if err != nil {
		t.Fatal("blackbox_exporter is not installed (apt-get install prometheus-blackbox-exporter)")
	}
	var targets []string
	for i := range 1000 {
		targets = append(targets, netip.AddrPortFrom(netip.MustParseAddr(fmt.Sprintf("2001:db8:a::2:%x", i+1)), PortOpen).String())
	}
	c := newRouterCounter(t, l, "reachd_bench_tcp", "ip6 daddr 2001:db8:a::2:0/112 tcp flags syn")
	window := benchWindow()

	dir := t.TempDir()
	conf := dir + "/blackbox.yml"
	if err := os.WriteFile(conf, []byte("modules:\n  tcp_connect:\n    prober: tcp\n    timeout: 900ms\n    tcp: {preferred_ip_protocol: ip6}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bb := l.Client.Command(bbe, "--config.file="+conf, "--web.listen-address=127.0.0.1:9115", "--log.level=error")
	if err := bb.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { bb.Process.Kill(); bb.Wait() }()
	stop := driveBlackbox(t, l, "127.0.0.1:9115", targets, time.Second)
	b := steadyWindow(t, bb.Process.Pid, c, 5*time.Second, window)
	stop()

	cfg := fmt.Sprintf("defaults: {interval: 1s, timeout: 900ms, retries: 0}\nmetrics: {listen: \"\"}\nlog: {json: off, journald: off}\nprobes:\n  - {name: web, kind: tcp, targets: %s}\n", yamlList(targets))
	d := startReady(t, l, cfg, DaemonOptions{})
	r := steadyWindow(t, d.cmd.Process.Pid, c, 5*time.Second, window)
	d.Kill()
	// The floor: the least a prober can do (tcpfloor: connect, wait, reset), whose CPU is
	// mostly the kernel's handshake on both ends, charged here to the prober.
	floorBin := dir + "/tcpfloor"
	if out, err := exec.Command("go", "build", "-o", floorBin, "./tcpfloor").CombinedOutput(); err != nil {
		t.Fatalf("build tcpfloor: %v\n%s", err, out)
	}
	fl := l.Client.Command(floorBin, "-rate", "1000", "-for", (window + 10*time.Second).String(), strings.Join(targets, " "))
	if err := fl.Start(); err != nil {
		t.Fatal(err)
	}
	f := steadyWindow(t, fl.Process.Pid, c, 5*time.Second, window)
	fl.Process.Kill()
	fl.Wait()
	ratio := printSides("daemon-tcp-1000@1s", r, b, "reachd", "blackbox", 0.1)
	printSides("daemon-tcp-1000@1s", f, b, "floor", "blackbox", 0.1)
	if ratio > 0.1 {
		t.Errorf("CPU per probe %.2f× blackbox_exporter's, target <= 0.1", ratio)
	}
	if min(r.packets, b.packets) < int(0.9*window.Seconds()*1000) {
		t.Errorf("probes (SYNs): reachd %d, blackbox %d in %v; want 1,000 a second each", r.packets, b.packets, window)
	}
}

// driveBlackbox requests /probe for each target once per period, spread evenly, from a
// pool of workers in this process (their CPU is not the exporter's), until stop.
func driveBlackbox(t *testing.T, l *Lab, addr string, targets []string, period time.Duration) (stop func()) {
	t.Helper()
	return driveBlackboxModule(t, l, addr, "tcp_connect", targets, period)
}

// driveBlackboxModule is driveBlackbox with the exporter's module named.
func driveBlackboxModule(t *testing.T, l *Lab, addr, module string, targets []string, period time.Duration) (stop func()) {
	t.Helper()
	tr := &http.Transport{MaxIdleConnsPerHost: 128, DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
		return l.Client.Dial(network, a)
	}}
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	jobs := make(chan string, 1024)
	done := make(chan struct{})
	var wg sync.WaitGroup
	var failed atomic.Int64
	for range 128 {
		wg.Go(func() {
			for target := range jobs {
				resp, err := client.Get("http://" + addr + "/probe?module=" + module + "&target=" + url.QueryEscape(target))
				if err != nil {
					failed.Add(1)
					continue
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if !strings.Contains(string(body), "probe_success 1") {
					failed.Add(1)
				}
			}
		})
	}
	wg.Go(func() {
		defer close(jobs)
		tick := time.NewTicker(period / time.Duration(len(targets)))
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			case <-tick.C:
				select {
				case jobs <- targets[i%len(targets)]:
				default: // the exporter is behind: a request is dropped, as a scrape would time out
					failed.Add(1)
				}
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
		tr.CloseIdleConnections()
		if n := failed.Load(); n > 0 {
			t.Logf("blackbox_exporter: %d requests failed or were dropped", n)
		}
	}
}

// serveUDPEchoAny echoes datagrams to any address of the server's AnyIP block on port,
// each from the address it was sent to (IPV6_PKTINFO), as a connected client wants.
func serveUDPEchoAny(t *testing.T, l *Lab, port uint16) {
	t.Helper()
	var pc net.PacketConn
	// IPV6_FREEBIND: the replies' source is an AnyIP address, local by route only.
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_IPV6, unix.IPV6_FREEBIND, 1) })
		return errors.Join(err, serr)
	}}
	err := l.Server.Do(func() (err error) {
		pc, err = lc.ListenPacket(context.Background(), "udp6", fmt.Sprintf("[::]:%d", port))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	p := ipv6.NewPacketConn(pc)
	if err := p.SetControlMessage(ipv6.FlagDst, true); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, cm, from, err := p.ReadFrom(buf)
			if err != nil {
				return
			}
			var reply *ipv6.ControlMessage
			if cm != nil {
				reply = &ipv6.ControlMessage{Src: cm.Dst}
			}
			_, _ = p.WriteTo(buf[:n], reply, from)
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
}

// mixedTargets are n targets of every kind in the AnyIP block: 40 % tcp open, 10 % tcp
// refused, 40 % icmp, 10 % udp echo.
func mixedTargets(n int, udpPort uint16) (tcp, icmp, udp []string) {
	addr := func(block, i int) netip.Addr {
		return netip.MustParseAddr(fmt.Sprintf("2001:db8:a::%x:%x", block, i+1))
	}
	for i := range n * 4 / 10 {
		tcp = append(tcp, netip.AddrPortFrom(addr(4, i), PortOpen).String())
		icmp = append(icmp, addr(5, i).String())
	}
	for i := range n / 10 {
		tcp = append(tcp, netip.AddrPortFrom(addr(4, i), PortClosed).String())
		udp = append(udp, netip.AddrPortFrom(addr(6, i), udpPort).String())
	}
	return tcp, icmp, udp
}

// TestBenchDaemon10k: 10,000 mixed targets at 10 s for REACHD_BENCH_SOAK (10 minutes):
// peak RSS, RSS growth after warm-up, schedule lateness p99, verdicts lost (none: every
// tick has its verdict, none skipped or self_overload), and how much the log grows.
func TestBenchDaemon10k(t *testing.T) {
	l := benchOnly(t)
	soak := 10 * time.Minute
	if d, err := time.ParseDuration(os.Getenv("REACHD_BENCH_SOAK")); err == nil {
		soak = d
	}
	const udpPort = 7007
	serveUDPEchoAny(t, l, udpPort)
	tcp, icmp, udp := mixedTargets(10000, udpPort)
	cfg := fmt.Sprintf(`defaults: {interval: 10s, timeout: 2s, retries: 1}
metrics: {listen: %q}
log: {json: stdout, journald: off, verdicts: changes}
probes:
  - {name: web, kind: tcp, targets: %s}
  - {name: ping, kind: icmp, targets: %s}
  - {name: echo, kind: udp, udp: {payload_hex: "6869"}, targets: %s}
`, metricsAddr, yamlList(tcp), yamlList(icmp), yamlList(udp))
	d := startReady(t, l, cfg, DaemonOptions{})
	pid := d.cmd.Process.Pid
	start := time.Now()
	var warmRSS, endRSS []int
	for time.Since(start) < soak {
		time.Sleep(5 * time.Second)
		rss, _ := procMem(t, pid)
		switch el := time.Since(start); {
		case el > 2*time.Minute && el <= 3*time.Minute, soak < 3*time.Minute && el <= soak/2:
			warmRSS = append(warmRSS, rss)
		case el > soak-time.Minute:
			endRSS = append(endRSS, rss)
		}
	}
	firstRound := len(d.Lines())
	_, peakBefore := procMem(t, pid)
	m, err := d.Metrics(metricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	_, peak := procMem(t, pid)
	elapsed := time.Since(start)
	verdicts := sumMetric(m, "reachd_probe_verdicts_total{")
	skipped := sumMetric(m, "reachd_schedule_skipped_total{")
	overload := sumMetric(m, "reachd_self_overload_total ")
	lateCount := sumMetric(m, "reachd_schedule_lateness_seconds_count")
	late5ms := sumMetric(m, `reachd_schedule_lateness_seconds_bucket{le="0.005"}`)
	expected := 10000 * elapsed.Seconds() / 10
	growth := medianKiB(endRSS) - medianKiB(warmRSS)
	fmt.Printf("BENCH daemon-10k@10s %v: peak RSS %.1f MiB (target <= 64), RSS %.1f → %.1f MiB: growth %.2f MiB (target <= 1)\n",
		elapsed.Round(time.Second), float64(peak)/1024, float64(medianKiB(warmRSS))/1024, float64(medianKiB(endRSS))/1024, float64(growth)/1024)
	fmt.Printf("BENCH daemon-10k@10s lateness: %.2f %% of %.0f ticks within 5 ms (target p99 <= 5 ms); verdicts %.0f of ~%.0f ticks, skipped %.0f, self_overload %.0f (target 0 lost)\n",
		100*late5ms/lateCount, lateCount, verdicts, expected, skipped, overload)
	fmt.Printf("BENCH daemon-10k@10s log: %d lines (verdicts: changes): %.1f lines a minute for 10,000 targets\n",
		firstRound, float64(firstRound-10000)/elapsed.Minutes())
	fmt.Printf("BENCH daemon-10k@10s reasons: %s; peak RSS before the scrape %.1f MiB, scrape %d bytes; heap in use %.1f MiB, goroutines %.0f, GC limit %.0f MiB\n",
		reasonCounts(m), float64(peakBefore)/1024, len(m), sumMetric(m, "go_memstats_heap_inuse_bytes ")/(1<<20), sumMetric(m, "go_goroutines "),
		sumMetric(m, "go_gc_gomemlimit_bytes ")/(1<<20))
	var ms []string
	for _, k := range []string{"heap_sys", "heap_idle", "heap_released", "stack_inuse", "stack_sys", "mspan_sys", "other_sys", "gc_sys", "sys"} {
		ms = append(ms, fmt.Sprintf("%s %.1f", k, sumMetric(m, "go_memstats_"+k+"_bytes ")/(1<<20)))
	}
	fmt.Printf("BENCH daemon-10k@10s memstats MiB: %s\n", strings.Join(ms, ", "))
	if peak > 64*1024 {
		t.Errorf("peak RSS %d KiB > 64 MiB", peak)
	}
	if growth > 1024 {
		t.Errorf("RSS grew %d KiB over the run", growth)
	}
	if late5ms < 0.99*lateCount {
		t.Errorf("lateness p99 above 5 ms")
	}
	if skipped > 0 || overload > 0 || verdicts < lateCount-300 {
		t.Errorf("lost verdicts: %0.f ticks started, %.0f verdicts, %.0f skipped, %.0f self_overload", lateCount, verdicts, skipped, overload)
	}
}

// sumMetric sums the samples of lines starting with prefix.
func sumMetric(m, prefix string) float64 {
	var s float64
	for _, line := range strings.Split(m, "\n") {
		if strings.HasPrefix(line, prefix) {
			f := strings.Fields(line)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			s += v
		}
	}
	return s
}

// medianKiB is the median of RSS samples (0 for none).
func medianKiB(xs []int) int {
	if len(xs) == 0 {
		return 0
	}
	f := make([]float64, len(xs))
	for i, x := range xs {
		f[i] = float64(x)
	}
	return int(median(f))
}

// reasonCounts sums reachd_probe_verdicts_total by kind and reason.
func reasonCounts(m string) string {
	counts := map[string]float64{}
	re := regexp.MustCompile(`^reachd_probe_verdicts_total\{.*kind="([a-z]+)".*reason="([a-z_]+)".*\} ([0-9.e+]+)$`)
	for _, line := range strings.Split(m, "\n") {
		if g := re.FindStringSubmatch(line); g != nil {
			v, _ := strconv.ParseFloat(g[3], 64)
			counts[g[1]+"/"+g[2]] += v
		}
	}
	var out []string
	for _, k := range slices.Sorted(maps.Keys(counts)) {
		out = append(out, fmt.Sprintf("%s %.0f", k, counts[k]))
	}
	return strings.Join(out, ", ")
}

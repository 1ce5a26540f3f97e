package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"reachd/pkg/cli"
)

const portDropScale = 85

// scaleTargets returns 1,000 targets across the AnyIP blocks with the reason each must get:
// open (port 80), refused (81) and silently dropped (85) ones, IPv4 and IPv6.
func scaleTargets() (targets []string, want map[string]string) {
	want = map[string]string{}
	add := func(ap netip.AddrPort, reason string) {
		targets = append(targets, ap.String())
		want[ap.String()] = reason
	}
	// .150–.253: above the fixtures' fault addresses (.130–.142).
	v4 := netip.MustParseAddr("203.0.113.150")
	for i := 0; i < 104; i++ {
		add(netip.AddrPortFrom(v4, PortOpen), "ok")
		add(netip.AddrPortFrom(v4, PortClosed), "refused")
		if i < 100 {
			add(netip.AddrPortFrom(v4, portDropScale), "timeout")
		}
		v4 = v4.Next()
	}
	v6 := netip.MustParseAddr("2001:db8:a::1000")
	for i := 0; len(targets) < 1000; i++ {
		port, reason := uint16(PortOpen), "ok"
		if i%6 == 5 {
			port, reason = PortClosed, "refused"
		}
		add(netip.AddrPortFrom(v6, port), reason)
		v6 = v6.Next()
	}
	return targets, want
}

func scaleLab(t *testing.T) *Lab {
	l := requireLab(t)
	l.mu.Lock()
	done := l.scaleReady
	l.scaleReady = true
	l.mu.Unlock()
	if !done {
		if err := l.routerRule(fmt.Sprintf("ip daddr %s tcp dport %d drop", AnyIPV4, portDropScale)); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

// childEnv marks the test binary re-run inside the client namespace (see TestMain).
const childEnv = "REACHD_LAB_CHILD"

type leakReport struct {
	Verdicts         int    `json:"verdicts"`
	Exit             int    `json:"exit"`
	GoroutinesBefore int    `json:"goroutines_before"`
	GoroutinesAfter  int    `json:"goroutines_after"`
	FDsBefore        int    `json:"fds_before"`
	FDsAfter         int    `json:"fds_after"`
	Leak             string `json:"leak"`
	WallMs           int64  `json:"wall_ms"`
}

// runChild runs reachd's CLI in this process, which nsenter put in the client namespace,
// and reports goroutines and fds before and after. Verdicts go to the file in argv.
func runChild() int {
	args := strings.Fields(os.Getenv(childEnv))
	if f := os.Getenv(childEnv + "_TARGETS"); f != "" {
		// Too many targets for one environment string (128 KiB): one per line in a file.
		b, err := os.ReadFile(f)
		if err != nil {
			fmt.Println(err)
			return 1
		}
		args = append(args, strings.Fields(string(b))...)
	}
	out, err := os.Create(os.Getenv(childEnv + "_OUT"))
	if err != nil {
		fmt.Println(err)
		return 1
	}
	defer out.Close()
	var r leakReport
	r.GoroutinesBefore, r.FDsBefore = countGoroutines(), countFDs()
	before := goleak.IgnoreCurrent() // taken now: goroutines that exist before the run
	if os.Getenv(stormEnv) != "" {
		stop := storm()
		defer stop()
	}
	start := time.Now()
	var errb bytes.Buffer
	r.Exit = cli.Run(context.Background(), args, out, &errb)
	r.WallMs = time.Since(start).Milliseconds()
	if err := goleak.Find(before); err != nil {
		r.Leak = err.Error()
	}
	r.GoroutinesAfter, r.FDsAfter = countGoroutines(), countFDs()
	if errb.Len() > 0 {
		r.Leak += " stderr: " + errb.String()
	}
	b, _ := json.Marshal(r)
	fmt.Println(string(b))
	return 0
}

// runInClient runs reachd's CLI in-process in a re-run of this test binary inside the
// client namespace (runChild), with args and then targets, and returns its leak report and
// the verdicts it wrote. env adds environment variables (KEY=VALUE).
func runInClient(t *testing.T, l *Lab, args string, targets []string, env []string) (leakReport, []byte) {
	t.Helper()
	dir := t.TempDir()
	// Targets go through a file: thousands of them overflow one environment string.
	if err := os.WriteFile(dir+"/targets", []byte(strings.Join(targets, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := l.Client.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), env...),
		childEnv+"="+args, childEnv+"_TARGETS="+dir+"/targets", childEnv+"_OUT="+dir+"/verdicts")
	res, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, res)
	}
	var r leakReport
	if err := json.Unmarshal(bytes.TrimSpace(res), &r); err != nil {
		t.Fatalf("child report %q: %v", res, err)
	}
	out, err := os.ReadFile(dir + "/verdicts")
	if err != nil {
		t.Fatal(err)
	}
	return r, out
}

func countFDs() int {
	ents, _ := os.ReadDir("/proc/self/fd")
	return len(ents)
}

func countGoroutines() int { return runtime.NumGoroutine() }

// softnetDrops is how many packets the host's per-CPU receive backlogs have dropped
// (/proc/net/softnet_stat, second column). A burst of SYNs through the lab's veths can
// overflow them: it is logged, so a wrong verdict is told from a packet the lab lost.
func softnetDrops(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/net/softnet_stat")
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if f := strings.Fields(line); len(f) > 1 {
			d, err := strconv.ParseInt(f[1], 16, 64)
			if err != nil {
				t.Fatalf("softnet_stat %q: %v", line, err)
			}
			n += d
		}
	}
	return n
}

// scaleTimeout lets every probe of the scale tests get through one lost SYN and more: with
// Linux's linear SYN timeouts its retransmissions go at +1, +2 and +3 s.
const scaleTimeout = "3500ms"

func checkVerdicts(t *testing.T, out []byte, want map[string]string) {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != len(want) {
		t.Fatalf("%d verdicts, want %d", len(lines), len(want))
	}
	wrong := 0
	for _, line := range lines {
		var v struct{ Target, Reason string }
		if err := json.Unmarshal([]byte(line), &v); err != nil {
			t.Fatal(err)
		}
		if want[v.Target] != v.Reason {
			if wrong++; wrong <= 5 {
				t.Errorf("%s: %s, want %s", v.Target, v.Reason, want[v.Target])
			}
		}
	}
	if wrong > 0 {
		t.Fatalf("%d of %d verdicts wrong", wrong, len(lines))
	}
}

// TestScale1000NoLeaks probes 1,000 targets at once in-process and checks every verdict and
// that no goroutine or fd outlives the run.
func TestScale1000NoLeaks(t *testing.T) {
	l := scaleLab(t)
	targets, want := scaleTargets()
	drops := softnetDrops(t)
	r, out := runInClient(t, l, "probe tcp --json --timeout "+scaleTimeout+" --retries 0 --concurrency 1000", targets, nil)
	t.Logf("packets dropped by full receive backlogs during the run: %d", softnetDrops(t)-drops)
	checkVerdicts(t, out, want)
	t.Logf("1000 targets in-process: %d ms; goroutines %d→%d, fds %d→%d", r.WallMs, r.GoroutinesBefore, r.GoroutinesAfter, r.FDsBefore, r.FDsAfter)
	if r.Leak != "" {
		t.Errorf("leak: %s", r.Leak)
	}
	if r.FDsAfter > r.FDsBefore {
		t.Errorf("fds grew from %d to %d", r.FDsBefore, r.FDsAfter)
	}
	// SO_LINGER 0: the prober's side holds no TIME_WAIT after 1,000 connections.
	if tw, err := l.Client.Command("ss", "-Htan", "state", "time-wait").Output(); err != nil {
		t.Errorf("ss: %v", err)
	} else if n := len(strings.Fields(string(tw))); n > 0 {
		t.Errorf("client holds TIME_WAIT sockets:\n%s", tw)
	}
	if r.Exit != cli.ExitNotOK {
		t.Errorf("exit %d, want 1 (some targets fail by design)", r.Exit)
	}
}

// TestScale10000WireNoLeaks runs 10,000 wire-timed probes in-process (the observer loaded,
// each attempt registering and unregistering its flow and socket) and checks every verdict,
// that each was timed at the wire, and that no goroutine or fd outlives the run.
func TestScale10000WireNoLeaks(t *testing.T) {
	l := scaleLab(t)
	want := map[string]string{}
	var targets []string
	a := netip.MustParseAddr("2001:db8:a::1:0")
	for i := 0; i < 10000; i++ {
		port, reason := uint16(PortOpen), "ok"
		if i%5 == 4 {
			port, reason = PortClosed, "refused"
		}
		ap := netip.AddrPortFrom(a, port).String()
		targets, want[ap] = append(targets, ap), reason
		a = a.Next()
	}
	drops := softnetDrops(t)
	r, out := runInClient(t, l, "probe tcp --json --timeout "+scaleTimeout+" --retries 0 --concurrency 256", targets, nil)
	t.Logf("packets dropped by full receive backlogs during the run: %d", softnetDrops(t)-drops)
	checkVerdicts(t, out, want)
	notWire := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var v struct {
			TimingSource string `json:"timing_source"`
		}
		if json.Unmarshal([]byte(line), &v) == nil && v.TimingSource != "wire" {
			notWire++
		}
	}
	if notWire > 0 {
		t.Errorf("%d of %d verdicts not timed at the wire", notWire, len(want))
	}
	t.Logf("10000 wire-timed probes in-process: %d ms; goroutines %d→%d, fds %d→%d", r.WallMs, r.GoroutinesBefore, r.GoroutinesAfter, r.FDsBefore, r.FDsAfter)
	if r.Leak != "" {
		t.Errorf("leak: %s", r.Leak)
	}
	if r.FDsAfter > r.FDsBefore {
		t.Errorf("fds grew from %d to %d", r.FDsBefore, r.FDsAfter)
	}
}

// TestBench1000 is `make bench`: the built binary against the same 1,000 targets, with wall
// time and peak RSS, at the default concurrency and with all 1,000 at once.
func TestBench1000(t *testing.T) {
	if os.Getenv("REACHD_BENCH") == "" {
		t.Skip("benchmark: run with make bench")
	}
	l := scaleLab(t)
	targets, want := scaleTargets()
	for _, conc := range []int{64, 1000} {
		for _, retries := range []int{0, 3} {
			args := append([]string{"probe", "tcp", "--json", "--timeout", "2s",
				"--retries", strconv.Itoa(retries), "--concurrency", strconv.Itoa(conc)}, targets...)
			cmd := l.Client.Command(reachdBin, args...)
			start := time.Now()
			out, err := cmd.Output()
			wall := time.Since(start)
			if ee, ok := err.(*exec.ExitError); err != nil && (!ok || ee.ExitCode() != 1) {
				t.Fatalf("reachd: %v", err)
			}
			checkVerdicts(t, out, want)
			ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
			fmt.Printf("BENCH tcp 1000 targets (ok/refused/dropped 781/119/100) --timeout 2s --retries %d --concurrency %4d: wall %6.2f s, peak RSS %5.1f MiB, CPU %.2f s, 1000/1000 verdicts correct\n",
				retries, conc, wall.Seconds(), float64(ru.Maxrss)/1024, time.Duration(ru.Utime.Nano()+ru.Stime.Nano()).Seconds())
		}
	}
}

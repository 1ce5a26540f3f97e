package lab

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// benchEchoTargets are 1,000 addresses in the server's AnyIP block (each answers echoes).
func benchEchoTargets() []string {
	out := make([]string, 1000)
	for i := range out {
		out[i] = netip.MustParseAddr(fmt.Sprintf("2001:db8:a::1:%x", i+1)).String()
	}
	return out
}

// echoRun is one tool's run: echoes sent and answered, wall time and CPU (user + system
// of the process, which also pays for the lab's forwarding of its packets in softirq).
type echoRun struct {
	sent, answered int
	wall, cpu      time.Duration
}

func (r echoRun) perSecond() float64 { return float64(r.answered) / r.wall.Seconds() }

// cpuPer1000 is CPU milliseconds per 1,000 echoes sent.
func (r echoRun) cpuPer1000() float64 {
	return float64(r.cpu) / float64(time.Millisecond) / float64(r.sent) * 1000
}

func runTimed(t *testing.T, cmd *exec.Cmd) (stdout, stderr []byte, r echoRun) {
	t.Helper()
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	start := time.Now()
	err := cmd.Run()
	r.wall = time.Since(start)
	if cmd.ProcessState == nil {
		t.Fatalf("%s: %v", cmd.Args[0], err)
	}
	r.cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	return o.Bytes(), e.Bytes(), r
}

// TestBenchICMPvsFping pings the same 1,000 lab targets, 20 echoes each, 50 ms apart per
// target, with fping (-C 20 -p 50 -i 0: no pacing across targets, like reachd with
// --concurrency 1000) and with reachd (eBPF on), one after the other, twice, and prints
// both tools' throughput and CPU per 1,000 echoes and their ratio.
func TestBenchICMPvsFping(t *testing.T) {
	if os.Getenv("REACHD_BENCH") == "" {
		t.Skip("benchmark: run with make bench")
	}
	l := requireLab(t)
	if _, err := exec.LookPath("fping"); err != nil {
		t.Fatal("fping is not installed (apt-get install fping; .ci/run installs it)")
	}
	const count = 20
	targets := benchEchoTargets()
	want := count * len(targets)
	fping := func() echoRun {
		args := append([]string{"-6", "-q", "-C", strconv.Itoa(count), "-p", "50", "-i", "0", "-t", "1000", "-r", "0"}, targets...)
		_, stderr, r := runTimed(t, l.Client.Command("fping", args...))
		r.sent = want
		// -C prints, per target, "addr : rtt rtt - rtt ..." with "-" for no reply.
		for _, line := range strings.Split(string(stderr), "\n") {
			_, rtts, ok := strings.Cut(line, " : ")
			if !ok {
				continue
			}
			for _, f := range strings.Fields(rtts) {
				if f != "-" {
					r.answered++
				}
			}
		}
		return r
	}
	reachd := func() echoRun {
		args := append([]string{"probe", "icmp", "--json", "--retries", "0", "--count", strconv.Itoa(count),
			"--interval", "50ms", "--timeout", "1s", "--concurrency", "1000"}, targets...)
		stdout, stderr, r := runTimed(t, l.Client.Command(reachdBin, args...))
		if len(stderr) > 0 {
			t.Logf("reachd stderr: %s", stderr)
		}
		wire := 0
		for _, line := range strings.Split(strings.TrimSpace(string(stdout)), "\n") {
			var v struct {
				TimingSource string `json:"timing_source"`
				Stats        struct {
					Count, Received, Duplicates, Corrupt, Foreign int
				} `json:"stats"`
			}
			if err := json.Unmarshal([]byte(line), &v); err != nil {
				t.Fatalf("%v: %s", err, line)
			}
			r.sent += v.Stats.Count
			r.answered += v.Stats.Received
			if v.Stats.Duplicates+v.Stats.Corrupt+v.Stats.Foreign > 0 {
				t.Errorf("unexpected extra replies: %+v", v.Stats)
			}
			if v.TimingSource == "wire" {
				wire++
			}
		}
		if wire != len(targets) {
			t.Errorf("%d of %d verdicts wire-timed", wire, len(targets))
		}
		return r
	}
	for round := 1; round <= 2; round++ {
		f := fping()
		r := reachd()
		for _, x := range []struct {
			name string
			r    echoRun
		}{{"fping", f}, {"reachd", r}} {
			fmt.Printf("BENCH icmp-1000x%d round %d %-6s: %d/%d replies matched, wall %.3f s, %.0f echoes/s, CPU %.3f s = %.1f ms per 1,000 echoes\n",
				count, round, x.name, x.r.answered, x.r.sent, x.r.wall.Seconds(), x.r.perSecond(), x.r.cpu.Seconds(), x.r.cpuPer1000())
			if x.r.answered != want || x.r.sent != want {
				t.Errorf("%s: %d of %d echoes answered (%d sent): every reply must be matched", x.name, x.r.answered, want, x.r.sent)
			}
		}
		fmt.Printf("BENCH icmp-1000x%d round %d ratio reachd/fping: throughput %.2f (target >= 1), CPU per echo %.2f (target <= 1)\n",
			count, round, r.perSecond()/f.perSecond(), r.cpuPer1000()/f.cpuPer1000())
	}
}

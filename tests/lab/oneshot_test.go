package lab

import (
	"fmt"
	"os"
	"slices"
	"testing"
	"time"
)

// oneShotRuns is how many times each one-shot command runs; the medians are printed.
const oneShotRuns = 15

// TestBenchOneShot prints what one `reachd probe` of one target costs, with eBPF and
// without, beside fping -c1 and a plain connect (bash's /dev/tcp): the wall time and the
// CPU (user + system) of the process, medians of runs taken in turn, and what eBPF adds.
func TestBenchOneShot(t *testing.T) {
	if os.Getenv("REACHD_BENCH") == "" {
		t.Skip("benchmark: run with make bench")
	}
	l := requireLab(t)
	rows := []struct {
		name string
		args []string
	}{
		{"reachd probe icmp (eBPF)", []string{reachdBin, "probe", "icmp", "--retries", "0", ServerV4.String()}},
		{"reachd probe icmp --no-ebpf", []string{reachdBin, "probe", "icmp", "--retries", "0", "--no-ebpf", ServerV4.String()}},
		{"fping -c1", []string{"fping", "-q", "-c1", ServerV4.String()}},
		{"reachd probe tcp (eBPF)", []string{reachdBin, "probe", "tcp", "--retries", "0", ap(ServerV4, PortOpen)}},
		{"reachd probe tcp --no-ebpf", []string{reachdBin, "probe", "tcp", "--retries", "0", "--no-ebpf", ap(ServerV4, PortOpen)}},
		{"plain connect (bash /dev/tcp)", []string{"bash", "-c", fmt.Sprintf("exec 3<>/dev/tcp/%s/%d", ServerV4, PortOpen)}},
	}
	wall := make([][]time.Duration, len(rows))
	cpu := make([][]time.Duration, len(rows))
	for range oneShotRuns {
		for i, r := range rows {
			cmd := l.Client.Command(r.args[0], r.args[1:]...)
			start := time.Now()
			out, err := cmd.CombinedOutput()
			w := time.Since(start)
			if err != nil {
				t.Fatalf("%s: %v\n%s", r.name, err, out)
			}
			wall[i] = append(wall[i], w)
			cpu[i] = append(cpu[i], cmd.ProcessState.UserTime()+cmd.ProcessState.SystemTime())
		}
	}
	med := func(d []time.Duration) float64 {
		s := slices.Clone(d)
		slices.Sort(s)
		return float64(s[len(s)/2]) / float64(time.Millisecond)
	}
	fmt.Printf("BENCH one-shot cost of one target, median of %d runs each (taken in turn), in the lab's client namespace\n", oneShotRuns)
	fmt.Printf("BENCH %-32s %9s %9s\n", "command", "wall ms", "CPU ms")
	for i, r := range rows {
		fmt.Printf("BENCH %-32s %9.1f %9.1f\n", r.name, med(wall[i]), med(cpu[i]))
	}
	for _, k := range []struct {
		kind          string
		ebpf, noEBPF  int
		target, limit float64
	}{{"icmp", 0, 1, 25, 25}, {"tcp", 3, 4, 25, 25}} {
		add := med(cpu[k.ebpf]) - med(cpu[k.noEBPF])
		fmt.Printf("BENCH eBPF adds to one reachd probe %s: %+.1f ms CPU, %+.1f ms wall (target ≤ %.0f ms CPU)\n",
			k.kind, add, med(wall[k.ebpf])-med(wall[k.noEBPF]), k.target)
	}
}

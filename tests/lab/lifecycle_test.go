package lab

import (
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// smallConfig is a daemon config of a few probes that log every verdict.
func smallConfig(probes string) string {
	return fmt.Sprintf("defaults: {interval: 1s, timeout: 500ms, retries: 0}\nmetrics: {listen: %q}\nlog: {verdicts: all}\nprobes:\n%s", metricsAddr, probes)
}

const (
	probeA = "  - name: a\n    kind: tcp\n    targets: [\"203.0.113.170:80\"]\n"
	probeB = "  - {name: b, kind: icmp, targets: [203.0.113.171]}\n"
	probeC = "  - {name: c, kind: icmp, targets: [\"2001:db8:a::2100\"]}\n"
)

// TestDaemonReload: SIGHUP with a broken config (an unknown key on line 7) keeps the old
// config running, logs the error with its line and sets
// reachd_config_last_reload_successful to 0; a good one is then applied as a diff: the
// unchanged probe keeps its phase, the removed one stops and its series go, the new one
// starts. The service manager hears RELOADING, then READY.
func TestDaemonReload(t *testing.T) {
	l := requireLab(t)
	d := startReady(t, l, smallConfig(probeA+probeB), DaemonOptions{})
	phaseA := waitPhase(t, d, "a", time.Time{})
	// Line 7 is the unknown key.
	broken := smallConfig(strings.Replace(probeA, "    targets", "    colour: red\n    targets", 1) + probeB)
	if n := strings.Count(broken[:strings.Index(broken, "colour")], "\n") + 1; n != 7 {
		t.Fatalf("the unknown key is on line %d, want 7", n)
	}
	if err := os.WriteFile(d.Config, []byte(broken), 0o644); err != nil {
		t.Fatal(err)
	}
	hup := time.Now()
	d.Signal(syscall.SIGHUP)
	if _, ok := d.WaitNote(5*time.Second, "last reload rejected"); !ok {
		t.Fatalf("no READY after the rejected reload; stderr:\n%s", d.Stderr())
	}
	if want := d.Config + ":7:5: unknown key"; !strings.Contains(d.Stderr(), want) {
		t.Errorf("stderr lacks %q:\n%s", want, d.Stderr())
	}
	m, err := d.Metrics(metricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(m, "reachd_config_last_reload_successful 0\n") {
		t.Errorf("reachd_config_last_reload_successful is not 0 after a rejected reload")
	}
	// The old config keeps running: b still probes.
	waitPhase(t, d, "b", hup)

	if err := os.WriteFile(d.Config, []byte(smallConfig(probeA+probeC)), 0o644); err != nil {
		t.Fatal(err)
	}
	notesBefore := len(d.Notes())
	hup = time.Now()
	d.Signal(syscall.SIGHUP)
	waitPhase(t, d, "c", hup)
	if got := waitPhase(t, d, "a", hup); phaseDistance(got, phaseA) > phaseSlack {
		t.Errorf("probe a's phase moved from %v to %v across the reload", phaseA, got)
	}
	time.Sleep(1500 * time.Millisecond)
	for _, ln := range d.Lines() {
		if ln.V != nil && ln.V["probe"] == "b" && ln.At.After(hup.Add(time.Second)) {
			t.Errorf("removed probe b still logs: %s", ln.Text)
		}
	}
	m, err = d.Metrics(metricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(m, "reachd_config_last_reload_successful 1\n") || strings.Contains(m, `probe="b"`) || !strings.Contains(m, `probe="c"`) {
		t.Errorf("after the good reload: want reload_successful 1, no series of b, series of c:\n%s", grepLines(m, "reachd_"))
	}
	checkPromtool(t, m)
	var states []string
	for _, n := range d.Notes()[notesBefore:] {
		if strings.Contains(n.State, "RELOADING=1") || strings.Contains(n.State, "READY=1") {
			states = append(states, strings.SplitN(n.State, "\n", 2)[0])
		}
	}
	if len(states) < 2 || states[0] != "RELOADING=1" || states[1] != "READY=1" {
		t.Errorf("notify after SIGHUP: %q, want RELOADING=1 then READY=1", states)
	}
	d.Signal(syscall.SIGTERM)
	if code := d.Wait(10 * time.Second); code != 0 {
		t.Errorf("exit %d", code)
	}
}

// waitPhase waits for a verdict of probe after since and returns where in the second its
// probe started (the phase, at 1 s intervals), to the millisecond.
func waitPhase(t *testing.T, d *Daemon, probe string, since time.Time) time.Duration {
	t.Helper()
	ln, ok := d.WaitLine(5*time.Second, func(ln Line) bool { return ln.V != nil && ln.V["probe"] == probe && ln.At.After(since) })
	if !ok {
		t.Fatalf("no verdict of probe %s; stderr:\n%s", probe, d.Stderr())
	}
	start, _ := time.Parse(time.RFC3339Nano, ln.V["time"].(string))
	return (time.Duration(start.UnixNano()) % time.Second).Round(time.Millisecond)
}

// phaseSlack is how far apart two starts at the same phase may be: a tick may start up to
// 10 ms early with others due then (the daemon batches them), and a few ms late.
const phaseSlack = 15 * time.Millisecond

// phaseDistance is the distance between two phases in a 1 s interval, across its end too.
func phaseDistance(a, b time.Duration) time.Duration {
	d := (a - b + time.Second) % time.Second
	return min(d, time.Second-d)
}

func grepLines(s, prefix string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestDaemonStopMidProbe: SIGTERM while attempts are in flight: the daemon says STOPPING,
// every attempt that started (each sends one echo request, counted on the router) has its
// verdict line, no line is torn, and it exits 0.
func TestDaemonStopMidProbe(t *testing.T) {
	l := requireLab(t)
	if err := l.Router.Nft("table inet reachd_stop {\n chain lost { type filter hook forward priority -1; policy accept;\n  ip daddr 203.0.113.180-203.0.113.219 icmp type echo-request counter drop\n }\n}\n"); err != nil {
		t.Fatal(err)
	}
	defer l.Router.Nft("delete table inet reachd_stop\n")
	var targets []string
	for i := 180; i < 220; i++ {
		targets = append(targets, fmt.Sprintf("203.0.113.%d", i))
	}
	cfg := fmt.Sprintf("defaults: {interval: 2s, timeout: 1500ms, retries: 0}\nmetrics: {listen: \"\"}\nlog: {verdicts: all}\nprobes:\n  - {name: lost, kind: icmp, targets: %s}\n", yamlList(targets))
	d := startReady(t, l, cfg, DaemonOptions{})
	time.Sleep(3200 * time.Millisecond) // a round and a half: most echoes are in flight
	d.Signal(syscall.SIGTERM)
	if code := d.Wait(10 * time.Second); code != 0 {
		t.Fatalf("exit %d; stderr:\n%s", code, d.Stderr())
	}
	if _, ok := d.WaitNote(time.Second, "STOPPING=1"); !ok {
		t.Error("no STOPPING=1")
	}
	out, err := l.Router.Command("nft", "list", "table", "inet", "reachd_stop").CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	var sent int
	if i := strings.Index(string(out), "packets "); i >= 0 {
		fmt.Sscanf(string(out[i:]), "packets %d", &sent)
	}
	lines := d.Lines()
	for _, ln := range lines {
		if ln.V == nil {
			t.Errorf("torn or foreign line: %q", ln.Text)
		}
	}
	t.Logf("%d echo requests sent, %d verdict lines", sent, len(lines))
	if sent == 0 || len(lines) != sent {
		t.Errorf("%d attempts started (echo requests seen by the router), %d verdicts: every started attempt must have its verdict", sent, len(lines))
	}
}

// TestDaemonNotify plays systemd's side: READY only once the TC programs are attached,
// with a STATUS line; WATCHDOG pings at half WATCHDOG_USEC; STOPPING on SIGTERM.
func TestDaemonNotify(t *testing.T) {
	l := requireLab(t)
	cfg := "defaults: {interval: 60s}\nmetrics: {listen: \"\"}\nprobes:\n" + probeA
	d, err := l.StartDaemon(reachdBin, cfg, DaemonOptions{WatchdogUsec: 200_000})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Kill()
	ready, ok := d.WaitNote(10*time.Second, "READY=1")
	if !ok {
		t.Fatalf("no READY; stderr:\n%s", d.Stderr())
	}
	if !strings.Contains(ready.State, "STATUS=probing 1 targets") {
		t.Errorf("READY without a STATUS line: %q", ready.State)
	}
	// Attached before READY: the probe's interface has reachd's TCX programs (its first
	// tick is up to 60 s away, so no probe attached them).
	if tcx, legacy := reachdTC(t, l, ClientIf); tcx+legacy < 2 {
		t.Errorf("READY before the TC programs were attached to %s (%d TCX programs, %d legacy filters)", ClientIf, tcx, legacy)
	}
	time.Sleep(time.Second)
	pings := 0
	for _, n := range d.Notes() {
		if n.State == "WATCHDOG=1" {
			pings++
		}
	}
	if pings < 5 {
		t.Errorf("%d watchdog pings in a second at WATCHDOG_USEC=200ms (want one per 100 ms)", pings)
	}
	d.Signal(syscall.SIGTERM)
	if _, ok := d.WaitNote(5*time.Second, "STOPPING=1"); !ok {
		t.Error("no STOPPING=1 after SIGTERM")
	}
	if code := d.Wait(10 * time.Second); code != 0 {
		t.Errorf("exit %d", code)
	}
}

// TestDaemonStdoutIsJournal: under systemd stdout is the journal's stream (JOURNAL_STREAM):
// a verdict is then recorded once, as native fields, not also as a JSON line on stdout.
func TestDaemonStdoutIsJournal(t *testing.T) {
	l := requireLab(t)
	d := startReady(t, l, smallConfig(probeA), DaemonOptions{Journal: true, JournalStdout: true})
	time.Sleep(2500 * time.Millisecond)
	recs, err := d.Journal("MESSAGE_ID=6a1e3d0c9b8f4e27a5d2c7b14f9e3a68")
	if err != nil {
		t.Fatal(err)
	}
	stream, err := d.Journal("SYSLOG_IDENTIFIER=reachd-stdout")
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) < 2 {
		t.Errorf("%d verdict records in the journal, want one a second", len(recs))
	}
	for _, r := range stream {
		if strings.Contains(fmt.Sprint(r["MESSAGE"]), `"probe"`) {
			t.Errorf("a verdict went to the journal twice, also as a JSON line on stdout: %v", r["MESSAGE"])
			break
		}
	}
	said := false // stderr is the journal's stream too (systemd-cat, as under systemd)
	for _, r := range stream {
		said = said || strings.Contains(fmt.Sprint(r["MESSAGE"]), "stdout is the journal")
	}
	if !said {
		t.Errorf("the daemon did not say stdout is the journal")
	}
}

// TestDaemonDropsCapabilities: started as root, the daemon keeps only CAP_NET_RAW,
// CAP_NET_ADMIN and CAP_BPF once it runs (CAP_PERFMON, which loading needs, is gone), and they suffice for what comes later: a reload
// adds probes through another interface (TC attached there after the drop, a new raw echo
// socket) and over a layer-3 link (its TC pair attached after the drop), wire-timed.
func TestDaemonDropsCapabilities(t *testing.T) {
	l := requireLab(t)
	if err := l.SecondUplink(); err != nil {
		t.Fatal(err)
	}
	if err := l.RelayLink(TunLink); err != nil {
		t.Fatal(err)
	}
	d := startReady(t, l, smallConfig(probeA), DaemonOptions{})
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	const want = 1<<12 | 1<<13 | 1<<39 // CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF
	for _, field := range []string{"CapEff", "CapPrm", "CapInh", "CapAmb"} {
		var got uint64
		for _, line := range strings.Split(string(status), "\n") {
			if v, ok := strings.CutPrefix(line, field+":"); ok {
				fmt.Sscanf(strings.TrimSpace(v), "%x", &got)
			}
		}
		if exp := map[bool]uint64{true: want}[field == "CapEff" || field == "CapPrm"]; got != exp {
			t.Errorf("%s %#x, want %#x", field, got, exp)
		}
	}
	more := "  - {name: up2, kind: icmp, interface: [" + UplinkClientIf + "], targets: [203.0.113.2]}\n" +
		"  - {name: up2tcp, kind: tcp, interface: [" + UplinkClientIf + "], targets: [\"203.0.113.2:80\"]}\n" +
		"  - {name: l3, kind: tcp, source: " + TunLink.ClientV4.Addr().String() + ", targets: [\"203.0.113.2:80\"]}\n"
	if err := os.WriteFile(d.Config, []byte(smallConfig(probeA+more)), 0o644); err != nil {
		t.Fatal(err)
	}
	hup := time.Now()
	d.Signal(syscall.SIGHUP)
	for _, p := range []string{"up2", "up2tcp", "l3"} {
		ln, ok := d.WaitLine(5*time.Second, func(ln Line) bool { return ln.V != nil && ln.V["probe"] == p && ln.At.After(hup) })
		if !ok {
			t.Fatalf("no verdict of %s after the reload; stderr:\n%s", p, d.Stderr())
		}
		if ln.V["reason"] != "ok" || ln.V["timing_source"] != "wire" || (p != "l3" && ln.V["interface"] != UplinkClientIf) {
			t.Errorf("%s after the drop: %v [%v] via %v: %v\nstderr:\n%s", p, ln.V["reason"], ln.V["timing_source"], ln.V["interface"], ln.V["detail"], d.Stderr())
		}
	}
}

// TestOneShotBesideDaemon: a `reachd probe` run beside the daemon is wire-timed, and when
// it exits the daemon's programs are still attached and its probes still wire-timed.
func TestOneShotBesideDaemon(t *testing.T) {
	l := requireLab(t)
	d := startReady(t, l, smallConfig(probeA), DaemonOptions{})
	tcxBefore, legacyBefore := reachdTC(t, l, ClientIf)
	for _, env := range [][]string{nil, {"REACHD_TC=legacy"}} {
		vs, code := probeKind(t, l, "tcp", env, "--retries", "0", ap(ServerV4, PortOpen))
		if code != 0 || len(vs) != 1 || vs[0]["timing_source"] != "wire" {
			t.Errorf("one-shot %v beside the daemon: exit %d %v", env, code, vs)
		}
	}
	if tcx, legacy := reachdTC(t, l, ClientIf); tcx != tcxBefore || legacy != legacyBefore {
		t.Errorf("after the one-shot runs: %d TCX programs and %d legacy filters, the daemon had %d and %d", tcx, legacy, tcxBefore, legacyBefore)
	}
	since := time.Now()
	ln, ok := d.WaitLine(3*time.Second, func(ln Line) bool { return ln.V != nil && ln.At.After(since) })
	if !ok || ln.V["timing_source"] != "wire" {
		t.Errorf("the daemon after the one-shot runs: %v", ln.Text)
	}
}

// startReady starts a daemon with config in the lab, to be killed when the test ends, and
// waits for its READY.
func startReady(t *testing.T, l *Lab, config string, opt DaemonOptions) *Daemon {
	t.Helper()
	d, err := l.StartDaemon(reachdBin, config, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Kill)
	if _, ok := d.WaitNote(30*time.Second, "READY=1"); !ok {
		t.Fatalf("no READY; stderr:\n%s", d.Stderr())
	}
	return d
}

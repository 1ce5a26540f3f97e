package lab

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"reachd/pkg/verdict"
)

const (
	daemonInterval = 2 * time.Second
	metricsAddr    = "127.0.0.1:9798"
)

// daemonTargets are ~200 targets of every kind in the AnyIP blocks (.160–.219 and
// 2001:db8:a::2000–): tcp and icmp to each, and udp to the server's echo port.
func daemonTargets() (tcp, icmp, udp []string) {
	v4 := netip.MustParseAddr("203.0.113.160")
	for range 60 {
		tcp = append(tcp, ap(v4, PortOpen))
		icmp = append(icmp, v4.String())
		v4 = v4.Next()
	}
	v6 := netip.MustParseAddr("2001:db8:a::2000")
	for range 30 {
		tcp = append(tcp, ap(v6, PortOpen))
		icmp = append(icmp, v6.String())
		v6 = v6.Next()
	}
	udp = []string{ap(ServerV4, PortUDPEcho), ap(ServerV6, PortUDPEcho)}
	return tcp, icmp, udp
}

func yamlList(xs []string) string {
	q := make([]string, len(xs))
	for i, x := range xs {
		q[i] = fmt.Sprintf("%q", x)
	}
	return "[" + strings.Join(q, ", ") + "]"
}

func daemonConfig(extra string) string {
	tcp, icmp, udp := daemonTargets()
	return fmt.Sprintf(`defaults: {interval: %s, timeout: 700ms, retries: 0}
metrics: {listen: %q}
log: {verdicts: changes}
probes:
  - name: web
    kind: tcp
    targets: %s
    labels: {site: lab}
  - name: ping
    kind: icmp
    targets: %s
  - name: echo
    kind: udp
    targets: %s
    udp: {payload_hex: "6869"}
%s`, daemonInterval, metricsAddr, yamlList(tcp), yamlList(icmp), yamlList(udp), extra)
}

// fault is one fault the daemon test injects and removes, and what it must say meanwhile.
type fault struct {
	probe, target string
	reason        verdict.Reason
	rule          string // nft rule on the router's forward chain
}

func daemonFaults() []fault {
	return []fault{
		{"web", "203.0.113.160:80", verdict.Timeout, "ip daddr 203.0.113.160 tcp dport 80 drop"},
		{"web", "203.0.113.161:80", verdict.Refused, "ip daddr 203.0.113.161 tcp dport 80 reject with tcp reset"},
		{"web", "[2001:db8:a::2000]:80", verdict.AdminProhibited, "ip6 daddr 2001:db8:a::2000 tcp dport 80 reject with icmpv6 type admin-prohibited"},
		{"ping", "203.0.113.162", verdict.HostUnreachable, "ip daddr 203.0.113.162 icmp type echo-request reject with icmp type host-unreachable"},
		{"ping", "2001:db8:a::2001", verdict.Timeout, "ip6 daddr 2001:db8:a::2001 icmpv6 type echo-request drop"},
		{"echo", ap(ServerV4, PortUDPEcho), verdict.OpenFiltered, fmt.Sprintf("ip daddr %s udp dport %d drop", ServerV4, PortUDPEcho)},
	}
}

// TestDaemonFaults: a daemon probing ~200 targets of every kind while faults are injected
// and removed: each change appears in the JSON stream and in the journal with the right
// reason within two intervals, and in the metrics; nothing else is logged (changes only).
func TestDaemonFaults(t *testing.T) {
	l := requireLab(t)
	if err := l.Router.Nft("table inet reachd_daemon {\n chain faults { type filter hook forward priority -1; policy accept; }\n}\n"); err != nil {
		t.Fatal(err)
	}
	defer l.Router.Nft("delete table inet reachd_daemon\n")
	d, err := l.StartDaemon(reachdBin, daemonConfig(""), DaemonOptions{Journal: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Kill()
	tcp, icmp, udp := daemonTargets()
	total := len(tcp) + len(icmp) + len(udp)
	if _, ok := d.WaitNote(10*time.Second, "READY=1"); !ok {
		t.Fatalf("no READY; stderr:\n%s", d.Stderr())
	}
	// The first round: one ok verdict per target (changes: the first is logged).
	if _, ok := d.WaitLine(3*daemonInterval, func(Line) bool { return len(d.Lines()) >= total }); !ok {
		t.Fatalf("%d of %d first verdicts; stderr:\n%s", len(d.Lines()), total, d.Stderr())
	}
	for _, ln := range d.Lines() {
		if ln.V == nil || ln.V["reason"] != "ok" {
			t.Fatalf("first round: %s", ln.Text)
		}
		if err := schema.Validate([]byte(ln.Text)); err != nil {
			t.Errorf("verdict does not validate: %v\n%s", err, ln.Text)
		}
	}
	faults := daemonFaults()
	for _, f := range faults {
		if err := l.Router.Nft("add rule inet reachd_daemon faults " + f.rule + "\n"); err != nil {
			t.Fatal(err)
		}
	}
	injected := time.Now()
	for _, f := range faults {
		waitChange(t, d, f, f.reason, injected)
	}
	m, err := d.Metrics(metricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range faults {
		series := fmt.Sprintf(`{dns_server="",family="%s",interface="",kind="%s",probe="%s",site="%s",target="%s"}`,
			familyOf(f.target), kindOf(f.probe), f.probe, map[bool]string{true: "lab"}[f.probe == "web"], f.target)
		withReason := strings.Replace(series, `,site=`, `,reason="`+string(f.reason)+`",site=`, 1)
		if !strings.Contains(m, "reachd_probe_verdicts_total"+withReason+" ") || !strings.Contains(m, "reachd_probe_success"+series+" 0\n") {
			t.Errorf("metrics lack reachd_probe_verdicts_total%s and reachd_probe_success%s 0", withReason, series)
		}
	}
	checkPromtool(t, m)
	if err := l.Router.Nft("flush chain inet reachd_daemon faults\n"); err != nil {
		t.Fatal(err)
	}
	removed := time.Now()
	for _, f := range faults {
		waitChange(t, d, f, verdict.OK, removed)
	}
	time.Sleep(daemonInterval) // a round more: nothing unchanged may be logged
	if got, want := len(d.Lines()), total+2*len(faults); got != want {
		t.Errorf("%d lines logged, want %d: the first verdicts and each change, nothing more", got, want)
	}
	checkJournal(t, d, faults)
	d.Signal(syscall.SIGTERM)
	if code := d.Wait(10 * time.Second); code != 0 {
		t.Errorf("exit %d after SIGTERM; stderr:\n%s", code, d.Stderr())
	}
}

func familyOf(target string) string {
	if strings.Contains(target, ":") && strings.Count(target, ":") > 1 {
		return "ipv6"
	}
	return "ipv4"
}

func kindOf(probe string) string {
	return map[string]string{"web": "tcp", "ping": "icmp", "echo": "udp"}[probe]
}

// waitChange waits for f's target to log reason after since, within two intervals.
func waitChange(t *testing.T, d *Daemon, f fault, reason verdict.Reason, since time.Time) {
	t.Helper()
	ln, ok := d.WaitLine(2*daemonInterval+2*time.Second, func(ln Line) bool {
		return ln.V != nil && ln.V["target"] == f.target && ln.V["reason"] == string(reason) && ln.At.After(since)
	})
	if !ok {
		t.Errorf("%s %s: no %s verdict within two intervals", f.probe, f.target, reason)
		return
	}
	start, _ := time.Parse(time.RFC3339Nano, ln.V["time"].(string))
	if late := start.Sub(since); late > 2*daemonInterval {
		t.Errorf("%s %s: %s probed %v after the change, more than two intervals", f.probe, f.target, reason, late)
	}
	t.Logf("%s %s → %s in %v: %v", f.probe, f.target, reason, ln.At.Sub(since).Round(time.Millisecond), ln.V["detail"])
}

// checkJournal: the journal has the same verdict records as the JSON stream, with the
// contract's fields.
func checkJournal(t *testing.T, d *Daemon, faults []fault) {
	t.Helper()
	recs, err := d.Journal("MESSAGE_ID=6a1e3d0c9b8f4e27a5d2c7b14f9e3a68")
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != len(d.Lines()) {
		t.Errorf("journal has %d verdict records, the JSON stream %d lines", len(recs), len(d.Lines()))
	}
	byTarget := map[string][]map[string]any{}
	for _, r := range recs {
		byTarget[fmt.Sprint(r["REACHD_TARGET"])] = append(byTarget[fmt.Sprint(r["REACHD_TARGET"])], r)
		if err := schema.Validate([]byte(fmt.Sprint(r["REACHD_VERDICT"]))); err != nil {
			t.Errorf("REACHD_VERDICT does not validate: %v", err)
		}
		for _, k := range []string{"MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "REACHD_PROBE", "REACHD_KIND", "REACHD_ADDR", "REACHD_FAMILY",
			"REACHD_OK", "REACHD_REASON", "REACHD_LAYER", "REACHD_DETAIL", "REACHD_TIMING_SOURCE", "REACHD_ATTEMPTS"} {
			if _, ok := r[k]; !ok {
				t.Errorf("record for %v lacks %s", r["REACHD_TARGET"], k)
			}
		}
	}
	for _, f := range faults {
		rs := byTarget[f.target]
		if len(rs) != 3 {
			t.Errorf("%s: %d journal records, want 3 (first, fault, recovery)", f.target, len(rs))
			continue
		}
		for i, want := range []struct{ reason, prio string }{{"ok", "6"}, {string(f.reason), "4"}, {"ok", "5"}} {
			if rs[i]["REACHD_REASON"] != want.reason || rs[i]["PRIORITY"] != want.prio {
				t.Errorf("%s record %d: reason %v priority %v, want %s %s", f.target, i, rs[i]["REACHD_REASON"], rs[i]["PRIORITY"], want.reason, want.prio)
			}
		}
		if f.probe == "web" && rs[1]["REACHD_LABEL_SITE"] != "lab" {
			t.Errorf("%s: REACHD_LABEL_SITE %v", f.target, rs[1]["REACHD_LABEL_SITE"])
		}
		if f.reason == verdict.HostUnreachable && rs[1]["REACHD_ICMP_FROM"] != RouterClientV4.String() {
			t.Errorf("%s: REACHD_ICMP_FROM %v, want the router %s", f.target, rs[1]["REACHD_ICMP_FROM"], RouterClientV4)
		}
	}
}

// checkPromtool runs promtool check metrics on a scrape.
func checkPromtool(t *testing.T, metrics string) {
	t.Helper()
	if _, err := exec.LookPath("promtool"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("promtool missing (Debian package prometheus); CI=true forbids skipping")
		}
		t.Log("promtool missing: metrics not linted")
		return
	}
	cmd := exec.Command("promtool", "check", "metrics")
	cmd.Stdin = strings.NewReader(metrics)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

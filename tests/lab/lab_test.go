package lab

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"reachd/pkg/verdict"
)

var (
	reachdBin string
	schema    *verdict.Schema
	shared    *Lab
	sharedErr error
)

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	if os.Getenv(childEnv) != "" {
		return runChild()
	}
	if os.Getenv(holdEnv) != "" {
		defer CloseAll()
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		go func() { <-sig; CloseAll(); os.Exit(130) }()
		return holdLab()
	}
	// Interrupted runs still tear their namespaces down; a kill -9 leaves them to Reap.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	go func() { <-sig; CloseAll(); os.Exit(130) }()
	defer CloseAll()

	md, err := os.ReadFile("../../docs/verdict.md")
	if err == nil {
		schema, err = verdict.ParseSchema(md)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "load docs/verdict.md:", err)
		return 1
	}
	reachdBin = os.Getenv("REACHD_BIN")
	if reachdBin == "" {
		dir, err := os.MkdirTemp("", "reachd-lab-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		reachdBin = filepath.Join(dir, "reachd")
		build := exec.Command("go", "build", "-o", reachdBin, "../../cmd/reachd")
		build.Env = append(os.Environ(), "CGO_ENABLED=0") // as make build: the daemon drops capabilities
		if out, err := build.CombinedOutput(); err != nil {
			fmt.Fprintf(os.Stderr, "build reachd: %v\n%s", err, out)
			return 1
		}
	}
	return m.Run()
}

// requireLab returns the shared lab, skipping without root — except under CI=true, where a
// skipped privileged test would hide that nothing ran, so it fails instead.
func requireLab(t *testing.T) *Lab {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("lab tests need root and CI=true forbids skipping them")
		}
		t.Skip("lab tests need root")
	}
	if shared == nil && sharedErr == nil {
		shared, sharedErr = New()
		if sharedErr == nil {
			sharedErr = shared.SetupFixtures()
		}
	}
	if sharedErr != nil {
		t.Fatalf("lab: %v", sharedErr)
	}
	return shared
}

// probe runs the built reachd in the client namespace and returns its verdicts, each
// validated against docs/verdict.md.
func probe(t *testing.T, l *Lab, args ...string) ([]map[string]any, int) {
	t.Helper()
	return probeEnv(t, l, nil, args...)
}

// probeEnv is probe with extra environment variables (KEY=VALUE).
func probeEnv(t *testing.T, l *Lab, env []string, args ...string) ([]map[string]any, int) {
	t.Helper()
	return probeKind(t, l, "tcp", env, args...)
}

// probeKind is probeEnv for any probe kind.
func probeKind(t *testing.T, l *Lab, kind string, env []string, args ...string) ([]map[string]any, int) {
	t.Helper()
	cmd := l.Client.Command(reachdBin, append([]string{"probe", kind, "--json"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	return runVerdicts(t, cmd)
}

// runVerdicts runs cmd (a reachd probe --json) and returns its verdicts, each validated
// against docs/verdict.md, and its exit status.
func runVerdicts(t *testing.T, cmd *exec.Cmd) ([]map[string]any, int) {
	t.Helper()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run reachd: %v", err)
	}
	if stderr.Len() > 0 && code != 2 {
		t.Errorf("stderr: %s", stderr.String())
	}
	var vs []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line == "" {
			continue
		}
		if err := schema.Validate([]byte(line)); err != nil {
			t.Errorf("verdict does not validate against docs/verdict.md: %v\n%s", err, line)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatal(err)
		}
		vs = append(vs, m)
	}
	return vs, code
}

// withErrorSource gives a case that expects an IPv4 error made by the router a client source
// of its own, so that no other case can spend its error budget (sources.go).
func withErrorSource(t *testing.T, l *Lab, from netip.Addr, args []string) []string {
	t.Helper()
	if from != RouterClientV4 {
		return args
	}
	src, err := l.ErrorSourceV4()
	if err != nil {
		t.Fatal(err)
	}
	return append(args, "--source", src.String())
}

func icmpFrom(v map[string]any) string {
	w, _ := v["wire"].(map[string]any)
	ic, _ := w["icmp"].(map[string]any)
	s, _ := ic["from"].(string)
	return s
}

func ap(a netip.Addr, port int) string { return netip.AddrPortFrom(a, uint16(port)).String() }

// tcpCase is one row of TestTCPReasons.
type tcpCase struct {
	name, target string
	args         []string
	reason       verdict.Reason
	layer        verdict.Layer
	from         netip.Addr // ICMP sender expected, if any
}

// tcpCases are TestTCPReasons' rows for one mode. Each mode probes a client-link ghost of
// its own: probes of one unanswered neighbor share its resolution, and the later of two
// would see the kernel give up on it (3 s after the earlier began) within its 2 s timeout,
// a different path from the one this row tests.
func tcpCases(mode string) []tcpCase {
	clientGhost := map[string]netip.Addr{"ebpf": ClientGhostV4, "no-ebpf": ClientGhostV4b}[mode]
	return []tcpCase{
		{"open v4", ap(ServerV4, PortOpen), nil, verdict.OK, verdict.LayerOK, netip.Addr{}},
		{"open v6", ap(ServerV6, PortOpen), nil, verdict.OK, verdict.LayerOK, netip.Addr{}},
		{"open anyip v4", ap(netip.MustParseAddr("203.0.113.200"), PortOpen), nil, verdict.OK, verdict.LayerOK, netip.Addr{}},
		{"refused v4", ap(ServerV4, PortClosed), nil, verdict.Refused, verdict.LayerTransport, netip.Addr{}},
		{"refused v6", ap(ServerV6, PortClosed), nil, verdict.Refused, verdict.LayerTransport, netip.Addr{}},
		{"router reset v4", ap(ServerV4, PortReset), nil, verdict.Refused, verdict.LayerTransport, netip.Addr{}},
		{"router reset v6", ap(ServerV6, PortReset), nil, verdict.Refused, verdict.LayerTransport, netip.Addr{}},
		{"drop v4", ap(ServerV4, PortDrop), []string{"--timeout", "1500ms"}, verdict.Timeout, verdict.LayerTransport, netip.Addr{}},
		{"drop v6", ap(ServerV6, PortDrop), []string{"--timeout", "1500ms"}, verdict.Timeout, verdict.LayerTransport, netip.Addr{}},
		{"admin nft v4", ap(AdminV4, PortOpen), nil, verdict.AdminProhibited, verdict.LayerNetwork, RouterClientV4},
		{"admin nft v6", ap(AdminV6, PortOpen), nil, verdict.AdminProhibited, verdict.LayerNetwork, RouterClientV6},
		{"admin route v4", ap(ProhibV4.Addr(), PortOpen), nil, verdict.AdminProhibited, verdict.LayerNetwork, RouterClientV4},
		{"admin route v6", ap(ProhibV6.Addr(), PortOpen), nil, verdict.AdminProhibited, verdict.LayerNetwork, RouterClientV6},
		{"admin local route v4", ap(LocalProhibV4.Addr(), PortOpen), nil, verdict.AdminProhibited, verdict.LayerLocal, netip.Addr{}},
		{"unreachable route v4", ap(UnreachV4.Addr(), PortOpen), nil, verdict.HostUnreachable, verdict.LayerNetwork, RouterClientV4},
		{"unreachable route v6", ap(UnreachV6.Addr(), PortOpen), nil, verdict.NetUnreachable, verdict.LayerNetwork, RouterClientV6},
		{"ghost neighbor v4", ap(GhostV4, PortOpen), nil, verdict.HostUnreachable, verdict.LayerNetwork, RouterClientV4},
		{"ghost neighbor v6", ap(GhostV6, PortOpen), nil, verdict.HostUnreachable, verdict.LayerNetwork, RouterClientV6},
		{"client ghost neighbor v4", ap(clientGhost, PortOpen), []string{"--timeout", "2s"}, verdict.HostUnreachable, verdict.LayerLink, netip.Addr{}},
		{"router no route v4", ap(UnroutedV4, PortOpen), nil, verdict.NetUnreachable, verdict.LayerNetwork, RouterClientV4},
		{"router no route v6", ap(UnroutedV6, PortOpen), nil, verdict.NetUnreachable, verdict.LayerNetwork, RouterClientV6},
		{"no client route v4", ap(NoRouteV4, PortOpen), nil, verdict.NoRoute, verdict.LayerLocal, netip.Addr{}},
		{"no client route v6", ap(NoRouteV6, PortOpen), nil, verdict.NoRoute, verdict.LayerLocal, netip.Addr{}},
		{"foreign source", ap(ServerV4, PortOpen), []string{"--source", UnassignedClientV4.String()}, verdict.LocalError, verdict.LayerLocal, netip.Addr{}},
		{"link-local zone", "[fe80::1%" + ClientIf + "]:8080", nil, verdict.OK, verdict.LayerOK, netip.Addr{}},
		{"link-local --interface", "[fe80::1]:8080", []string{"--interface", ClientIf}, verdict.OK, verdict.LayerOK, netip.Addr{}},
		{"--interface v4", ap(ServerV4, PortOpen), []string{"--interface", ClientIf}, verdict.OK, verdict.LayerOK, netip.Addr{}},
		{"--source v6", ap(ServerV6, PortOpen), []string{"--source", ClientV6.String()}, verdict.OK, verdict.LayerOK, netip.Addr{}},
	}
}

func TestTCPReasons(t *testing.T) {
	l := requireLab(t)
	// Every reason must come out the same with and without eBPF: only timing_source and the
	// wire instants may differ.
	for _, mode := range []string{"ebpf", "no-ebpf"} {
		for _, c := range tcpCases(mode) {
			t.Run(mode+"/"+c.name, func(t *testing.T) {
				t.Parallel()
				args := withErrorSource(t, l, c.from, append([]string{"--retries", "0"}, c.args...))
				if mode == "no-ebpf" {
					args = append(args, "--no-ebpf")
				}
				vs, code := probe(t, l, append(args, c.target)...)
				if len(vs) != 1 {
					t.Fatalf("want 1 verdict, got %d (exit %d)", len(vs), code)
				}
				v := vs[0]
				if verdict.Reason(v["reason"].(string)) != c.reason || verdict.Layer(v["layer"].(string)) != c.layer {
					t.Logf("local %v; router counters:\n%s", v["local"], l.Router.ICMPCounters())
					t.Fatalf("reason %v layer %v, want %s %s: %v", v["reason"], v["layer"], c.reason, c.layer, v["detail"])
				}
				if wantCode := map[bool]int{true: 0, false: 1}[c.reason == verdict.OK]; code != wantCode {
					t.Errorf("exit %d, want %d", code, wantCode)
				}
				if c.from.IsValid() && icmpFrom(v) != c.from.String() {
					t.Errorf("ICMP from %q, want %s (%v)", icmpFrom(v), c.from, v["detail"])
				}
				if mode == "no-ebpf" && v["timing_source"] == verdict.SourceWire {
					t.Errorf("timing_source wire with --no-ebpf")
				}
				t.Logf("%s → %s/%s [%s]: %s", c.target, v["reason"], v["layer"], v["timing_source"], v["detail"])
			})
		}
	}
}

func TestTCPRetriesRecorded(t *testing.T) {
	l := requireLab(t)
	vs, code := probe(t, l, "--retries", "2", "--timeout", "300ms", ap(ServerV4, PortDrop))
	if code != 1 || len(vs) != 1 {
		t.Fatalf("exit %d, %d verdicts", code, len(vs))
	}
	v := vs[0]
	tries, _ := v["tries"].([]any)
	if v["attempts"].(float64) != 3 || len(tries) != 3 {
		t.Fatalf("attempts %v tries %d", v["attempts"], len(tries))
	}
	for i, tr := range tries {
		_, hasBackoff := tr.(map[string]any)["backoff_ms"]
		if hasBackoff != (i < 2) {
			t.Errorf("try %d backoff present=%v", i+1, hasBackoff)
		}
	}
	// A definite answer is not retried even with retries left.
	vs, _ = probe(t, l, "--retries", "3", ap(ServerV4, PortClosed))
	if vs[0]["attempts"].(float64) != 1 {
		t.Errorf("refused was retried: %v", vs[0]["attempts"])
	}
}

func TestFamilyBoth(t *testing.T) {
	l := requireLab(t)
	// Literals carry one family each; several targets come back in the order given.
	vs, code := probe(t, l, "--family", "both", ap(ServerV6, PortOpen), ap(ServerV4, PortOpen))
	if code != 0 || len(vs) != 2 || vs[0]["family"] != "ipv6" || vs[1]["family"] != "ipv4" {
		t.Fatalf("exit %d verdicts %v", code, vs)
	}
}

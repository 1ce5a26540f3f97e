package lab

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"reachd/internal/testdns"
	"reachd/pkg/verdict"
)

// TestResolverPolicy: names of every kind resolve through one policy, --resolver ADDR
// here (the lab's resolver, each family): the verdict says who answered, and a failed
// resolution carries the dns reasons, whichever kind asked.
func TestResolverPolicy(t *testing.T) {
	l := requireLab(t)
	for _, res := range []string{ap(ServerV4, PortDNS), ap(ServerV6, PortDNS)} {
		for _, c := range []struct {
			name, kind, target string
			args               []string
			reason             verdict.Reason
			detail             string
		}{
			{"answer", "tcp", fmt.Sprintf("www.lab.example:%d", PortOpen), []string{"-4"}, verdict.OK, ""},
			{"answer v6", "tcp", fmt.Sprintf("www.lab.example:%d", PortOpen), []string{"-6"}, verdict.OK, ""},
			{"nxdomain", "tcp", fmt.Sprintf("nosuch.lab.example:%d", PortOpen), nil, verdict.DNSNXDomain, res + " NXDOMAIN"},
			{"servfail", "tcp", fmt.Sprintf("www.broken.example:%d", PortOpen), nil, verdict.DNSServfail, res + " SERVFAIL"},
			{"refused", "tcp", fmt.Sprintf("example.org:%d", PortOpen), nil, verdict.DNSRefused, res + " REFUSED"},
			{"no address of the family", "tcp", fmt.Sprintf("v6only.lab.example:%d", PortOpen), []string{"-4"}, verdict.DNSNoAnswer, "no IPv4 address"},
			{"http", "http", "http://nosuch.lab.example/", nil, verdict.DNSNXDomain, "NXDOMAIN"},
			{"tls", "tls", "nosuch.lab.example:443", nil, verdict.DNSNXDomain, "NXDOMAIN"},
			{"line", "line", "www.broken.example:25", []string{"--send", "", "--expect", "^220"}, verdict.DNSServfail, "SERVFAIL"},
		} {
			t.Run(familyOf(res)+"/"+c.name, func(t *testing.T) {
				t.Parallel()
				args := append([]string{"--retries", "0", "--resolver", res}, c.args...)
				vs, code := probeKind(t, l, c.kind, nil, append(args, c.target)...)
				if len(vs) != 1 {
					t.Fatalf("want 1 verdict, got %d (exit %d)", len(vs), code)
				}
				v := vs[0]
				t.Logf("→ %s/%s: %s (resolver %v, addr %v)", v["reason"], v["layer"], v["detail"], v["resolver"], v["addr"])
				if v["reason"] != string(c.reason) || !strings.Contains(v["detail"].(string), c.detail) || v["resolver"] != res {
					t.Fatalf("got %v %q resolver %v; want %s ~%q resolver %s", v["reason"], v["detail"], v["resolver"], c.reason, c.detail, res)
				}
				if c.reason != verdict.OK && v["layer"] != string(verdict.LayerResolve) {
					t.Errorf("layer %v, want resolve", v["layer"])
				}
			})
		}
	}
	t.Run("silent resolver", func(t *testing.T) {
		vs, _ := probeKind(t, l, "tcp", nil, "--retries", "0", "--timeout", "500ms", "--resolver", ap(ServerV4, PortDNS+1), fmt.Sprintf("www.lab.example:%d", PortOpen))
		if len(vs) != 1 || vs[0]["reason"] != string(verdict.DNSTimeout) || !strings.Contains(vs[0]["detail"].(string), "timeout") {
			t.Fatalf("got %v", vs)
		}
	})
	t.Run("not for dns", func(t *testing.T) {
		_, code := probeKind(t, l, "dns", nil, "--resolver", ap(ServerV4, PortDNS), "www.lab.example")
		if code != 2 {
			t.Fatalf("exit %d, want 2", code)
		}
	})
}

// closedResolverV4 is local to the server but nothing listens on its port 53: a
// resolver there answers with port unreachable.
var closedResolverV4 = netip.MustParseAddr("203.0.113.143")

// TestSystemResolvers: by default names go to /etc/hosts, then to each nameserver of
// /etc/resolv.conf in turn (its search domains too); the dns kind asks each of them, a
// verdict each. resolv.conf is the test's, in a private mount namespace.
func TestSystemResolvers(t *testing.T) {
	l := requireLab(t)
	conf := fmt.Sprintf("search lab.example\nnameserver %s\nnameserver %s\nnameserver %s\n", closedResolverV4, ServerV4, ServerV6)
	vs, code := probeResolvConf(t, l, conf, "tcp", "--retries", "0", fmt.Sprintf("www:%d", PortOpen))
	if len(vs) != 1 || vs[0]["reason"] != string(verdict.OK) || vs[0]["resolver"] != ap(ServerV4, PortDNS) {
		t.Fatalf("tcp www (exit %d): %v", code, vs)
	}
	t.Logf("tcp www → %s via %v: %s", vs[0]["reason"], vs[0]["resolver"], vs[0]["detail"])
	vs, code = probeResolvConf(t, l, conf, "dns", "--retries", "0", "www.lab.example")
	if len(vs) != 3 {
		t.Fatalf("dns: want a verdict per nameserver, got %d (exit %d)", len(vs), code)
	}
	want := map[string]verdict.Reason{ap(closedResolverV4, 53): verdict.PortUnreachable, ap(ServerV4, 53): verdict.OK, ap(ServerV6, 53): verdict.OK}
	for _, v := range vs {
		t.Logf("dns via %v → %s: %s", v["server"], v["reason"], v["detail"])
		if r, ok := want[fmt.Sprint(v["server"])]; !ok || v["reason"] != string(r) {
			t.Errorf("server %v: %v, want %v", v["server"], v["reason"], r)
		}
	}
}

// TestStubResolverNamed: a resolv.conf that names systemd-resolved's stub (127.0.0.53) gets
// dns verdicts that say so: its answers are its upstreams', relayed.
func TestStubResolverNamed(t *testing.T) {
	l := requireLab(t)
	var pc net.PacketConn
	err := l.Client.Do(func() (err error) { pc, err = net.ListenPacket("udp", "127.0.0.53:53"); return err })
	if err != nil {
		t.Fatal(err)
	}
	srv, err := testdns.Start(&testdns.Handler{V4: ServerV4.String(), V6: ServerV6.String()}, testdns.Listeners{UDP: pc})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	conf := "nameserver 127.0.0.53\noptions edns0 trust-ad\nsearch .\n"
	vs, code := probeResolvConf(t, l, conf, "dns", "--retries", "0", "www.lab.example")
	if len(vs) != 1 {
		t.Fatalf("want 1 verdict, got %d (exit %d)", len(vs), code)
	}
	d, _ := vs[0]["dns"].(map[string]any)
	t.Logf("→ %s: %s (dns %v)", vs[0]["reason"], vs[0]["detail"], d)
	if vs[0]["reason"] != string(verdict.OK) || vs[0]["server"] != "127.0.0.53:53" || d["stub"] != "systemd-resolved" {
		t.Errorf("got %v server %v stub %v; want ok from 127.0.0.53:53, stub systemd-resolved", vs[0]["reason"], vs[0]["server"], d["stub"])
	}
	vs, _ = probeResolvConf(t, l, conf, "tcp", "--retries", "0", "-4", fmt.Sprintf("www.lab.example:%d", PortOpen))
	if len(vs) != 1 || vs[0]["reason"] != string(verdict.OK) || vs[0]["resolver"] != "127.0.0.53:53" {
		t.Errorf("tcp through the stub: %v", vs)
	}
}

// probeResolvConf runs reachd probe KIND --json in the client namespace with conf as its
// /etc/resolv.conf (a private mount namespace), and returns its verdicts.
func probeResolvConf(t *testing.T, l *Lab, conf, kind string, args ...string) ([]map[string]any, int) {
	t.Helper()
	rc := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(rc, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	script := `mount --bind "$RC" /etc/resolv.conf && exec "$@"`
	cmd := exec.Command("nsenter", append([]string{"--net=" + l.Client.Path(), "--", "unshare", "-m", "--propagation", "private",
		"sh", "-c", script, "sh", reachdBin, "probe", kind, "--json"}, args...)...)
	cmd.Env = append(os.Environ(), "RC="+rc)
	return runVerdicts(t, cmd)
}

// TestDaemonResolvConf: the daemon follows resolv.conf as it changes: a dns probe without
// --server asks the new nameservers (a verdict each; the old one's series go), and a name
// probed by another kind is resolved through them.
func TestDaemonResolvConf(t *testing.T) {
	l := requireLab(t)
	cfg := fmt.Sprintf("defaults: {interval: 1s, timeout: 500ms, retries: 0}\nmetrics: {listen: %q}\nlog: {verdicts: all, journald: off}\nprobes:\n"+
		"  - {name: resolvers, kind: dns, targets: [www.lab.example]}\n"+
		"  - {name: web, kind: tcp, family: ipv4, targets: [\"www.lab.example:%d\"]}\n", metricsAddr, PortOpen)
	d := startReady(t, l, cfg, DaemonOptions{ResolvConf: "nameserver " + ServerV4.String() + "\n"})
	since := time.Now()
	expect := func(probe, key, value, reason string) {
		t.Helper()
		ln, ok := d.WaitLine(15*time.Second, func(ln Line) bool {
			return ln.V != nil && ln.At.After(since) && ln.V["probe"] == probe && ln.V[key] == value
		})
		if !ok {
			t.Fatalf("no verdict of %s with %s %s; stderr:\n%s", probe, key, value, d.Stderr())
		}
		if ln.V["reason"] != reason {
			t.Errorf("%s with %s %s: %v (%v), want %s", probe, key, value, ln.V["reason"], ln.V["detail"], reason)
		}
	}
	expect("resolvers", "server", ap(ServerV4, 53), "ok")
	expect("web", "resolver", ap(ServerV4, 53), "ok")
	if err := d.ResolvConf(fmt.Sprintf("nameserver %s\nnameserver %s\n", ServerV6, closedResolverV4)); err != nil {
		t.Fatal(err)
	}
	since = time.Now()
	expect("resolvers", "server", ap(ServerV6, 53), "ok")
	expect("resolvers", "server", ap(closedResolverV4, 53), "port_unreachable")
	expect("web", "resolver", ap(ServerV6, 53), "ok")
	m, err := d.Metrics(metricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	for server, want := range map[string]string{ap(ServerV6, 53): " 1\n", ap(closedResolverV4, 53): " 0\n", ap(ServerV4, 53): ""} {
		series := fmt.Sprintf(`reachd_probe_success{dns_server="%s",family="%s",interface="",kind="dns",probe="resolvers",target="www.lab.example"}`,
			server, familyOf(server))
		if got := strings.Contains(m, series+want); want == "" && strings.Contains(m, series) || want != "" && !got {
			t.Errorf("metrics: want %s%q (empty: no such series)", series, want)
		}
	}
	if t.Failed() {
		for _, ln := range strings.Split(m, "\n") {
			if strings.HasPrefix(ln, "reachd_probe_success{") && strings.Contains(ln, "resolvers") {
				t.Log(ln)
			}
		}
	}
	checkPromtool(t, m)
	d.Signal(syscall.SIGTERM)
	if code := d.Wait(10 * time.Second); code != 0 {
		t.Errorf("exit %d", code)
	}
}

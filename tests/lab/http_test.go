package lab

import (
	"crypto/tls"
	"fmt"
	"math"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"reachd/internal/testpki"
	"reachd/internal/testweb"
	"reachd/pkg/verdict"
)

const (
	portWeb    = 9480 // plain HTTP (testweb.Mux)
	portWebTLS = 9481 // the same over TLS, HTTP/2 offered
)

// urlOf is scheme://addr:port+path, the address bracketed when IPv6.
func urlOf(scheme string, a netip.Addr, port int, path string) string {
	return fmt.Sprintf("%s://%s%s", scheme, netip.AddrPortFrom(a, uint16(port)), path)
}

// TestHTTPProbe: statuses, redirects, a body too slow for the timeout, a body that does
// not match, HTTP/2, and failures below HTTP that keep their own reasons and evidence, over
// IPv4 and IPv6. Every phase of an answered request is wire-timed, and the phases add up to
// the total.
func TestHTTPProbe(t *testing.T) {
	l := requireLab(t)
	pki, ca := testpki.ForTest(t)
	cert, err := pki.Issue(testLeaf())
	if err != nil {
		t.Fatal(err)
	}
	serveWeb(t, l, portWeb, nil, testweb.Mux())
	serveWeb(t, l, portWebTLS, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}}, testweb.Mux())
	type hcase struct {
		name, url string
		args      []string
		reason    verdict.Reason
		layer     verdict.Layer
		detail    string
		status    float64
		from      netip.Addr
	}
	for _, fam := range []struct {
		srv, admin, router netip.Addr
	}{{ServerV4, AdminV4, RouterClientV4}, {ServerV6, AdminV6, RouterClientV6}} {
		web := func(path string) string { return urlOf("http", fam.srv, portWeb, path) }
		cases := []hcase{
			{"200", web(testweb.OK), nil, verdict.OK, verdict.LayerOK, "HTTP/1.1 200", 200, netip.Addr{}},
			{"301 chain to 200", web(testweb.Moved), nil, verdict.OK, verdict.LayerOK, "after 2 redirect(s)", 200, netip.Addr{}},
			{"404", web(testweb.Missing), nil, verdict.OK, verdict.LayerOK, "client error", 404, netip.Addr{}},
			{"503", web(testweb.Down), nil, verdict.HTTPStatus, verdict.LayerApplication, "status not accepted", 503, netip.Addr{}},
			{"slow body", web(testweb.Slow), []string{"--timeout", "1s"}, verdict.Timeout, verdict.LayerApplication, "reading the body", 200, netip.Addr{}},
			{"body regex", web(testweb.OK), []string{"--body-regex", "^steady"}, verdict.BodyMismatch, verdict.LayerApplication, `does not match "^steady"`, 200, netip.Addr{}},
			{"http2", urlOf("https", fam.srv, portWebTLS, testweb.OK), []string{"--ca", ca, "--body-regex", "^ready HTTP/2"}, verdict.OK, verdict.LayerOK, "HTTP/2.0 200", 200, netip.Addr{}},
			{"refused", urlOf("http", fam.srv, PortClosed, "/"), nil, verdict.Refused, verdict.LayerTransport, "RST", 0, netip.Addr{}},
			{"admin prohibited", urlOf("http", fam.admin, PortOpen, "/"), nil, verdict.AdminProhibited, verdict.LayerNetwork, "from " + fam.router.String(), 0, fam.router},
			{"syn dropped", urlOf("http", fam.srv, PortDrop, "/"), []string{"--timeout", "1500ms"}, verdict.Timeout, verdict.LayerTransport, "SYN transmission(s) seen leaving on the wire", 0, netip.Addr{}},
		}
		for _, c := range cases {
			t.Run(familyOf(fam.srv.String())+"/"+c.name, func(t *testing.T) {
				t.Parallel()
				args := withErrorSource(t, l, c.from, append([]string{"--retries", "0"}, c.args...))
				vs, code := probeKind(t, l, "http", nil, append(args, c.url)...)
				if len(vs) != 1 {
					t.Fatalf("want 1 verdict, got %d (exit %d)", len(vs), code)
				}
				v := vs[0]
				t.Logf("%s → %s/%s [%s]: %s %v", c.url, v["reason"], v["layer"], v["timing_source"], v["detail"], v["timings_ms"])
				if v["reason"] != string(c.reason) || v["layer"] != string(c.layer) || !strings.Contains(v["detail"].(string), c.detail) {
					t.Fatalf("got %v/%v %q; want %s/%s ~%q", v["reason"], v["layer"], v["detail"], c.reason, c.layer, c.detail)
				}
				if c.from.IsValid() && icmpFrom(v) != c.from.String() {
					t.Errorf("ICMP from %q, want %s", icmpFrom(v), c.from)
				}
				if c.status != 0 {
					if h, _ := v["http"].(map[string]any); h == nil || h["status"] != c.status {
						t.Errorf("http: %v, want status %v", v["http"], c.status)
					}
				}
				if c.reason == verdict.OK {
					checkHTTPPhases(t, v)
				}
				if c.name == "301 chain to 200" {
					rs := v["http"].(map[string]any)["redirects"].([]any)
					if len(rs) != 2 || rs[0].(map[string]any)["status"] != float64(301) || rs[0].(map[string]any)["addr"] != fam.srv.String() {
						t.Errorf("redirects: %v", rs)
					}
				}
			})
		}
	}
}

// testLeaf is a server certificate for webName and the server's addresses.
func testLeaf() testpki.Leaf {
	return testpki.Leaf{Names: []string{webName}, IPs: []net.IP{ServerV4.AsSlice(), ServerV6.AsSlice()}}
}

// checkHTTPPhases: every phase is there and wire-timed, and they add up to the total
// within 1 %.
func checkHTTPPhases(t *testing.T, v map[string]any) {
	t.Helper()
	tm := v["timings_ms"].(map[string]any)
	wired, _ := tm["wire"].([]any)
	want := []string{"connect", "request", "ttfb", "transfer"}
	if strings.HasPrefix(v["target"].(string), "https") {
		want = append(want, "tls")
	}
	if h, _ := v["http"].(map[string]any); h["proto"] == "HTTP/2.0" {
		// The read that brings the response's HEADERS may bring the server's SETTINGS
		// too, when they came apart: then ttfb (and transfer after it) are userspace's.
		want = []string{"connect", "tls", "request"}
	}
	var sum float64
	for _, name := range []string{"resolve", "setup", "connect", "tls", "request", "ttfb", "transfer"} {
		x, _ := tm[name].(float64)
		sum += x
	}
	for _, name := range want {
		if _, ok := tm[name]; !ok || !slices.Contains(wired, any(name)) {
			t.Errorf("phase %s missing or not wire-timed: %v", name, tm)
		}
	}
	total := tm["total"].(float64)
	if math.Abs(sum-total) > total/100 {
		t.Errorf("phases add up to %.3f ms, total %.3f ms", sum, total)
	}
	// The phases' instants against the wire's own, which the verdict gives apart (ms
	// after its time, when the attempt began): the first SYN ends setup, the SYN-ACK
	// connect. A phase misplaced or lost would move them. (With redirects the phases are
	// sums over the requests, and the wire's instants the last request's.)
	if h, _ := v["http"].(map[string]any); h["redirects"] != nil {
		return
	}
	w := v["wire"].(map[string]any)
	at := func(names ...string) float64 {
		var x float64
		for _, n := range names {
			y, _ := tm[n].(float64)
			x += y
		}
		return x
	}
	// (The verdict's time is taken just before the attempt starts: a busy machine may put
	// some of a millisecond between them.)
	syn, synack := w["syn_tx"].(float64), w["synack"].(float64)
	if d := math.Abs(syn - at("resolve", "setup")); d > 1 {
		t.Errorf("resolve+setup end %.3f ms from the first SYN on the wire (%v)", d, syn)
	}
	if d := math.Abs(synack - syn - at("connect")); d > 0.005 {
		t.Errorf("connect is %.3f ms off the wire's SYN to SYN-ACK (%v to %v)", d, syn, synack)
	}
}

// TestDaemonHTTP: the daemon runs http, tls and line probes from its config: https through
// --connect-to with the test CA, a 503, a chain the system's roots do not trust, an SMTP
// dialogue; their verdicts are logged, their phases wire-timed, and the certificate's
// expiry is a metric promtool reads.
func TestDaemonHTTP(t *testing.T) {
	l := requireLab(t)
	pki, ca := testpki.ForTest(t)
	cert, err := pki.Issue(testLeaf())
	if err != nil {
		t.Fatal(err)
	}
	const port = 9482
	serveWeb(t, l, port, &tls.Config{Certificates: []tls.Certificate{cert}}, testweb.Mux())
	secure := fmt.Sprintf("https://%s:%d%s", webName, port, testweb.OK)
	const plain = 9483
	down := urlOf("http", ServerV6, plain, testweb.Down)
	certTarget := ap(ServerV4, port)
	const smtpPort = 9484
	smtpTarget := ap(ServerV6, smtpPort)
	cfg := fmt.Sprintf("defaults: {interval: 1s, timeout: 900ms, retries: 0}\nmetrics: {listen: %q}\nlog: {json: stdout, journald: off, verdicts: all}\n"+
		"probes:\n"+
		"  - {name: web, kind: http, targets: [%q], http: {ca: %s, connect_to: %s}}\n"+
		"  - {name: down, kind: http, targets: [%q]}\n"+
		"  - {name: cert, kind: tls, targets: [%q], tls: {server_name: %s, warn_days: 120}}\n"+
		"  - {name: smtp, kind: line, targets: [%q], line: {send: [\"\", \"QUIT\\\\r\\\\n\"], expect: [\"^220 \", \"^221\"]}}\n",
		metricsAddr, secure, ca, ServerV4, down, certTarget, webName, smtpTarget)
	serveWeb(t, l, plain, nil, testweb.Mux())
	serveLine(t, l, smtpPort, testweb.SMTPish)
	d := startReady(t, l, cfg, DaemonOptions{})
	want := map[string]string{secure: "ok", down: "http_status", certTarget: "cert_untrusted", smtpTarget: "ok"}
	got, text := map[string]map[string]any{}, map[string]string{}
	if _, ok := d.WaitLine(10*time.Second, func(ln Line) bool {
		if ln.V != nil {
			got[ln.V["target"].(string)], text[ln.V["target"].(string)] = ln.V, ln.Text
		}
		return len(got) == len(want)
	}); !ok {
		t.Fatalf("verdicts of %d targets, want %d; stderr:\n%s", len(got), len(want), d.Stderr())
	}
	for target, reason := range want {
		v := got[target]
		if v["reason"] != reason {
			t.Errorf("%s: %v %v, want %s", target, v["reason"], v["detail"], reason)
		}
		if err := schema.Validate([]byte(text[target])); err != nil {
			t.Errorf("verdict does not validate: %v", err)
		}
	}
	checkHTTPPhases(t, got[secure])
	m, err := d.Metrics(metricsAddr)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, line := range strings.Split(m, "\n") {
		found = found || strings.HasPrefix(line, "reachd_probe_tls_earliest_cert_expiry_timestamp_seconds{") &&
			strings.Contains(line, `probe="web",target="`+secure+`"} `)
	}
	if !found {
		t.Errorf("no certificate expiry for %s in the metrics", secure)
	}
	checkPromtool(t, m)
}

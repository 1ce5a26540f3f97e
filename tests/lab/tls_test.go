package lab

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"reachd/internal/testpki"
	"reachd/pkg/verdict"
)

// webName is the name the lab's TLS servers are certified for; probes reach it through
// --server-name (tls) and --connect-to (https), as one checks a backend behind a name.
const webName = "www.example.net"

// serveWeb is Lab.ServeWeb for a test.
func serveWeb(t *testing.T, l *Lab, port int, cfg *tls.Config, h http.Handler) {
	t.Helper()
	if err := l.ServeWeb(port, cfg, h); err != nil {
		t.Fatal(err)
	}
}

// TestTLSReasons: every reason of the tls probe, from servers presenting each kind of bad
// (and good) certificate, through the tls kind and through https, over IPv4 and IPv6. A
// TLS failure is layer tls, never an HTTP one, and the handshake's phases are wire-timed.
func TestTLSReasons(t *testing.T) {
	l := requireLab(t)
	pki, ca := testpki.ForTest(t)
	scen, err := pki.Scenarios([]string{webName}, []net.IP{ServerV4.AsSlice(), ServerV6.AsSlice()})
	if err != nil {
		t.Fatal(err)
	}
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	for i, sc := range scen {
		port := 9400 + i
		serveWeb(t, l, port, sc.Config, ok)
		for _, srv := range []string{ServerV4.String(), ServerV6.String()} {
			for _, kind := range []string{"tls", "http"} {
				t.Run(fmt.Sprintf("%s/%s/%s", sc.Name, kind, familyOf(srv)), func(t *testing.T) {
					t.Parallel()
					args := append([]string{"--retries", "0", "--ca", ca}, sc.Args...)
					target := ap(netip.MustParseAddr(srv), port)
					if kind == "tls" {
						args = append(args, "--server-name", webName)
					} else {
						target = fmt.Sprintf("https://%s:%d/", webName, port)
						args = append(args, "--connect-to", srv)
					}
					vs, code := probeKind(t, l, kind, nil, append(args, target)...)
					if len(vs) != 1 {
						t.Fatalf("want 1 verdict, got %d (exit %d)", len(vs), code)
					}
					checkTLSVerdict(t, vs[0], sc)
				})
			}
		}
	}
}

func checkTLSVerdict(t *testing.T, v map[string]any, sc testpki.Scenario) {
	t.Helper()
	t.Logf("%s → %s/%s [%s]: %s", v["target"], v["reason"], v["layer"], v["timing_source"], v["detail"])
	wantLayer := "tls"
	if sc.Want == "ok" {
		wantLayer = "ok"
	}
	if v["reason"] != sc.Want || v["layer"] != wantLayer || !strings.Contains(v["detail"].(string), sc.Detail) {
		t.Fatalf("got %v/%v %q; want %s/%s ~%q", v["reason"], v["layer"], v["detail"], sc.Want, wantLayer, sc.Detail)
	}
	if v["timing_source"] != verdict.SourceWire || v["rtt_ms"] == nil {
		t.Errorf("the TCP handshake is not wire-timed: %v %v", v["timing_source"], v["rtt_ms"])
	}
	tm, _ := v["timings_ms"].(map[string]any)
	wired, _ := tm["wire"].([]any)
	if !slices.Contains(wired, any("connect")) || !slices.Contains(wired, any("tls")) {
		t.Errorf("connect and tls phases not both wire-timed: %v", tm)
	}
	if v["kind"] == "tls" {
		for _, p := range []string{"request", "ttfb", "transfer"} {
			if _, ok := tm[p]; ok {
				t.Errorf("a tls probe has an HTTP phase %s: %v", p, tm)
			}
		}
	}
	if sc.Want == "tls_handshake" {
		return
	}
	tv, _ := v["tls"].(map[string]any)
	if tv == nil || tv["days_left"] == nil || len(tv["chain"].([]any)) == 0 || tv["server_name"] != webName {
		t.Fatalf("tls object: %v", tv)
	}
	if v["kind"] == "http" && sc.Want == "ok" {
		h, _ := v["http"].(map[string]any)
		if h["status"] != float64(200) || tv["alpn"] != "h2" || h["proto"] != "HTTP/2.0" {
			t.Errorf("https over h2: http %v, alpn %v", h, tv["alpn"])
		}
	}
	if v["kind"] == "http" && sc.Want != "ok" && v["http"] != nil {
		if h := v["http"].(map[string]any); h["status"] != float64(0) {
			t.Errorf("a TLS failure sent a request: %v", h)
		}
	}
}

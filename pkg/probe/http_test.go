package probe

import (
	"context"
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"reachd/internal/testpki"
	"reachd/internal/testweb"
	"reachd/pkg/target"
	"reachd/pkg/verdict"
)

// serveHTTP serves testweb.Mux on 127.0.0.1, with TLS (HTTP/2 offered) when cfg is not nil.
func serveHTTP(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: testweb.Mux(), ReadHeaderTimeout: 2 * time.Second,
		ErrorLog: log.New(io.Discard, "", 0)} // probes reset their connections
	scheme := "http"
	if cfg != nil {
		scheme = "https"
		srv.TLSConfig = cfg
		ln = tls.NewListener(ln, cfg)
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-done })
	return scheme + "://" + ln.Addr().String()
}

func httpFlags(t *testing.T, args ...string) *HTTPOptions {
	t.Helper()
	o := newHTTPOptions()
	fs := pflag.NewFlagSet("http", pflag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	if err := o.Check(fs.Changed); err != nil {
		t.Fatal(err)
	}
	return o
}

func probeHTTP(t *testing.T, url string, timeout time.Duration, args ...string) Result {
	t.Helper()
	tg, err := target.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return runHTTP(ctx, Attempt{Target: tg, Addr: netip.AddrPortFrom(tg.Addr, tg.Port), Timeout: timeout, Opts: httpFlags(t, args...)})
}

func TestHTTPStatuses(t *testing.T) {
	pki, err := testpki.New()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := pki.Issue(testpki.Leaf{Names: []string{"www.example.net"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pki.RootPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	plain := serveHTTP(t, nil)
	secure := serveHTTP(t, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}})
	for _, c := range []struct {
		url    string
		args   []string
		want   verdict.Reason
		layer  verdict.Layer
		detail string
		status int
	}{
		{plain + "/ok", nil, verdict.OK, verdict.LayerOK, "HTTP/1.1 200", 200},
		{plain + "/moved", nil, verdict.OK, verdict.LayerOK, "after 2 redirect(s)", 200},
		{plain + "/moved", []string{"--max-redirects", "0"}, verdict.OK, verdict.LayerOK, "Location /moved2", 301},
		{plain + "/loop", []string{"--max-redirects", "3"}, verdict.HTTPStatus, verdict.LayerApplication, "after 3 redirects", 0},
		{plain + "/missing", nil, verdict.OK, verdict.LayerOK, "client error", 404},
		{plain + "/missing", []string{"--expect-status", "2xx"}, verdict.HTTPStatus, verdict.LayerApplication, "want 200-299", 404},
		{plain + "/down", nil, verdict.HTTPStatus, verdict.LayerApplication, "503", 503},
		{plain + "/ok", []string{"--body-regex", "^nope"}, verdict.BodyMismatch, verdict.LayerApplication, `begins "ready`, 200},
		{plain + "/slow", nil, verdict.Timeout, verdict.LayerApplication, "15 body bytes read", 200},
		{secure + "/ok", []string{"--ca", ca, "--body-regex", "^ready HTTP/2"}, verdict.OK, verdict.LayerOK, "HTTP/2.0 200", 200},
		{secure + "/ok", nil, verdict.CertUntrusted, verdict.LayerTLS, "unknown authority", 0},
	} {
		t.Run(strings.TrimPrefix(c.url, "http://")+strings.Join(c.args, " "), func(t *testing.T) {
			r := probeHTTP(t, c.url, 700*time.Millisecond, c.args...)
			ev, _ := r.Kind.(*tlsEvidence)
			layer := r.Layer
			if layer == "" {
				layer = r.Reason.Layer()
			}
			if r.Reason != c.want || layer != c.layer || !strings.Contains(r.Detail, c.detail) {
				t.Fatalf("got %s (%s) %q; want %s (%s) ~%q", r.Reason, layer, r.Detail, c.want, c.layer, c.detail)
			}
			if c.status != 0 && (ev == nil || ev.http.Status != c.status) {
				t.Fatalf("status: %+v", ev.http)
			}
			if c.want == verdict.OK {
				checkPhases(t, ev)
			}
		})
	}
}

// checkPhases: every phase of a request is there, and they add up to their span.
func checkPhases(t *testing.T, ev *tlsEvidence) {
	t.Helper()
	var sum time.Duration
	for _, name := range []string{"connect", "request", "ttfb", "transfer"} {
		d, ok := ev.phases.d[name]
		if !ok {
			t.Fatalf("no %s phase: %v", name, ev.phases.d)
		}
		sum += d
	}
	sum += ev.phases.d["resolve"] + ev.phases.d["setup"] + ev.phases.d["tls"]
	if sum != ev.phases.span {
		t.Fatalf("phases %v add up to %s, span %s", ev.phases.d, sum, ev.phases.span)
	}
}

func TestHTTPOptionErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--body-regex", "(["}, "--body-regex \"([\" is not a regular expression"},
		{[]string{"--expect-status", "2xx,abc"}, `"abc" is not a status`},
		{[]string{"--expect-status", "600"}, `"600" is not a status`},
		{[]string{"--header", "NoColon"}, "want 'Name: value'"},
		{[]string{"--method", "GE T"}, "not an HTTP method"},
		{[]string{"--connect-to", "example.net"}, "not an IP address"},
	} {
		o := newHTTPOptions()
		fs := pflag.NewFlagSet("http", pflag.ContinueOnError)
		o.AddFlags(fs)
		if err := fs.Parse(c.args); err != nil {
			t.Fatal(err)
		}
		if err := o.Check(fs.Changed); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: got %v, want ~%q", c.args, err, c.want)
		}
	}
}

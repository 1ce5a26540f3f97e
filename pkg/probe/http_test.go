package probe

import (
	"context"
	"crypto/tls"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"reachd/internal/loopback"
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
	if err := parseFlags(o, args...); err != nil {
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
	start := time.Now()
	// A redirect's names are resolved by a fake: slow.example never answers.
	r := runHTTP(ctx, Attempt{Target: tg, Addr: netip.AddrPortFrom(tg.Addr, tg.Port), Timeout: timeout,
		Opts: httpFlags(t, args...), Resolver: fakeResolver{}})
	wall := time.Since(start)
	// The phases run from the attempt's start to its end, whether it succeeded or not: the
	// time they cover is the attempt's, but for the closing after it (and a TLS failure's
	// check of the chain, after the last handshake byte: docs/verdict.md). The closing (an
	// HTTP/2 connection's, with tests of other packages running) has taken 7 ms: the bound
	// is for phases lost, which were hundreds of ms.
	if ev, ok := r.Kind.(*tlsEvidence); ok && ev.phases.d != nil && r.Reason.Layer() != verdict.LayerTLS {
		if span := ev.phases.span(); span > wall || wall-span > max(wall/4, 10*time.Millisecond) {
			t.Errorf("the phases cover %s of an attempt of %s: %v", span, wall, ev.phases.d)
		}
	}
	return r
}

func TestHTTPStatuses(t *testing.T) {
	cert, ca := testServerCert(t)
	plain := serveHTTP(t, nil)
	silent := "http://" + silentServer(t).String() + "/"
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
		{plain + "/loop", []string{"--max-redirects", "3"}, verdict.HTTPStatus, verdict.LayerApplication, "after 3 redirects", 302},
		{plain + "/missing", nil, verdict.OK, verdict.LayerOK, "client error", 404},
		{plain + "/missing", []string{"--expect-status", "2xx"}, verdict.HTTPStatus, verdict.LayerApplication, "want 200-299", 404},
		{plain + "/down", nil, verdict.HTTPStatus, verdict.LayerApplication, "503", 503},
		{plain + "/ok", []string{"--body-regex", "^nope"}, verdict.BodyMismatch, verdict.LayerApplication, `begins "ready`, 200},
		{plain + "/slow", nil, verdict.Timeout, verdict.LayerApplication, "15 body bytes read", 200},
		{silent, nil, verdict.Timeout, verdict.LayerApplication, "waiting for the response", 0},
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

// silentServer accepts connections on 127.0.0.1 and reads what comes, never answering,
// until the test ends.
func silentServer(t *testing.T) netip.AddrPort {
	t.Helper()
	return loopback.Serve(t, nil, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
}

// testServerCert is a certificate for www.example.net and 127.0.0.1 from a test CA, and
// that CA's root written for --ca.
func testServerCert(t *testing.T) (tls.Certificate, string) {
	t.Helper()
	pki, ca := testpki.ForTest(t)
	cert, err := pki.Issue(testpki.Leaf{Names: []string{"www.example.net"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	if err != nil {
		t.Fatal(err)
	}
	return cert, ca
}

// checkPhases: every phase of a request is there (that they cover the attempt,
// probeHTTP checks against its wall time).
func checkPhases(t *testing.T, ev *tlsEvidence) {
	t.Helper()
	for _, name := range []string{"connect", "request", "ttfb", "transfer"} {
		if _, ok := ev.phases.d[name]; !ok {
			t.Fatalf("no %s phase: %v", name, ev.phases.d)
		}
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
		{[]string{"--header", "X-A: a\x01b"}, "control character"},
		{[]string{"--method", "GE T"}, "not an HTTP method"},
		{[]string{"--connect-to", "example.net"}, "not an IP address"},
	} {
		if err := parseFlags(newHTTPOptions(), c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: got %v, want ~%q", c.args, err, c.want)
		}
	}
}

// TestHTTPRedirectHosts: the request's own headers, Host and credentials go to the target's
// host only, not to another host a redirect names; a redirect that fails names its hop and
// keeps the redirects before it.
func TestHTTPRedirectHosts(t *testing.T) {
	got := make(chan http.Header, 4)
	other, err := net.Listen("tcp", "127.0.0.2:0") // another host on loopback
	if err != nil {
		t.Fatal(err)
	}
	srvB := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := r.Header.Clone()
		h.Set("X-Host", r.Host)
		got <- h
	}), ErrorLog: log.New(io.Discard, "", 0)}
	done := make(chan struct{})
	go func() { defer close(done); _ = srvB.Serve(other) }()
	t.Cleanup(func() { srvB.Close(); <-done })
	closed := "http://127.0.0.1:" + strconv.Itoa(int(loopbackClosedPort(t))) + "/"
	mux := http.NewServeMux()
	mux.HandleFunc("/away", func(w http.ResponseWriter, r *http.Request) {
		got <- r.Header.Clone()
		http.Redirect(w, r, "http://"+other.Addr().String()+"/there", http.StatusFound)
	})
	mux.HandleFunc("/broken", func(w http.ResponseWriter, r *http.Request) { http.Redirect(w, r, closed, http.StatusFound) })
	mux.HandleFunc("/unresolved", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://slow.example/", http.StatusFound)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srvA := &http.Server{Handler: mux, ErrorLog: log.New(io.Discard, "", 0)}
	doneA := make(chan struct{})
	go func() { defer close(doneA); _ = srvA.Serve(ln) }()
	t.Cleanup(func() { srvA.Close(); <-doneA })
	a := "http://" + ln.Addr().String()

	r := probeHTTP(t, a+"/away", time.Second, "--header", "Authorization: Bearer secret", "--header", "Host: front.example.net")
	if r.Reason != verdict.OK {
		t.Fatalf("%s %s", r.Reason, r.Detail)
	}
	first, second := <-got, <-got
	if first.Get("Authorization") != "Bearer secret" {
		t.Errorf("the target's host did not get the header: %v", first)
	}
	if second.Get("Authorization") != "" || second.Get("X-Host") != other.Addr().String() {
		t.Errorf("the redirect's other host got %v", second)
	}
	r = probeHTTP(t, a+"/broken", time.Second)
	ev := r.Kind.(*tlsEvidence)
	if r.Reason != verdict.Refused || !strings.HasPrefix(r.Detail, "redirect 1 to "+closed+" (127.0.0.1): RST") ||
		len(ev.http.Redirects) != 1 || ev.http.Status != 302 || ev.tcp == nil {
		t.Errorf("a refused redirect: %s %q, http %+v", r.Reason, r.Detail, ev.http)
	}
	// A redirect whose name never resolves: the phases still cover the attempt
	// (probeHTTP checks), the wait counted as resolution.
	r = probeHTTP(t, a+"/unresolved", 300*time.Millisecond)
	if ev := r.Kind.(*tlsEvidence); r.Reason != verdict.DNSTimeout || ev.phases.d["resolve"] < 250*time.Millisecond || ev.tcp != nil {
		t.Errorf("an unresolved redirect: %s %q, phases %v", r.Reason, r.Detail, ev.phases.d)
	}
}

// TestHTTPRedirectDropsEvidence: after a redirect, the verdict's connection and TLS are
// the last request's: an https request redirected to a closed port shows no certificate.
func TestHTTPRedirectDropsEvidence(t *testing.T) {
	cert, ca := testServerCert(t)
	closed := "https://127.0.0.1:" + strconv.Itoa(int(loopbackClosedPort(t))) + "/"
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.RedirectHandler(closed, http.StatusFound), ErrorLog: log.New(io.Discard, "", 0)}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close(); <-done })
	r := probeHTTP(t, "https://"+ln.Addr().String()+"/", time.Second, "--ca", ca)
	ev := r.Kind.(*tlsEvidence)
	if r.Reason != verdict.Refused || ev.tls != nil || len(ev.http.Redirects) != 1 {
		t.Errorf("got %s %q, tls %v, redirects %v", r.Reason, r.Detail, ev.tls, ev.http.Redirects)
	}
}

// loopbackClosedPort is a port on 127.0.0.1 nothing listens on.
func loopbackClosedPort(t *testing.T) uint16 { return loopback.Closed(t).Port() }

// TestHTTPTLSAlertAfterHandshake: a TLS 1.3 server that wants a client certificate says so
// with an alert after the client's handshake is done; still a TLS failure.
func TestHTTPTLSAlertAfterHandshake(t *testing.T) {
	cert, ca := testServerCert(t)
	// HTTP/1.1 reads the alert; HTTP/2 writes first and may meet the reset instead.
	for _, protos := range [][]string{nil, {"h2", "http/1.1"}} {
		url := serveHTTP(t, &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAnyClientCert, NextProtos: protos})
		for range 10 {
			r := probeHTTP(t, url+"/ok", time.Second, "--ca", ca)
			if r.Reason != verdict.TLSHandshake || r.Reason.Layer() != verdict.LayerTLS || !strings.Contains(r.Detail, "certificate") {
				t.Fatalf("ALPN %v: got %s (%s) %q", protos, r.Reason, r.Layer, r.Detail)
			}
		}
	}
}

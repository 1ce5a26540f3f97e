package lab

import (
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"strings"
	"testing"

	"reachd/internal/loopback"
	"reachd/internal/testpki"
	"reachd/internal/testweb"
	"reachd/pkg/verdict"
)

// serveLine serves handle on port in the server namespace until the lab closes.
func serveLine(t *testing.T, l *Lab, port int, handle func(net.Conn)) {
	t.Helper()
	ln, err := l.Server.Listen("tcp", fmt.Sprintf("[::]:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	done := loopback.Accept(ln, handle)
	l.AddCloser(func() { ln.Close(); <-done })
}

// TestLineProbe: banner-first and send-first dialogues, a mismatch on step 2, a server that
// closes mid-line and one that never answers, over IPv4 and IPv6. The server's first
// bytes are timed at the wire.
func TestLineProbe(t *testing.T) {
	l := requireLab(t)
	const smtp, echo, half, silent = 9520, 9521, 9522, 9523
	serveLine(t, l, smtp, testweb.SMTPish)
	serveLine(t, l, echo, testweb.Echoish)
	serveLine(t, l, half, testweb.HalfLine)
	serveLine(t, l, silent, testweb.Silent)
	banner := []string{"--send", "", "--expect", "^220 ", "--send", `EHLO reachd\r\n`, "--expect", "^250 ", "--send", `QUIT\r\n`, "--expect", "^221"}
	for _, srv := range []string{ServerV4.String(), ServerV6.String()} {
		for _, c := range []struct {
			name   string
			port   int
			args   []string
			reason verdict.Reason
			detail string
			wire   []string
		}{
			{"banner first", smtp, banner, verdict.OK, "3 step(s) as expected", []string{"connect", "ttfb"}},
			{"send first", echo, []string{"--send", `PING\r\n`, "--expect", `^\+OK PING$`}, verdict.OK, "1 step(s)", []string{"connect", "request", "ttfb"}},
			{"mismatch in step 2", smtp, []string{"--send", "", "--expect", "^220", "--send", `HELO x\r\n`, "--expect", "^250"}, verdict.ProtocolMismatch, `step 2: line "500 what?" does not match "^250"`, nil},
			{"closes mid-line", half, []string{"--send", "", "--expect", "^220 "}, verdict.Reset, `after the partial line "220 par"`, nil},
			{"never answers", silent, []string{"--timeout", "1s", "--send", `HELLO\r\n`, "--expect", "."}, verdict.Timeout, "while waiting for its line in step 1", nil},
		} {
			t.Run(familyOf(srv)+"/"+c.name, func(t *testing.T) {
				t.Parallel()
				target := fmt.Sprintf("%s:%d", srv, c.port)
				if strings.Contains(srv, ":") {
					target = fmt.Sprintf("[%s]:%d", srv, c.port)
				}
				vs, code := probeKind(t, l, "line", nil, append(append([]string{"--retries", "0"}, c.args...), target)...)
				if len(vs) != 1 {
					t.Fatalf("want 1 verdict, got %d (exit %d)", len(vs), code)
				}
				v := vs[0]
				t.Logf("%s → %s/%s: %s %v", target, v["reason"], v["layer"], v["detail"], v["timings_ms"])
				wantLayer := string(verdict.LayerApplication)
				if c.reason == verdict.OK {
					wantLayer = "ok"
				}
				if v["reason"] != string(c.reason) || v["layer"] != wantLayer || !strings.Contains(v["detail"].(string), c.detail) {
					t.Fatalf("got %v/%v %q; want %s/%s ~%q", v["reason"], v["layer"], v["detail"], c.reason, wantLayer, c.detail)
				}
				if v["line"] == nil || v["timing_source"] != verdict.SourceWire {
					t.Errorf("no line object, or the handshake not wire-timed: %v", v)
				}
				tm := v["timings_ms"].(map[string]any)
				wired, _ := tm["wire"].([]any)
				for _, p := range c.wire {
					if !slices.Contains(wired, any(p)) {
						t.Errorf("phase %s not wire-timed: %v", p, tm)
					}
				}
			})
		}
	}
}

// TestLineOverTLS: a banner protocol over TLS (SMTPS, POP3S style): the certificate is
// checked as by the tls kind, and a bad one fails the probe at layer tls.
func TestLineOverTLS(t *testing.T) {
	l := requireLab(t)
	pki, ca := testpki.ForTest(t)
	cert, err := pki.Issue(testLeaf())
	if err != nil {
		t.Fatal(err)
	}
	const port = 9524
	ln, err := l.Server.Listen("tcp", fmt.Sprintf("[::]:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	tln := tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}})
	done := loopback.Accept(tln, testweb.SMTPish)
	l.AddCloser(func() { tln.Close(); <-done })
	for _, c := range []struct {
		args           []string
		reason, detail string
	}{
		{[]string{"--ca", ca, "--server-name", webName}, "ok", "3 step(s)"},
		{[]string{"--server-name", webName}, "cert_untrusted", "unknown authority"},
	} {
		args := append([]string{"--retries", "0", "--tls"}, c.args...)
		args = append(args, "--send", "", "--expect", "^220 ", "--send", `EHLO reachd\r\n`, "--expect", "^250 ", "--send", `QUIT\r\n`, "--expect", "^221",
			ap(ServerV6, port))
		vs, code := probeKind(t, l, "line", nil, args...)
		if len(vs) != 1 {
			t.Fatalf("want 1 verdict, got %d (exit %d)", len(vs), code)
		}
		v := vs[0]
		t.Logf("→ %s/%s: %s %v", v["reason"], v["layer"], v["detail"], v["timings_ms"])
		if v["reason"] != c.reason || !strings.Contains(v["detail"].(string), c.detail) || v["tls"] == nil {
			t.Errorf("got %v %q (tls %v); want %s ~%q", v["reason"], v["detail"], v["tls"] != nil, c.reason, c.detail)
		}
	}
}

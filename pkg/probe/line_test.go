package probe

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"reachd/internal/loopback"
	"reachd/internal/testweb"
	"reachd/pkg/target"
	"reachd/pkg/verdict"
)

func probeLine(t *testing.T, addr netip.AddrPort, timeout time.Duration, args ...string) Result {
	t.Helper()
	o := &LineOptions{}
	if err := parseFlags(o, args...); err != nil {
		t.Fatal(err)
	}
	tg, _ := target.ParseHostPort(addr.String())
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return runLine(ctx, Attempt{Target: tg, Addr: addr, Timeout: timeout, Opts: o})
}

func TestLineDialogues(t *testing.T) {
	smtp := loopback.Serve(t, nil, testweb.SMTPish)
	echo := loopback.Serve(t, nil, testweb.Echoish)
	half := loopback.Serve(t, nil, testweb.HalfLine)
	silent := loopback.Serve(t, nil, testweb.Silent)
	errClose := loopback.Serve(t, nil, testweb.ErrThenClose)
	slow := loopback.Serve(t, nil, testweb.SlowGreeting)
	long := loopback.Serve(t, nil, testweb.LongLine)
	banner := []string{"--send", "", "--expect", "^220 ", "--send", `EHLO reachd\r\n`, "--expect", "^250[ -]", "--send", `QUIT\r\n`, "--expect", "^221"}
	for _, c := range []struct {
		name   string
		addr   netip.AddrPort
		args   []string
		reason verdict.Reason
		layer  verdict.Layer
		detail string
	}{
		{"banner first", smtp, banner, verdict.OK, verdict.LayerOK, "3 step(s)"},
		{"send first", echo, []string{"--send", `PING\r\n`, "--expect", `^\+OK PING$`}, verdict.OK, verdict.LayerOK, "1 step(s)"},
		{"mismatch in step 2", smtp, []string{"--send", "", "--expect", "^220", "--send", `HELO x\r\n`, "--expect", "^250"}, verdict.ProtocolMismatch, verdict.LayerApplication, `step 2: line "500 what?" does not match "^250"`},
		{"closed mid-line", half, []string{"--send", "", "--expect", "^220 "}, verdict.Reset, verdict.LayerApplication, `closed the connection while waiting for its line in step 1, after the partial line "220 par"`},
		{"never answers", silent, []string{"--send", `HELLO\r\n`, "--expect", "."}, verdict.Timeout, verdict.LayerApplication, "ms while waiting for its line in step 1"},
		{"step timeout", silent, []string{"--send", `HELLO\r\n`, "--expect", ".", "--step-timeout", "100ms"}, verdict.Timeout, verdict.LayerApplication, "nothing within 100ms"},
		// The rest of step 2's two-line reply is not step 3's answer: MAIL gets a 500.
		{"the last reply's rest", smtp, append(banner[:4:4], "--send", `EHLO x\r\n`, "--expect", "^250[ -]", "--send", `MAIL FROM:<>\r\n`, "--expect", "^250"),
			verdict.ProtocolMismatch, verdict.LayerApplication, `step 3: line "500 what?" does not match "^250"`},
		{"a multi-line reply passed over", smtp, []string{"--send", "", "--expect", "^220 ", "--send", `EHLO x\r\n`, "--expect", "^250 SIZE"}, verdict.OK, verdict.LayerOK, "2 step(s)"},
		{"a slow greeting", slow, []string{"--send", "", "--expect", "^220 "}, verdict.OK, verdict.LayerOK, "1 step(s)"},
		{"an error, then a reset", errClose, []string{"--send", `USER x\r\n`, "--expect", `^\+OK`}, verdict.ProtocolMismatch, verdict.LayerApplication, `step 1: line "-ERR nope" does not match`},
		{"an over-long line", long, []string{"--send", "", "--expect", "^OK", "--step-timeout", "150ms"}, verdict.ProtocolMismatch, verdict.LayerApplication, "(nor do the 1 lines after it), and none after it did"},
	} {
		t.Run(c.name, func(t *testing.T) {
			start := time.Now()
			timeout := 300 * time.Millisecond
			if c.name == "a slow greeting" {
				timeout = time.Second
			}
			r := probeLine(t, c.addr, timeout, c.args...)
			layer := r.Layer
			if layer == "" {
				layer = r.Reason.Layer()
			}
			if r.Reason != c.reason || layer != c.layer || !strings.Contains(r.Detail, c.detail) {
				t.Fatalf("got %s (%s) %q; want %s (%s) ~%q", r.Reason, layer, r.Detail, c.reason, c.layer, c.detail)
			}
			ev := r.Kind.(*lineEvidence)
			if len(ev.line.Steps) == 0 || ev.phases.d == nil {
				t.Fatalf("no steps or phases: %+v", ev)
			}
			if c.name == "step timeout" && time.Since(start) > 250*time.Millisecond {
				t.Errorf("the step waited %s, past its 100ms", time.Since(start))
			}
		})
	}
}

func TestLineOptionErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{nil, "give at least one"},
		{[]string{"--expect", "("}, "is not a regular expression"},
		{[]string{"--send", `a\q`}, `unknown escape \q`},
		{[]string{"--send", `a\x4`}, `\x wants two hex digits`},
		{[]string{"--send", `a\`}, "trailing backslash"},
		{[]string{"--send", "", "--send", "x"}, "step 1 sends nothing and expects nothing"},
	} {
		if err := parseFlags(&LineOptions{}, c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: got %v, want ~%q", c.args, err, c.want)
		}
	}
	o := &LineOptions{}
	if err := parseFlags(o, "--send", `A\r\n\t\\\x41`); err != nil || o.Sends[0] != "A\r\n\t\\A" {
		t.Errorf("escapes: %q %v", o.Sends, err)
	}
}

package cli

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"reachd/internal/loopback"
	"reachd/pkg/verdict"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func run(args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	if len(args) > 0 && args[0] == "probe" {
		// Unit tests time in userspace; eBPF is exercised by pkg/wire and the lab.
		args = append(args, "--no-ebpf")
	}
	code := Run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

func TestUsageErrorsExit2WithOneLine(t *testing.T) {
	cases := [][]string{
		{"probe", "tcp", "bad::target"},
		{"probe", "tcp", "host"},
		{"probe", "tcp", "x:99999"},
		{"probe", "tcp", "--no-such-flag", "127.0.0.1:1"},
		{"probe", "tcp"},
		{"probe"},
		{"probe", "gopher", "x:1"},
		{"nosuchcommand"},
		{"probe", "tcp", "-4", "-6", "127.0.0.1:1"},
		{"probe", "tcp", "-6", "127.0.0.1:1"},
		{"probe", "tcp", "--family", "ipx", "127.0.0.1:1"},
		{"probe", "tcp", "--timeout", "0s", "127.0.0.1:1"},
		{"probe", "tcp", "--timeout", "soon", "127.0.0.1:1"},
		{"probe", "tcp", "--retries", "-1", "127.0.0.1:1"},
		{"probe", "tcp", "--source", "nope", "127.0.0.1:1"},
		{"probe", "tcp", "--source", "2001:db8::1", "127.0.0.1:1"},
		{"probe", "tcp", "--interface", "reachd-nope0", "127.0.0.1:1"},
		{"probe", "tcp", "[fe80::1]:80"},
		{"probe", "tcp", "[fe80::1%reachd-nope0]:80"},
		{"probe", "tcp", "--concurrency", "0", "127.0.0.1:1"},
		{"version", "extra"},
		{"probe", "tcp", "--interface", "a/b", "127.0.0.1:1"},
		{"probe", "tcp", "--mark", "-1", "127.0.0.1:1"},
		{"config"},
		{"config", "check", "a", "b"},
		{"config", "check", "/nonexistent/reachd.yaml"},
		{"run", "--config", "/nonexistent/reachd.yaml"},
		{"run", "extra"},
		{"probe", "http", "example.net/health"},
		{"probe", "http", "https:///health"},
		{"probe", "http", "ftp://example.net/"},
		{"probe", "http", "--ca", "/nonexistent/ca.pem", "https://example.net/"},
		{"probe", "http", "--body-regex", "(", "http://127.0.0.1:1/"},
		{"probe", "http", "--expect-status", "2zz", "http://127.0.0.1:1/"},
		{"probe", "http", "--header", "no colon", "http://127.0.0.1:1/"},
		{"probe", "tls", "--ca", "/nonexistent/ca.pem", "127.0.0.1:443"},
		{"probe", "tls", "--warn-days", "-3", "127.0.0.1:443"},
		{"probe", "tls", "https://example.net/"},
		{"probe", "http", "-6", "--connect-to", "127.0.0.1", "http://example.net/"},
		{"probe", "http", "--header", "X-A: a\x01b", "http://127.0.0.1:1/"},
		{"probe", "dns", "--type", "AAA", "--server", "127.0.0.1", "example.net"},
		{"probe", "dns", "--server", "dns.example.net", "example.net"},
		{"probe", "dns", "--server", "127.0.0.1:99999", "example.net"},
		{"probe", "dns", "--server", "127.0.0.1", "--expect-answer", "(", "example.net"},
		{"probe", "dns", "--server", "127.0.0.1", "--expect-rcode", "FINE", "example.net"},
		{"probe", "dns", "--server", "127.0.0.1", "--transport", "doh", "example.net"},
		{"probe", "dns", "--server", "127.0.0.1", "--ca", "/nonexistent/ca.pem", "--transport", "dot", "example.net"},
		{"probe", "dns", "--server", "127.0.0.1", "--server-name", "x", "example.net"},
		{"probe", "dns", "--server", "127.0.0.1", "example.net:53"},
		{"probe", "dns", "--server", "127.0.0.1", "exa mple"},
		{"probe", "dns", "--resolver", "127.0.0.1", "example.net"},
		{"probe", "tcp", "--resolver", "resolver.example.net", "example.net:80"},
		{"probe", "tcp", "--resolver", "fe80::53", "example.net:80"},
		{"probe", "tcp", "--trace=always", "127.0.0.1:1"},
		{"probe", "tcp", "--pmtu=sometimes", "127.0.0.1:1"},
		{"probe", "dns", "--server", "127.0.0.1", "--server", "127.0.0.1:53", "example.net"},
		{"probe", "dns", "-4", "--server", "::1", "example.net"},
		{"probe", "dns", "--server", "fe80::53", "example.net"},
		{"probe", "dns", "--server", "fe80::53%reachd-nope0", "example.net"},
		{"probe", "dns", "--server", "127.0.0.1", "--expect-rcode", "NXDOMAIN", "--expect-answer", "x", "example.net"},
	}
	for _, c := range cases {
		code, out, errs := run(c...)
		if code != ExitUsage || out != "" || strings.Count(errs, "\n") != 1 || !strings.HasPrefix(errs, "reachd: ") {
			t.Errorf("%q: exit %d, stdout %q, stderr %q", c, code, out, errs)
		}
		if strings.Contains(errs, "goroutine") || strings.Contains(errs, "panic") {
			t.Errorf("%q: stack trace on stderr", c)
		}
	}
}

func TestBadTCModeExit2(t *testing.T) {
	t.Setenv("REACHD_TC", "bogus")
	code, out, errs := run("probe", "tcp", "127.0.0.1:1")
	if code != ExitUsage || out != "" || strings.Count(errs, "\n") != 1 || !strings.Contains(errs, "REACHD_TC") {
		t.Errorf("exit %d, stdout %q, stderr %q", code, out, errs)
	}
}

func TestExitStatusesAndJSON(t *testing.T) {
	open := loopback.Open(t).String()
	closed := loopback.Closed(t).String()

	code, out, errs := run("probe", "tcp", open)
	if code != ExitOK || !strings.HasPrefix(out, "ok ") || errs != "" {
		t.Fatalf("open: %d %q %q", code, out, errs)
	}
	code, out, _ = run("probe", "tcp", "--json", open, closed, open)
	if code != ExitNotOK {
		t.Fatalf("one refused: exit %d", code)
	}
	md, _ := os.ReadFile("../../docs/verdict.md")
	schema, err := verdict.ParseSchema(md)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 3 {
		t.Fatalf("want 3 lines in target order, got %q", out)
	}
	for i, l := range lines {
		if err := schema.Validate([]byte(l)); err != nil {
			t.Errorf("line %d: %v\n%s", i, err, l)
		}
	}
	if !strings.Contains(lines[1], `"reason":"refused"`) || !strings.Contains(lines[1], `"target":"`+closed+`"`) {
		t.Errorf("second line is not the refused target: %s", lines[1])
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := run("version")
	if code != 0 || !strings.HasPrefix(out, "reachd ") {
		t.Fatalf("%d %q", code, out)
	}
}

// failingWriter is a stdout that is gone (`reachd ... | head -0`).
type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("broken pipe") }

// TestBrokenStdoutEndsTheRun: when the first verdict cannot be written, the probes still
// going are cancelled, not waited for (exit 1, one line on stderr).
func TestBrokenStdoutEndsTheRun(t *testing.T) {
	open, slow := loopback.Open(t).String(), loopback.Unanswered(t).String()
	var errb bytes.Buffer
	start := time.Now()
	code := Run(context.Background(), []string{"probe", "tcp", "--no-ebpf", "--retries", "0", "--timeout", "20s", open, slow}, failingWriter{}, &errb)
	took := time.Since(start)
	if code != ExitNotOK || strings.Count(errb.String(), "\n") != 1 || !strings.Contains(errb.String(), "write verdict") {
		t.Errorf("exit %d, stderr %q", code, errb.String())
	}
	if took > 3*time.Second {
		t.Errorf("took %s: the slow probe was waited for", took.Round(time.Millisecond))
	}
}

// TestConfigCheck: a good file gives its one-line summary and exit 0; a bad one every
// error as FILE:LINE:COL: message on stderr, nothing on stdout, exit 2.
func TestConfigCheck(t *testing.T) {
	code, out, errs := run("config", "check", "../config/testdata/contract.yaml")
	if code != ExitOK || errs != "" || out != "../config/testdata/contract.yaml: ok: 2 probes, 3 targets (icmp 2, udp 1), up to 4 verdicts a round\n" {
		t.Errorf("good file: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	bad := t.TempDir() + "/bad.yaml"
	if err := os.WriteFile(bad, []byte("probes:\n  - name: a\n    kind: tcp\n    targets: [x]\n    colour: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs = run("run", "--config", bad) // the daemon refuses it the same way, before anything starts
	if code != ExitUsage || out != "" || !strings.HasPrefix(errs, bad+":4:15: target") {
		t.Errorf("reachd run with a bad file: exit %d, stdout %q, stderr %q", code, out, errs)
	}
	code, out, errs = run("config", "check", bad)
	want := bad + ":4:15: target \"x\" has no port (want HOST:PORT, e.g. x:443)\n" + bad + ":5:5: unknown key \"colour\" in a probe\n"
	if code != ExitUsage || out != "" || errs != want {
		t.Errorf("bad file: exit %d, stdout %q, stderr\n%s\nwant\n%s", code, out, errs, want)
	}
}

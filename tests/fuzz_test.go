// Package tests holds the checks of the test tooling itself; the lab lives in tests/lab.
package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The outputs `go test -fuzz` gives for each ending, as Go 1.26 prints them.
const (
	raceOutput = "fuzz: elapsed: 0s, gathering baseline coverage: 0/12 completed\n" +
		"fuzz: elapsed: 2s, execs: 22036 (0/sec), new interesting: 0 (total: 12)\n" +
		"--- FAIL: FuzzX (2.01s)\n    context deadline exceeded\nFAIL\nexit status 1\nFAIL\treachd/pkg/x\t2.015s\n"
	findingOutput = "fuzz: elapsed: 1s, execs: 9000 (9000/sec), new interesting: 1 (total: 13)\n" +
		"--- FAIL: FuzzX (1.20s)\n    --- FAIL: FuzzX (0.00s)\n        x_test.go:20: round trip lost a byte\n\n" +
		"    Failing input written to testdata/fuzz/FuzzX/0123abcd\n" +
		"    To re-run:\n    go test -run=FuzzX/0123abcd\nFAIL\nexit status 1\nFAIL\treachd/pkg/x\t1.204s\n"
	// A finding reported while the deadline also fired: the input makes it a finding.
	findingAtDeadline = "--- FAIL: FuzzX (2.01s)\n    context deadline exceeded\n" +
		"    Failing input written to testdata/fuzz/FuzzX/0123abcd\nFAIL\n"
	buildError = "# reachd/pkg/x\npkg/x/x.go:3:1: syntax error\nFAIL\treachd/pkg/x [build failed]\n"
	passOutput = "fuzz: elapsed: 2s, execs: 20000 (9900/sec), new interesting: 0 (total: 12)\nPASS\nok  \treachd/pkg/x\t2.1s\n"
	// What go test says when -fuzz names no target: it passes, having fuzzed nothing.
	noTarget = "testing: warning: no fuzz tests to fuzz\nPASS\nok  \treachd/pkg/x\t0.002s\n"
)

// runFuzzScript runs tests/fuzz.sh from a scratch tree with a fake `go` that prints output
// and exits 1 (0 for passOutput), writing the input a finding names.
func runFuzzScript(t *testing.T, budget, output string) (string, error) {
	t.Helper()
	root := t.TempDir()
	script, err := os.ReadFile("fuzz.sh")
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"tests", "pkg/x/testdata/fuzz/FuzzX"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "pkg/x/testdata/fuzz/FuzzX/seed"), []byte("go test fuzz v1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "tests/fuzz.sh"), script, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "output"), []byte(output), 0o644); err != nil {
		t.Fatal(err)
	}
	fake := `#!/bin/sh
[ "$*" = "test -run ^\$ -fuzz ^FuzzX\$ -fuzztime $BUDGET ./pkg/x/" ] || { echo "fake go: unexpected arguments: $*"; exit 3; }
cat "$ROOT/output"
grep -q 'Failing input written' "$ROOT/output" && echo 'go test fuzz v1' > "$ROOT/pkg/x/testdata/fuzz/FuzzX/0123abcd"
grep -q '^PASS' "$ROOT/output" && exit 0
exit 1
`
	goBin := filepath.Join(root, "fakego")
	if err := os.WriteFile(goBin, []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", filepath.Join(root, "tests/fuzz.sh"), budget, "x:FuzzX")
	cmd.Env = append(os.Environ(), "GO="+goBin, "ROOT="+root, "BUDGET="+budget)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestFuzzScriptTellsRaceFromFinding(t *testing.T) {
	cases := []struct {
		name, budget, output string
		fails                bool
		says                 string
	}{
		{"pass", "60s", passOutput, false, "execs: 20000"},
		{"pass under a count budget", "20000x", passOutput, false, "execs: 20000"},
		{"no such target", "20000x", noTarget, true, "no such fuzz target"},
		{"race at the end of a duration", "60s", raceOutput, false, "golang/go#75804"},
		// A count budget has no deadline to race: that message there is something else.
		{"same message under a count budget", "20000x", raceOutput, true, "context deadline exceeded"},
		{"finding", "60s", findingOutput, true, "new input(s) under pkg/x/testdata/fuzz/FuzzX: 0123abcd"},
		{"finding at the deadline", "60s", findingAtDeadline, true, "0123abcd"},
		{"build error", "60s", buildError, true, "syntax error"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, err := runFuzzScript(t, c.budget, c.output)
			if (err != nil) != c.fails {
				t.Errorf("failed=%v (%v), want %v:\n%s", err != nil, err, c.fails, out)
			}
			if !strings.Contains(out, c.says) {
				t.Errorf("output lacks %q:\n%s", c.says, out)
			}
		})
	}
}

package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"reachd/pkg/config"
)

func needTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s missing; CI=true forbids skipping", name)
		}
		t.Skipf("%s missing", name)
	}
}

// unitForVerify is the unit with its binary's path pointing at an executable that exists
// here (verify checks that ExecStart's program is there).
func unitForVerify(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../systemd/reachd.service")
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "reachd.service")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(string(b), "/usr/local/bin/reachd", self)), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestUnitVerifies: systemd-analyze verify prints nothing (it exits 0 on unknown keys, so
// any output is a failure).
func TestUnitVerifies(t *testing.T) {
	needTool(t, "systemd-analyze")
	out, err := exec.Command("systemd-analyze", "verify", unitForVerify(t)).CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestUnitHardened: systemd-analyze security scores the unit at 2.0 or below.
func TestUnitHardened(t *testing.T) {
	needTool(t, "systemd-analyze")
	out, err := exec.Command("systemd-analyze", "security", "--offline=yes", "../systemd/reachd.service").CombinedOutput()
	m := regexp.MustCompile(`Overall exposure level for reachd.service: ([0-9.]+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	score, _ := strconv.ParseFloat(string(m[1]), 64)
	t.Logf("exposure %.1f", score)
	if score > 2.0 {
		t.Errorf("exposure %.1f, want at most 2.0\n%s", score, out)
	}
}

// TestExampleConfig: the example config installed beside the unit is valid.
func TestExampleConfig(t *testing.T) {
	if _, err := config.Load("../systemd/reachd.yaml"); err != nil {
		t.Fatal(err)
	}
}

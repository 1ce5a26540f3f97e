package tests

import (
	"os/exec"
	"testing"
)

// TestAlertRules: the fleet page's alerting rules are valid and fire as their tests say
// (promtool check rules, promtool test rules).
func TestAlertRules(t *testing.T) {
	needTool(t, "promtool")
	for _, args := range [][]string{{"check", "rules", "alerts.yml"}, {"test", "rules", "alerts_test.yml"}} {
		cmd := exec.Command("promtool", args...)
		cmd.Dir = "../docs"
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %v: %v\n%s", args, err, out)
		}
	}
}

package lab

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

const holdEnv = "REACHD_LAB_HOLD"

// holdLab is the child side of the teardown tests: build a lab, print its namespaces, and
// wait (bounded) to be signalled or killed.
func holdLab() int {
	l, err := New()
	if err != nil {
		fmt.Println("error:", err)
		return 1
	}
	fmt.Println(l.Client.Name, l.Router.Name, l.Server.Name)
	time.Sleep(30 * time.Second)
	l.Close()
	return 0
}

func nsExists(name string) bool {
	_, err := os.Stat("/run/netns/" + name)
	return err == nil
}

func startHolder(t *testing.T) (*exec.Cmd, []string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), holdEnv+"=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.HasPrefix(line, "error") {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("holder: %q %v", line, err)
	}
	names := strings.Fields(line)
	for _, n := range names {
		if !nsExists(n) {
			t.Fatalf("namespace %s not created", n)
		}
	}
	return cmd, names
}

func TestInterruptedRunTearsDown(t *testing.T) {
	requireLab(t)
	cmd, names := startHolder(t)
	cmd.Process.Signal(syscall.SIGINT)
	cmd.Wait()
	for _, n := range names {
		if nsExists(n) {
			t.Errorf("namespace %s survived SIGINT", n)
		}
	}
}

func TestKilledRunIsReaped(t *testing.T) {
	requireLab(t)
	cmd, names := startHolder(t)
	cmd.Process.Kill() // kill -9: no handler runs
	cmd.Wait()
	for _, n := range names {
		if !nsExists(n) {
			t.Fatalf("namespace %s vanished without reaping; the test proves nothing", n)
		}
	}
	reaped := Reap()
	for _, n := range names {
		if nsExists(n) {
			t.Errorf("namespace %s not reaped", n)
		}
	}
	t.Logf("reaped %v", reaped)
	// The running process's own lab is never reaped.
	if l := requireLab(t); !nsExists(l.Client.Name) {
		t.Error("Reap removed a live process's lab")
	}
}

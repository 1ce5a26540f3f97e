package lab

import (
	"os"
	"strings"
	"testing"
	"time"
)

// TestCancelMidAttempt: Ctrl-C in the middle of an attempt that nothing answers ends the run at
// once (exit 130), not when the handshake's deadline passes.
func TestCancelMidAttempt(t *testing.T) {
	l := requireLab(t)
	for _, kind := range []string{"tcp", "icmp", "udp"} {
		t.Run(kind, func(t *testing.T) {
			t.Parallel()
			target := map[string]string{"tcp": ap(ServerV4, PortDrop), "icmp": EchoDropV4.String(), "udp": ap(ServerV4, PortUDPDrop)}[kind]
			cmd := l.Client.Command(reachdBin, "probe", kind, "--json", "--timeout", "20s", "--retries", "0", target)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			// The signal must come mid-attempt: for TCP once the SYN is out (a socket in
			// SYN-SENT in the client's namespace), else after a while.
			if kind == "tcp" {
				waitSynSent(t, l)
			} else {
				time.Sleep(700 * time.Millisecond)
			}
			sent := time.Now()
			_ = cmd.Process.Signal(os.Interrupt)
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-done
				t.Fatal("reachd still running 10 s after SIGINT")
			}
			took := time.Since(sent)
			t.Logf("exited %s after SIGINT with status %d", took.Round(time.Millisecond), cmd.ProcessState.ExitCode())
			if code := cmd.ProcessState.ExitCode(); code != 130 {
				t.Errorf("exit status %d, want 130", code)
			}
			if took > 2*time.Second {
				t.Errorf("took %s to end after SIGINT, want under 2 s", took.Round(time.Millisecond))
			}
		})
	}
}

// waitSynSent waits until a TCP socket of the client's namespace is in SYN-SENT.
func waitSynSent(t *testing.T, l *Lab) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		out, err := l.Client.Command("cat", "/proc/net/tcp", "/proc/net/tcp6").Output()
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if f := strings.Fields(line); len(f) > 3 && f[3] == "02" { // TCP_SYN_SENT
				return
			}
		}
	}
	t.Fatal("no socket in SYN-SENT within 10 s")
}

package lab

import (
	"os"
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
			time.Sleep(700 * time.Millisecond)
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

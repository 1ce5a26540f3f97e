package lab

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
)

// reachdTC counts reachd's TC programs on a client interface: TCX programs and legacy
// cls_bpf filters (named "reachd:PIDNS:PID:START").
func reachdTC(t *testing.T, l *Lab, ifname string) (tcx, legacy int) {
	t.Helper()
	err := l.Client.Do(func() error {
		lk, err := netlink.LinkByName(ifname)
		if err != nil {
			return err
		}
		idx := lk.Attrs().Index
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			res, err := link.QueryPrograms(link.QueryOptions{Target: idx, Attach: at})
			if err != nil {
				return fmt.Errorf("query %s on %s: %w", at, ifname, err)
			}
			for _, p := range res.Programs {
				prog, err := ebpf.NewProgramFromID(p.ID)
				if err != nil {
					continue // detached meanwhile
				}
				if info, err := prog.Info(); err == nil && strings.HasPrefix(info.Name, "reachd_tc") {
					tcx++
				}
				prog.Close()
			}
		}
		for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
			fs, err := netlink.FilterList(lk, parent)
			if err != nil {
				continue // no clsact
			}
			for _, f := range fs {
				if bf, ok := f.(*netlink.BpfFilter); ok && strings.HasPrefix(bf.Name, "reachd:") {
					legacy++
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return tcx, legacy
}

// TestKilledProbeLeavesNoTC kills reachd -9 while its programs are attached. TCX links are
// bound to the process's file descriptors and go with it; legacy filters stay until the
// next start deletes them.
func TestKilledProbeLeavesNoTC(t *testing.T) {
	l := requireLab(t)
	for _, mode := range []string{"tcx", "legacy"} {
		t.Run(mode, func(t *testing.T) {
			cmd := l.Client.Command(reachdBin, "probe", "tcp", "--timeout", "20s", ap(ServerV4, PortDrop))
			cmd.Env = append(cmd.Environ(), "REACHD_TC="+mode)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			var tcx, legacy int
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				if tcx, legacy = reachdTC(t, l, ClientIf); tcx+legacy >= 2 {
					break
				}
			}
			if tcx+legacy != 2 {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("while probing: %d TCX programs and %d legacy filters on %s, want 2 of one kind", tcx, legacy, ClientIf)
			}
			cmd.Process.Kill() // nsenter execs reachd: this is reachd, and no handler runs
			cmd.Wait()
			tcx, legacy = reachdTC(t, l, ClientIf)
			t.Logf("after kill -9: %d TCX programs, %d legacy filters", tcx, legacy)
			if tcx != 0 {
				t.Errorf("%d TCX programs outlived their process", tcx)
			}
			if mode == "legacy" && legacy == 0 {
				t.Fatalf("legacy filters vanished with the process: the reaping below would prove nothing")
			}
			// The next start, in any mode, deletes what the dead process left.
			if _, code := probe(t, l, "--retries", "0", ap(ServerV4, PortClosed)); code != 1 {
				t.Errorf("next probe exit %d, want 1 (refused)", code)
			}
			if tcx, legacy = reachdTC(t, l, ClientIf); tcx+legacy != 0 {
				t.Errorf("after the next run: %d TCX programs, %d legacy filters left", tcx, legacy)
			}
		})
	}
}

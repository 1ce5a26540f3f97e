package lab

import (
	"net"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"

	"reachd/pkg/verdict"
)

// TestTCXFirstInChain: another tool's TCX program that ends the chain (returns TCX_PASS) is
// on the interface before reachd starts. reachd must still see its probes' packets: it
// attaches at the head of the chain. (The second uplink keeps this away from other tests.)
func TestTCXFirstInChain(t *testing.T) {
	l := requireLab(t)
	if err := l.SecondUplink(); err != nil {
		t.Fatal(err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}, // TCX_PASS
	})
	if err != nil {
		t.Fatal(err)
	}
	defer prog.Close()
	var links []link.Link
	defer func() {
		for _, lk := range links {
			lk.Close()
		}
	}()
	err = l.Client.Do(func() error {
		ifc, err := net.InterfaceByName(UplinkClientIf)
		if err != nil {
			return err
		}
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			lk, err := link.AttachTCX(link.TCXOptions{Interface: ifc.Index, Program: prog, Attach: at})
			if err != nil {
				return err
			}
			links = append(links, lk)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ kind, target string }{
		{"tcp", ap(ServerV4, PortOpen)},
		{"icmp", ServerV4.String()},
		{"udp", ap(ServerV4, PortUDPEcho)},
	} {
		t.Run(c.kind, func(t *testing.T) {
			vs, _ := probeKind(t, l, c.kind, nil, "--retries", "0", "--source", UplinkClientV4.String(), c.target)
			if len(vs) != 1 {
				t.Fatalf("want 1 verdict, got %d", len(vs))
			}
			v := vs[0]
			t.Logf("%s → %s [%s]: %s", c.target, v["reason"], v["timing_source"], v["detail"])
			if v["reason"] != string(verdict.OK) || v["timing_source"] != verdict.SourceWire {
				t.Errorf("reason %v timing_source %v, want ok and wire", v["reason"], v["timing_source"])
			}
		})
	}
}

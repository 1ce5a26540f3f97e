package lab

import (
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"

	"reachd/pkg/wire"
)

// routerIfindexes returns the router's two interface indexes (inside its namespace).
func routerIfindexes(l *Lab) ([]int, error) {
	var idx []int
	err := l.Router.Do(func() error {
		for _, name := range []string{RouterClientIf, RouterServerIf} {
			lk, err := netlink.LinkByName(name)
			if err != nil {
				return err
			}
			idx = append(idx, lk.Attrs().Index)
		}
		return nil
	})
	return idx, err
}

// attachReachd puts reachd's TC programs on both router interfaces, as on a gateway that
// forwards other people's traffic while it probes.
func attachReachd(t *testing.T, l *Lab) (detach func()) {
	t.Helper()
	idx, err := routerIfindexes(l)
	if err != nil {
		t.Fatal(err)
	}
	var obs *wire.Observer
	err = l.Router.Do(func() error {
		var err error
		if obs, err = wire.Open(slog.New(slog.NewTextHandler(io.Discard, nil)), wire.Options{TC: wire.TCX}); err != nil {
			return err
		}
		for _, i := range idx {
			if err := obs.Attach(i); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		if obs != nil {
			obs.Close()
		}
		t.Fatal(err)
	}
	return func() { obs.Close() }
}

// attachEmpty puts a program that only returns TCX_NEXT on the same hooks: the cost of
// having a TC hook at all, against which reachd's own cost is measured.
func attachEmpty(t *testing.T, l *Lab) (detach func()) {
	t.Helper()
	idx, err := routerIfindexes(l)
	if err != nil {
		t.Fatal(err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.SchedCLS, License: "GPL",
		Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, -1), asm.Return()},
	})
	if err != nil {
		t.Fatal(err)
	}
	var links []link.Link
	err = l.Router.Do(func() error {
		for _, i := range idx {
			for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
				lk, err := link.AttachTCX(link.TCXOptions{Interface: i, Program: prog, Attach: at})
				if err != nil {
					return err
				}
				links = append(links, lk)
			}
		}
		return nil
	})
	detach = func() {
		for _, lk := range links {
			lk.Close()
		}
		prog.Close()
	}
	if err != nil {
		detach()
		t.Fatal(err)
	}
	return detach
}

// tcpBulk sends as fast as it can for d through the router and returns what the server
// received, in Gbit/s.
func tcpBulk(t *testing.T, l *Lab, addr string, d time.Duration) float64 {
	ln, err := l.Server.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var got atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 256<<10)
		for {
			n, err := c.Read(buf)
			got.Add(int64(n))
			if err != nil {
				return
			}
		}
	}()
	c, err := l.Client.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 128<<10)
	start := time.Now()
	for time.Since(start) < d {
		if _, err := c.Write(buf); err != nil {
			t.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	c.Close()
	wg.Wait()
	return float64(got.Load()) * 8 / elapsed.Seconds() / 1e9
}

// udpSmall sends 64-byte datagrams as fast as one sender can for d and returns how many the
// server received per second: each is a packet the router's TC programs look up.
func udpSmall(t *testing.T, l *Lab, addr string, d time.Duration) float64 {
	var pc net.PacketConn
	if err := l.Server.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	var got atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			if _, _, err := pc.ReadFrom(buf); err != nil {
				return
			}
			got.Add(1)
		}
	}()
	c, err := l.Client.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := make([]byte, 64)
	start := time.Now()
	for time.Since(start) < d {
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	time.Sleep(100 * time.Millisecond) // let the last datagrams arrive
	n := got.Load()
	pc.Close()
	<-done
	return float64(n) / elapsed.Seconds()
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// TestBenchForwarding is `make bench`: forwarding through the router namespace with
// nothing attached, with an empty TC program (the hook's own cost), and with reachd's
// programs on both router interfaces. The order rotates every round so that drift in the
// machine's load hits all three alike; medians and their ratios.
func TestBenchForwarding(t *testing.T) {
	if os.Getenv("REACHD_BENCH") == "" {
		t.Skip("benchmark: run with make bench")
	}
	l := requireLab(t)
	// TCP bulk on this 2-core VM varies ±15% run to run: many rounds, compared by median.
	const rounds = 8
	dTCP, dUDP := 3*time.Second, time.Second
	configs := []struct {
		name   string
		attach func(*testing.T, *Lab) func()
	}{
		{"detached", nil},
		{"empty program", attachEmpty},
		{"reachd", attachReachd},
	}
	tcp := make([][]float64, len(configs))
	udp := make([][]float64, len(configs))
	for r := range rounds {
		for k := range configs {
			i := (k + r) % len(configs)
			c := configs[i]
			detach := func() {}
			if c.attach != nil {
				detach = c.attach(t, l)
			}
			tcp[i] = append(tcp[i], tcpBulk(t, l, fmt.Sprintf("%s:%d", ServerV4, 5201), dTCP))
			udp[i] = append(udp[i], udpSmall(t, l, fmt.Sprintf("%s:%d", ServerV4, 5202), dUDP))
			detach()
		}
	}
	for i, c := range configs {
		t.Logf("%-14s TCP Gbit/s %.2f; UDP pkt/s %.0f", c.name, tcp[i], udp[i])
	}
	met := map[bool]string{true: "met", false: "NOT MET"}
	ratioTCP := median(tcp[2]) / median(tcp[0])
	fmt.Printf("BENCH forwarding, TCP bulk, %d×%v per config: detached %.2f, empty program %.2f, reachd %.2f Gbit/s (medians): reachd/detached %.3f (target ≥ 0.97: %s), empty/detached %.3f\n",
		rounds, dTCP, median(tcp[0]), median(tcp[1]), median(tcp[2]), ratioTCP, met[ratioTCP >= 0.97], median(tcp[1])/median(tcp[0]))
	fmt.Printf("BENCH forwarding, UDP 64-byte datagrams (one map lookup each), %d×%v per config: detached %.0f, empty program %.0f, reachd %.0f pkt/s (medians): reachd/detached %.3f, empty/detached %.3f, reachd/empty %.3f\n",
		rounds, dUDP, median(udp[0]), median(udp[1]), median(udp[2]), median(udp[2])/median(udp[0]), median(udp[1])/median(udp[0]), median(udp[2])/median(udp[1]))
	if ratioTCP < 0.97 {
		t.Errorf("TCP forwarding ratio %.3f below 0.97", ratioTCP)
	}
}

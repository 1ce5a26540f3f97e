package probe

import (
	"context"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"reachd/pkg/verdict"
)

// requireRawICMP skips without the privilege to open echo sockets — except under CI=true,
// where CI runs as root and a skip would hide that nothing ran.
func requireRawICMP(t *testing.T) {
	t.Helper()
	if err := CheckICMP(false); err != nil {
		unavailable(t, "echo sockets", err)
	}
}

// unavailable skips a test this machine cannot run, except under CI=true, where a skip
// would hide that nothing ran.
func unavailable(t *testing.T, what string, err error) {
	t.Helper()
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s unavailable under CI: %v", what, err)
	}
	t.Skipf("%s unavailable: %v", what, err)
}

// Loopback only (the network rule for tests: README). Concurrent attempts share one socket per
// family, which closes with the last of them (goleak checks the reader goroutine ends).
func TestICMPLoopback(t *testing.T) {
	requireRawICMP(t)
	warmTimestamps(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	targets := []string{"127.0.0.1", "127.0.0.2", "::1", "127.0.0.1"}
	res := make([]Result, len(targets))
	done := make(chan int)
	for i, a := range targets {
		go func() {
			res[i] = runICMP(ctx, Attempt{Addr: netip.AddrPortFrom(netip.MustParseAddr(a), 0), Timeout: time.Second, Opts: &ICMPOptions{Packets: Packets{Count: 3, Interval: 10 * time.Millisecond}}})
			done <- i
		}()
	}
	for range targets {
		<-done
	}
	for i, r := range res {
		st := r.Kind.(*echoEvidence).stats
		if r.Reason != verdict.OK || st.Received != 3 || st.Count != 3 || st.Duplicates+st.Corrupt != 0 {
			t.Errorf("%s: %s %s %+v", targets[i], r.Reason, r.Detail, st)
		}
		if r.TimingSource != verdict.SourceKernel {
			t.Errorf("%s: timing %q, want kernel timestamps without eBPF", targets[i], r.TimingSource)
		}
	}
	pingers.Lock()
	n := len(pingers.m)
	pingers.Unlock()
	if n != 0 {
		t.Errorf("%d echo sockets left open", n)
	}
}

// warmTimestamps turns kernel receive timestamps on for the test, which asserts kernel timing.
func warmTimestamps(t *testing.T) {
	t.Helper()
	release, err := WarmTimestamps(context.Background(), 5*time.Second)
	t.Cleanup(release)
	if err != nil {
		t.Fatal(err)
	}
}

// udpServer answers every datagram on 127.0.0.1 with "pong", or stays silent.
func udpServer(t *testing.T, answer bool) netip.AddrPort {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			if answer {
				_, _ = pc.WriteTo([]byte("pong"), from)
			}
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return netip.MustParseAddrPort(pc.LocalAddr().String())
}

func TestUDPLoopback(t *testing.T) {
	warmTimestamps(t)
	echo, silent := udpServer(t, true), udpServer(t, false)
	// A port that was free a moment ago: the kernel answers port unreachable.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := netip.MustParseAddrPort(pc.LocalAddr().String())
	pc.Close()
	run := func(dst netip.AddrPort, o UDPOptions, count int) Result {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		o.Packets = Packets{Count: count, Interval: 10 * time.Millisecond}
		return runUDP(ctx, Attempt{Addr: dst, Timeout: 300 * time.Millisecond, Opts: &o})
	}
	r := run(echo, UDPOptions{Payload: []byte("ping")}, 3)
	ev := r.Kind.(*udpEvidence)
	if r.Reason != verdict.OK || ev.stats.Received != 3 || ev.udp == nil || ev.udp.Reply != `"pong"` || r.TimingSource != verdict.SourceKernel {
		t.Errorf("echo: %s %s %+v %+v %s", r.Reason, r.Detail, ev.stats, ev.udp, r.TimingSource)
	}
	if r = run(closed, UDPOptions{}, 1); r.Reason != verdict.PortUnreachable || r.ICMP == nil || r.ICMP.From != "127.0.0.1" {
		t.Errorf("closed: %s %s %+v", r.Reason, r.Detail, r.ICMP)
	}
	if r = run(closed, UDPOptions{ExpectClosed: true}, 1); r.Reason != verdict.OK {
		t.Errorf("closed, --expect-closed: %s %s", r.Reason, r.Detail)
	}
	if r = run(silent, UDPOptions{}, 1); r.Reason != verdict.OpenFiltered || r.HasRTT {
		t.Errorf("silent: %s %s", r.Reason, r.Detail)
	}
	if r = run(echo, UDPOptions{Builtin: PayloadDNS}, 1); r.Reason != verdict.ProtocolMismatch {
		t.Errorf("dns payload to a pong server: %s %s", r.Reason, r.Detail)
	}
}

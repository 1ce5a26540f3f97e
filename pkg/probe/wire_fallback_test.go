package probe

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"reachd/pkg/netctx"
	"reachd/pkg/verdict"
	"reachd/pkg/wire"
)

// inNetns runs fn on a thread of its own in a new network namespace whose loopback is up:
// a test may attach TC programs there, where nothing else runs. The thread is never
// returned to the runtime (it dies with its goroutine).
func inNetns(t *testing.T, fn func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			errc <- err
			return
		}
		// The pooled netlink handles belong to the namespace they were opened in.
		netctx.Release()
		defer func() { netctx.Release(); errc <- nil }()
		fn()
	}()
	if err := <-errc; err != nil {
		if os.Geteuid() != 0 && os.Getenv("CI") != "true" {
			t.Skipf("needs a network namespace of its own: %v", err)
		}
		t.Fatal(err)
	}
}

// TestFullFlowTableFallsBack: when the flow table is full, an attempt is not wire-timed but
// the kernel times it (tracepoints for TCP, socket timestamps for echo and UDP), never
// userspace, and its verdict says why.
// In a one-shot run the tracepoints are loaded only then, for the handshake TC cannot watch.
func TestFullFlowTableFallsBack(t *testing.T) {
	for _, oneShot := range []bool{false, true} {
		t.Run(fmt.Sprintf("one-shot=%v", oneShot), func(t *testing.T) { fullFlowTable(t, oneShot) })
	}
}

func fullFlowTable(t *testing.T, oneShot bool) {
	inNetns(t, func() {
		warmTimestamps(t)
		obs, err := wire.Open(slog.New(slog.NewTextHandler(os.Stderr, nil)), wire.Options{MaxFlows: 1, OneShot: oneShot})
		if err != nil {
			t.Error(err)
			return
		}
		defer obs.Close()
		if st := obs.Status(); st.Tracepoints == oneShot {
			t.Errorf("tracepoints loaded at open: %v, want %v", st.Tracepoints, !oneShot)
		}
		lo := netip.MustParseAddr("127.0.0.1")
		filler, err := obs.Register(wire.ProtoUDP, netip.AddrPortFrom(lo, 1), netip.AddrPortFrom(lo, 2))
		if err != nil {
			t.Error(err)
			return
		}
		defer filler.Close()
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Error(err)
			return
		}
		defer ln.Close()
		tcpDst := netip.MustParseAddrPort(ln.Addr().String())
		udpDst := udpServer(t, true)
		for _, c := range []struct {
			kind string
			fn   func(context.Context, Attempt) Result
			dst  netip.AddrPort
		}{{"tcp", runTCP, tcpDst}, {"udp", runUDP, udpDst}, {"icmp", runICMP, netip.AddrPortFrom(lo, 0)}} {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			r := c.fn(ctx, Attempt{Addr: c.dst, Wire: obs, Timeout: time.Second})
			cancel()
			t.Logf("%s: %s [%s] %s", c.kind, r.Reason, r.TimingSource, r.Detail)
			if r.Reason != verdict.OK || r.TimingSource != verdict.SourceKernel {
				t.Errorf("%s: %s timed by %q, want ok timed by the kernel", c.kind, r.Reason, r.TimingSource)
			}
			if !strings.Contains(r.Detail, "flow table is full") {
				t.Errorf("%s: the verdict does not say the flow table was full: %s", c.kind, r.Detail)
			}
		}
	})
}

// TestBroadcastIsNotAProhibitRoute: connect() to a broadcast address fails with EACCES,
// the errno of a prohibit route; the route says which it is.
func TestBroadcastIsNotAProhibitRoute(t *testing.T) {
	inNetns(t, func() {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			t.Error(err)
			return
		}
		addr, _ := netlink.ParseAddr("198.51.100.2/24")
		if err := netlink.AddrAdd(lo, addr); err != nil {
			t.Error(err)
			return
		}
		bcast := Attempt{Addr: netip.MustParseAddrPort("198.51.100.255:9")}
		if r := sendError("connect", unix.EACCES, bcast); r.Reason != verdict.LocalError || !strings.Contains(r.Detail, "broadcast") {
			t.Errorf("broadcast: %s %s", r.Reason, r.Detail)
		}
		other := Attempt{Addr: netip.MustParseAddrPort("198.51.100.7:9")}
		if r := sendError("connect", unix.EACCES, other); r.Reason != verdict.AdminProhibited {
			t.Errorf("unicast: %s %s", r.Reason, r.Detail)
		}
	})
}

package wire

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"reachd/internal/loopback"
	"runtime"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TestEveryProgramLoads puts every program of both objects through this kernel's verifier.
func TestEveryProgramLoads(t *testing.T) {
	requireBPF(t)
	for name, load := range map[string]func() (*ebpf.CollectionSpec, error){"tc_wire": loadTcWire, "sock_trace": loadSockTrace} {
		spec, err := load()
		if err != nil {
			t.Fatal(err)
		}
		coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{Programs: ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats}})
		if err != nil {
			t.Fatalf("%s: %v\n%s", name, err, VerifierLog(err))
		}
		if len(coll.Programs) == 0 {
			t.Fatalf("%s: no programs", name)
		}
		for pname, p := range coll.Programs {
			t.Logf("%s/%s: %s", name, pname, firstLine(p.VerifierLog))
		}
		coll.Close()
	}
}

func firstLine(s string) string {
	for i, c := range s {
		if c == '\n' {
			return s[:i]
		}
	}
	return s
}

// openTraceOnly opens an observer without TC programs: attaching to the host's loopback
// would put reachd on a real interface; the tracepoints see every socket anyway.
func openTraceOnly(t *testing.T) *Observer {
	t.Helper()
	requireBPF(t)
	o, err := Open(slog.New(slog.NewTextHandler(os.Stderr, nil)), Options{TC: TCOff})
	if err != nil {
		t.Fatal(err)
	}
	if st := o.Status(); !st.Tracepoints {
		o.Close()
		t.Fatalf("tracepoints did not load: %v", st.TraceErr)
	}
	t.Cleanup(func() { o.Close() })
	return o
}

// connectTraced starts a non-blocking connect to dst from a socket registered by cookie.
func connectTraced(t *testing.T, o *Observer, dst netip.AddrPort) (*Flow, int) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	f, err := o.Register(ProtoTCP, netip.AddrPort{}, dst)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(f.Close)
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.AddSocket(cookie); err != nil {
		t.Fatal(err)
	}
	err = unix.Connect(fd, &unix.SockaddrInet4{Port: int(dst.Port()), Addr: dst.Addr().As4()})
	if err != nil && !errors.Is(err, unix.EINPROGRESS) {
		t.Fatal(err)
	}
	return f, fd
}

// waitKind polls until an event of kind (and, for state changes, newState) has arrived.
func waitKind(f *Flow, d time.Duration, kind EventKind, newState uint8) []Event {
	deadline := time.Now().Add(d)
	for {
		evs := f.Sync()
		for _, e := range evs {
			if EventKind(e.Kind) == kind && (kind != EvState || e.StateNew == newState) {
				return evs
			}
		}
		if time.Now().After(deadline) {
			return evs
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func has(evs []Event, kind EventKind, old, new uint8) bool {
	for _, e := range evs {
		if EventKind(e.Kind) == kind && (kind != EvState || (e.StateOld == old && e.StateNew == new)) {
			return true
		}
	}
	return false
}

func TestTracepointsOnLoopback(t *testing.T) {
	o := openTraceOnly(t)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	open := netip.MustParseAddrPort(ln.Addr().String())

	t.Run("established", func(t *testing.T) {
		f, _ := connectTraced(t, o, open)
		evs := waitKind(f, 2*time.Second, EvState, TCPEstablished)
		if !has(evs, EvState, TCPClose, TCPSynSent) || !has(evs, EvState, TCPSynSent, TCPEstablished) {
			t.Fatalf("want CLOSE→SYN_SENT→ESTABLISHED, got %+v", evs)
		}
	})
	t.Run("refused", func(t *testing.T) {
		closed, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		dst := netip.MustParseAddrPort(closed.Addr().String())
		closed.Close() // nothing listens there now: the kernel answers with RST
		f, _ := connectTraced(t, o, dst)
		evs := waitKind(f, 2*time.Second, EvState, TCPClose)
		if !has(evs, EvResetRx, 0, 0) || !has(evs, EvState, TCPSynSent, TCPClose) {
			t.Fatalf("want a received reset and SYN_SENT→CLOSE, got %+v", evs)
		}
	})
	t.Run("syn retransmitted", func(t *testing.T) {
		dst := loopback.Unanswered(t)
		f, _ := connectTraced(t, o, dst)
		evs := waitKind(f, 2500*time.Millisecond, EvRetransmit, 0)
		var retx []Event
		for _, e := range evs {
			if EventKind(e.Kind) == EvRetransmit {
				retx = append(retx, e)
			}
		}
		if len(retx) == 0 || retx[0].StateNew != TCPSynSent {
			t.Fatalf("want a SYN retransmission in SYN_SENT, got %+v", evs)
		}
		first := evs[0]
		if gap := time.Duration(retx[0].TsNs - first.TsNs); gap < 900*time.Millisecond || gap > 1500*time.Millisecond {
			t.Errorf("retransmission %v after connect, want about the 1 s initial RTO", gap)
		}
	})
	if n, err := o.Lost(); err != nil || n != 0 {
		t.Errorf("lost events %d (%v)", n, err)
	}
}

// TestFollowsLinks deletes an interface the programs are attached to and re-creates it,
// in a namespace of the test's own: the attachment is forgotten and made afresh.
func TestFollowsLinks(t *testing.T) {
	requireBPF(t)
	runtime.LockOSThread() // this thread moves to the new namespace and dies with the test
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	ns, err := netns.New()
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	defer func() {
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
	}()
	mk := func() int {
		// veth: this kernel has no dummy driver.
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "rd0"}, PeerName: "rd1"}); err != nil {
			t.Fatal(err)
		}
		l, err := netlink.LinkByName("rd0")
		if err != nil {
			t.Fatal(err)
		}
		return l.Attrs().Index
	}
	o, err := Open(slog.New(slog.NewTextHandler(os.Stderr, nil)), Options{TC: TCX})
	if err != nil {
		t.Fatal(err)
	}
	defer o.Close()
	first := mk()
	if err := o.Attach(first); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkDel(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "rd0"}}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(2 * time.Second); slices.Contains(o.Attached(), first); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("ifindex %d still listed as attached after its deletion", first)
		}
	}
	second := mk()
	if err := o.Attach(second); err != nil {
		t.Fatalf("attach to the re-created interface: %v", err)
	}
	if got := o.Attached(); !slices.Equal(got, []int{second}) {
		t.Fatalf("attached %v, want [%d]", got, second)
	}
}

package probe

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"reachd/pkg/verdict"
)

// fakePath answers probes as a path with an MTU would: sizes up to mtu pass, larger ones
// are lost (or draw a router's fragmentation needed when ptb); the probe numbered loseAt
// is lost whatever its size, and the one numbered failAt is an error.
type fakePath struct {
	mtu, loseAt, failAt, sent int
	ptb, retry                bool
}

func (f *fakePath) try(_ context.Context, size int, _ uint16, _ time.Duration) (bool, *QueuedError, error) {
	f.sent++
	if f.sent == f.failAt {
		return false, nil, errors.New("the handshake failed: connection refused")
	}
	if f.sent == f.loseAt {
		return false, nil, nil
	}
	if size > f.mtu && f.ptb {
		return false, &QueuedError{Info: uint32(f.mtu)}, nil
	}
	return size <= f.mtu, nil, nil
}

func (f *fakePath) retries() int {
	if f.retry {
		return 1
	}
	return 0
}
func (f *fakePath) close() {}

// TestBisectPMTU: the search finds a black hole to the byte, takes a router's word, is not
// fooled by one lost packet, and says when it was cut short.
func TestBisectPMTU(t *testing.T) {
	for _, c := range []struct {
		name    string
		path    fakePath
		largest int
		reason  verdict.Reason
		want    string
	}{
		{"passes", fakePath{mtu: 1500}, 1500, "", "the path passes 1500-byte packets"},
		{"black hole", fakePath{mtu: 1400}, 1400, verdict.MTUBlackhole, "the largest that passes is 1400 bytes"},
		{"black hole at an odd size", fakePath{mtu: 1371, retry: true}, 1371, verdict.MTUBlackhole, "the largest that passes is 1371 bytes"},
		{"router says", fakePath{mtu: 1400, ptb: true}, 576, verdict.FragNeeded, "a path MTU of 1400"},
		{"nothing passes", fakePath{mtu: 0}, 0, "", "no answer at any size"},
		// The minimum passes, then the first full-size probe is lost: sent again, it passes.
		{"one lost packet", fakePath{mtu: 1500, loseAt: 2}, 1500, "", "passes 1500"},
		{"an error halfway", fakePath{mtu: 1400, failAt: 5}, 1038, verdict.MTUBlackhole, "1038 bytes pass, 1500 do not (the search was cut short: the handshake failed"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := c.path
			r, err := bisectPMTU(context.Background(), &p, pmtuResult{high: 1500, unit: "x"}, 576, time.Millisecond)
			check(t, r, err, c.largest, c.reason, c.want)
		})
	}
}

func check(t *testing.T, r pmtuResult, err error, largest int, reason verdict.Reason, want string) {
	t.Helper()
	text, got := r.finding()
	t.Logf("%s → %q (%v)", got, text, err)
	if err != nil || r.largest != largest || got != reason || !strings.Contains(text, want) {
		t.Errorf("largest %d reason %q %q, err %v; want %d %q ~%q", r.largest, got, text, err, largest, reason, want)
	}
}

// cancelAt is a path whose search is cancelled while the probe of size cut waits: as a
// daemon stopping, or the search's budget running out.
type cancelAt struct {
	fakePath
	cut    int
	cancel context.CancelFunc
}

func (c *cancelAt) try(ctx context.Context, size int, seq uint16, w time.Duration) (bool, *QueuedError, error) {
	if size == c.cut {
		c.cancel()
		return false, nil, nil // the wait ended by the context: nothing came
	}
	return c.fakePath.try(ctx, size, seq, w)
}

// TestBisectPMTUCancelled: a wait the search's end cuts short is no lost size: cancelled
// at the full size, the search claims no black hole; halfway, it gives the sizes it knows.
func TestBisectPMTUCancelled(t *testing.T) {
	for _, c := range []struct {
		name   string
		cut    int
		reason verdict.Reason
		want   string
	}{
		{"at the full size", 1500, "", "576-byte packets pass; the search was cut short"},
		{"halfway", 1038, verdict.MTUBlackhole, "576 bytes pass, 1500 do not"}, // 1038 was not lost: cut
	} {
		ctx, cancel := context.WithCancel(context.Background())
		p := &cancelAt{fakePath: fakePath{mtu: 1400}, cut: c.cut, cancel: cancel}
		if c.cut != 1500 {
			p.mtu = 1000 // so that 1500 is lost and the halving reaches 1038
		}
		r, err := bisectPMTU(ctx, p, pmtuResult{high: 1500, unit: "x"}, 576, time.Millisecond)
		text, reason := r.finding()
		t.Logf("%s: %s → %q", c.name, reason, text)
		if err != nil || reason != c.reason || !strings.Contains(text, c.want) {
			t.Errorf("%s: %q %q (%v); want %q ~%q", c.name, reason, text, err, c.reason, c.want)
		}
	}
}

// TestPMTUWanted: what is searched, and when a finding is the verdict's reason.
func TestPMTUWanted(t *testing.T) {
	a := outcome{addr: netip.MustParseAddr("192.0.2.1")}
	res := func(r verdict.Reason, l verdict.Layer, proto uint8, payload int) outcome {
		o := a
		o.last = Result{Reason: r, Layer: l, proto: proto, sent: true, payload: make([]byte, payload)}
		return o
	}
	ctx := context.Background()
	for _, c := range []struct {
		name   string
		out    outcome
		mode   string
		wanted bool
	}{
		{"ok, always", res(verdict.OK, "", unix.IPPROTO_ICMP, 64), PMTUAlways, true},
		{"ok, on failure", res(verdict.OK, "", unix.IPPROTO_ICMP, 64), PMTUOnFailure, false},
		{"echo timeout", res(verdict.Timeout, "", unix.IPPROTO_ICMP, 64), PMTUOnFailure, true},
		{"udp silence", res(verdict.OpenFiltered, "", unix.IPPROTO_UDP, 48), PMTUOnFailure, true},
		{"a lost SYN", res(verdict.Timeout, verdict.LayerTransport, unix.IPPROTO_TCP, 0), PMTUAlways, false},
		{"http timeout after the handshake", res(verdict.Timeout, verdict.LayerApplication, unix.IPPROTO_TCP, 0), PMTUOnFailure, true},
		{"dns over TCP, silent server", res(verdict.DNSTimeout, "", unix.IPPROTO_TCP, 0), PMTUOnFailure, true},
		{"refused", res(verdict.Refused, "", unix.IPPROTO_TCP, 0), PMTUAlways, false},
		{"router's error", res(verdict.AdminProhibited, "", unix.IPPROTO_UDP, 48), PMTUAlways, false},
	} {
		if got := pmtuWanted(ctx, c.mode, c.out); got != c.wanted {
			t.Errorf("%s: wanted %v, want %v", c.name, got, c.wanted)
		}
	}
	stopped := res(verdict.Timeout, "", unix.IPPROTO_ICMP, 64)
	stopped.stopped = true
	if pmtuWanted(ctx, PMTUAlways, stopped) {
		t.Error("a chain the daemon stopped is searched")
	}
	hole := pmtuResult{high: 1500, largest: 1400}
	for _, c := range []struct {
		name     string
		last     Result
		explains bool
	}{
		{"answered", Result{Reason: verdict.OK, proto: unix.IPPROTO_ICMP, payload: make([]byte, 64)}, true},
		{"a small datagram lost", Result{Reason: verdict.OpenFiltered, proto: unix.IPPROTO_UDP, payload: make([]byte, 48)}, false},
		{"a full-size datagram lost", Result{Reason: verdict.OpenFiltered, proto: unix.IPPROTO_UDP, payload: make([]byte, 1472)}, true},
		{"a full-size echo lost", Result{Reason: verdict.Timeout, proto: unix.IPPROTO_ICMP, payload: make([]byte, 1480)}, true},
		{"TCP past its handshake", Result{Reason: verdict.Timeout, proto: unix.IPPROTO_TCP}, true},
	} {
		if got := pmtuExplains(c.last, hole); got != c.explains {
			t.Errorf("%s: explains %v, want %v", c.name, got, c.explains)
		}
	}
	told := pmtuResult{high: 1500, largest: 576, ptb: &QueuedError{Info: 1400}}
	for _, c := range []struct {
		name     string
		last     Result
		explains bool
	}{
		{"answered", Result{Reason: verdict.OK, proto: unix.IPPROTO_TCP}, true},
		{"TCP past its handshake", Result{Reason: verdict.Timeout, proto: unix.IPPROTO_TCP}, false},
		{"a full-size datagram lost", Result{Reason: verdict.OpenFiltered, proto: unix.IPPROTO_UDP, payload: make([]byte, 1472)}, false},
	} {
		if got := pmtuExplains(c.last, told); got != c.explains {
			t.Errorf("%s: explains %v, want %v", c.name, got, c.explains)
		}
	}
}

// TestPMTUCache: a result stands in for pmtuKept, and the cache is bounded.
func TestPMTUCache(t *testing.T) {
	c := &pmtuCache{m: map[pmtuKey]pmtuResult{}}
	now := time.Unix(5000, 0)
	k := pmtuKey{addr: netip.MustParseAddr("192.0.2.1"), proto: unix.IPPROTO_ICMP}
	c.put(k, pmtuResult{largest: 1400}, now)
	if r, ok := c.get(k, now.Add(pmtuKept-time.Second)); !ok || r.largest != 1400 {
		t.Fatal("not kept")
	}
	if _, ok := c.get(k, now.Add(pmtuKept)); ok {
		t.Fatal("kept too long")
	}
	for i := range maxPMTUCache + 10 {
		c.put(pmtuKey{port: uint16(i)}, pmtuResult{}, now)
	}
	if len(c.m) > maxPMTUCache {
		t.Fatalf("%d entries", len(c.m))
	}
}

// TestWayBack: what the echo search after a TCP search that passed says. A router's MTU
// is the finding only where the TCP segments' size is the path MTU the route learned and
// the router gives it again; a black hole below the segments' size is the way back.
func TestWayBack(t *testing.T) {
	tcp := pmtuResult{high: 1400, largest: 1400, unit: "DF TCP segment(s)", highIs: "x"}
	ptb := func(mtu uint32) *QueuedError { return &QueuedError{Info: mtu} }
	for _, c := range []struct {
		name    string
		e       pmtuResult
		err     error
		v6      bool
		learned bool
		reason  verdict.Reason
		want    string
	}{
		{"learned, said again", pmtuResult{high: 1500, ptb: ptb(1400), tried: 1500}, nil, true, true, verdict.FragNeeded, "a path MTU of 1400"},
		{"MSS-clamped, router says the same", pmtuResult{high: 1500, ptb: ptb(1400), tried: 1500}, nil, true, false, "", "need fragmenting at"},
		{"learned, a smaller MTU: another way", pmtuResult{high: 1500, ptb: ptb(1300), tried: 1500}, nil, true, true, "", "on the way there"},
		{"learned, MTU 0", pmtuResult{high: 1500, ptb: ptb(0), tried: 1500}, nil, true, true, "", "on the way there"},
		{"a black hole below the segments", pmtuResult{high: 1500, largest: 1300}, nil, true, false, verdict.MTUBlackhole, "the way back"},
		{"lost only above the segments", pmtuResult{high: 1500, largest: 1450}, nil, true, false, "", "larger than the TCP segments"},
		{"no echo answered", pmtuResult{high: 1500}, nil, true, false, "", "the target answers no echo request"},
		{"IPv6 passes", pmtuResult{high: 1500, largest: 1500}, nil, true, false, "", "the way back passes 1500-byte echo replies"},
		{"IPv4 passes", pmtuResult{high: 1500, largest: 1500}, nil, false, false, "", "maybe in fragments"},
		{"no raw socket", pmtuResult{}, errors.New("an icmp search needs a raw socket: CAP_NET_RAW"), true, false, "", "the way back is not tested (an icmp"},
	} {
		r := wayBack(tcp, c.e, c.err, c.v6, c.learned)
		text, reason := r.finding()
		if reason != c.reason || !strings.Contains(text, c.want) {
			t.Errorf("%s: %q %q; want %q ~%q", c.name, reason, text, c.reason, c.want)
		}
	}
}

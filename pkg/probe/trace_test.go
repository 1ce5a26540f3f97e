package probe

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"reachd/pkg/verdict"
)

// fakeHops answers a trace as a path would: hops[i] is who answers TTL i+1 ("" silence);
// icmp names a hop's answer other than time exceeded (it ends the trace); target is the
// target's address.
type fakeHops struct {
	hops   []string
	final  map[int]string
	target string
}

func (f *fakeHops) hop(_ context.Context, ttl int, _ time.Duration) (hopAnswer, error) {
	a := hopAnswer{Hop: verdict.Hop{N: ttl}, wire: true}
	if ttl > len(f.hops) || f.hops[ttl-1] == "" {
		return a, nil
	}
	a.Addr, a.ICMP, a.RTTMs = f.hops[ttl-1], "TTL exceeded in transit", verdict.MsPtr(time.Millisecond)
	if name, ok := f.final[ttl]; ok {
		a.ICMP, a.final = name, true
	}
	if a.Addr == f.target {
		a.ICMP, a.reached, a.final = "", true, true
	}
	return a, nil
}

func (f *fakeHops) close() {}

// TestTracePath: where a trace says the flow was lost, over paths a fake hop sender
// answers for.
func TestTracePath(t *testing.T) {
	const target = "203.0.113.10"
	for _, c := range []struct {
		name   string
		hops   []string
		final  map[int]string
		known  string
		detail string
		last   int
		silent int
		rl     []int // hops taken for rate limited
	}{
		{"lost after hop 2", []string{"192.0.2.1", "192.0.2.2"}, nil, "", "lost after hop 2 (192.0.2.2)", 2, 3, nil},
		{"a quiet hop is not the break", []string{"192.0.2.1", "", "192.0.2.3"}, nil, "", "lost after hop 3 (192.0.2.3)", 3, 4, []int{2}},
		{"reached", []string{"192.0.2.1", "192.0.2.2", target}, nil, "", "the target answers at hop 3", 3, 0, nil},
		{"a reject at its own hop", []string{"192.0.2.1", "192.0.2.2", "192.0.2.2"}, map[int]string{3: "communication administratively prohibited"}, "",
			"hop 2 (192.0.2.2) answered communication administratively prohibited", 2, 0, nil},
		{"a loop", []string{"192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.2"}, nil, "", "a routing loop: 192.0.2.2 answers again at hop 4", 4, 0, nil},
		// The router the probe heard from is further than three silent hops.
		{"silent hops before a known router", []string{"192.0.2.1", "", "", "", "192.0.2.5"}, map[int]string{5: "net unreachable"}, "192.0.2.5",
			"hop 5 (192.0.2.5) answered net unreachable", 5, 0, []int{2, 3, 4}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var known netip.Addr
			if c.known != "" {
				known = netip.MustParseAddr(c.known)
			}
			p, err := tracePath(context.Background(), &fakeHops{hops: c.hops, final: c.final, target: target}, time.Millisecond, known)
			if err != nil {
				t.Fatal(err)
			}
			d := pathDetail(p)
			var rl []int
			for _, h := range p.Hops {
				if h.RateLimited {
					rl = append(rl, h.N)
				}
			}
			t.Logf("%s; %d hops", d, len(p.Hops))
			if !strings.Contains(d, c.detail) || p.LastAnswered != c.last || p.FirstSilent != c.silent || fmt.Sprint(rl) != fmt.Sprint(c.rl) {
				t.Errorf("%q last %d silent %d rate limited %v; want ~%q %d %d %v", d, p.LastAnswered, p.FirstSilent, rl, c.detail, c.last, c.silent, c.rl)
			}
			if p.TimingSource != verdict.SourceWire {
				t.Errorf("timing source %q", p.TimingSource)
			}
		})
	}
}

package netctx

import (
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestStateString(t *testing.T) {
	cases := map[int]string{
		0:                      "NONE",
		netlink.NUD_INCOMPLETE: "INCOMPLETE",
		netlink.NUD_FAILED:     "FAILED",
		netlink.NUD_STALE | netlink.NUD_PERMANENT: "STALE,PERMANENT",
		netlink.NUD_REACHABLE:                     "REACHABLE",
	}
	for s, want := range cases {
		if got := StateString(s); got != want {
			t.Errorf("%#x: %s, want %s", s, got, want)
		}
	}
	if !Unresolved("INCOMPLETE") || !Unresolved("FAILED") || Unresolved("STALE") {
		t.Error("Unresolved misjudges states")
	}
}

func TestNextHop(t *testing.T) {
	dst := netip.MustParseAddr("203.0.113.5")
	gw := netip.MustParseAddr("198.51.100.1")
	if (Route{Gateway: gw}).NextHop(dst) != gw || (Route{}).NextHop(dst) != dst {
		t.Error("next hop is the gateway if any, else the destination")
	}
}

// The loopback route exists in every namespace; asking for it sends nothing.
func TestRouteToLoopback(t *testing.T) {
	r, err := RouteTo(RouteQuery{Dst: netip.MustParseAddr("127.0.0.1")})
	if err != nil {
		t.Fatalf("route get over netlink: %v", err)
	}
	if r.Dev != "lo" || r.Type != "local" {
		t.Errorf("route to 127.0.0.1: %+v", r)
	}
}

// TestSnapshotRateCap: a burst passes, then one a tenth of a second per interface; each
// interface has its own bucket.
func TestSnapshotRateCap(t *testing.T) {
	buckets.Lock()
	delete(buckets.m, -7)
	delete(buckets.m, -8)
	buckets.Unlock()
	now := time.Unix(1000, 0)
	n := 0
	for range 100 {
		if allow(-7, now) {
			n++
		}
	}
	if n != SnapshotBurst {
		t.Fatalf("%d of 100 at once passed, want the burst %d", n, SnapshotBurst)
	}
	if allow(-7, now.Add(50*time.Millisecond)) || !allow(-7, now.Add(110*time.Millisecond)) {
		t.Fatal("the cap does not refill at its rate")
	}
	if !allow(-8, now) {
		t.Fatal("another interface shares the bucket")
	}
}

// TestLinkNameCache: an interface's name is asked once while the route cache follows the
// kernel, and asked again after a link change, not after a route change. Real link events
// on the host (the lab's veths) change the generation too: a round they cross is run again.
func TestLinkNameCache(t *testing.T) {
	stop, err := FollowRoutes()
	if err != nil {
		unavailable(t, "route notifications", err)
	}
	defer stop()
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		unavailable(t, "the loopback interface", err)
	}
	for round := 0; ; round++ {
		g := linkNames.linkGen.Load()
		linkNames.linkGen.Add(1) // nothing cached
		_, before := cachedName(lo.Index)
		n := linkName(lo.Index)
		cached, ok := cachedName(lo.Index)
		routeCache.gen.Add(1) // a route or address change leaves names alone
		_, afterRoute := cachedName(lo.Index)
		if linkNames.linkGen.Load() != g+1 && round < 20 {
			continue // a real link event crossed the round
		}
		if before || n != "lo" || !ok || cached != "lo" || !afterRoute {
			t.Fatalf("cached before asked %v; linkName %q; cached %q %v; after a route change %v", before, n, cached, ok, afterRoute)
		}
		break
	}
	linkNames.linkGen.Add(1) // what a link change does
	if _, ok := cachedName(lo.Index); ok {
		t.Fatal("still cached after a link change")
	}
}

// TestLinkChanged: link notifications change the names' generation; route, address and
// neighbor ones do not.
func TestLinkChanged(t *testing.T) {
	msg := func(typ uint16) []syscall.NetlinkMessage {
		return []syscall.NetlinkMessage{{Header: syscall.NlMsghdr{Type: typ}}}
	}
	for typ, want := range map[uint16]bool{
		unix.RTM_NEWLINK: true, unix.RTM_DELLINK: true,
		unix.RTM_NEWROUTE: false, unix.RTM_DELROUTE: false, unix.RTM_NEWADDR: false, unix.RTM_DELADDR: false,
		unix.RTM_NEWNEIGH: false, unix.RTM_NEWRULE: false,
	} {
		if got := linkChanged(msg(typ)); got != want {
			t.Errorf("type %d: %v, want %v", typ, got, want)
		}
	}
	if !linkChanged(append(msg(unix.RTM_NEWROUTE), msg(unix.RTM_DELLINK)...)) {
		t.Error("a link message after a route message is missed")
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

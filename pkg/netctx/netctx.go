// Package netctx reads the host's network state over netlink to explain a failure: the route
// a probe took and the state of its next hop's neighbor entry. It never changes anything.
package netctx

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Route is the kernel's answer to "how would a packet to dst leave?" (ip route get).
type Route struct {
	Dev       string
	LinkIndex int
	Gateway   netip.Addr
	Src       netip.Addr
	Table     int
	Type      string
}

// handles are netlink sockets kept for route and link lookups: every probe attempt asks
// for its route, and a socket per question (the package-level netlink calls) costs more
// system calls than the question. A handle serialises requests on its socket, so a few are
// kept for the many attempts that start at once.
var handles = make(chan *netlink.Handle, 4)

func init() {
	for range cap(handles) {
		handles <- nil // opened on first use
	}
}

// Release closes the pooled netlink sockets (the next lookup opens them again). A
// one-shot run calls it when done, so it leaves no descriptors behind.
func Release() {
	for range cap(handles) {
		if h := <-handles; h != nil {
			h.Close()
		}
	}
	for range cap(handles) {
		handles <- nil
	}
}

// withHandle runs fn with a pooled handle (one without a socket of its own if none can be
// opened: then each request opens one).
func withHandle(fn func(h *netlink.Handle)) {
	h := <-handles
	if h == nil {
		if nh, err := netlink.NewHandle(unix.NETLINK_ROUTE); err == nil {
			h = nh
		}
	}
	defer func() { handles <- h }()
	if h == nil {
		fn(&netlink.Handle{})
		return
	}
	fn(h)
}

// RouteQuery is what a route lookup asks: the destination, and what policy routing may
// choose a table by (the source address, the output interface, the socket's mark).
type RouteQuery struct {
	Dst, Src netip.Addr
	Oif      int
	Mark     uint32
}

// RouteTo asks the kernel for the route q describes, with the name of its interface.
func RouteTo(q RouteQuery) (Route, error) {
	r, err := RouteLookup(q)
	if err == nil && r.LinkIndex > 0 {
		r.Dev = linkName(r.LinkIndex)
	}
	return r, err
}

// linkName is the name of the interface index: one link by index, not
// net.InterfaceByIndex's dump of every interface, and cached while the route cache is on
// (every failed verdict names its route's interface: 1,000 targets failing at once must
// not be 1,000 link requests).
func linkName(index int) string {
	if n, ok := cachedName(index); ok {
		return n
	}
	gen := linkNames.linkGen.Load()
	var name string
	withHandle(func(h *netlink.Handle) {
		if l, err := h.LinkByIndex(index); err == nil {
			name = l.Attrs().Name
		}
	})
	if name != "" {
		rememberName(index, name, gen)
	}
	return name
}

// RouteLookup is RouteTo without the interface's name (Dev), which costs a second request:
// probes ask it for every attempt, to know where to watch and from which address.
func RouteLookup(q RouteQuery) (Route, error) {
	if r, ok := cachedLookup(q); ok {
		return r, nil
	}
	gen := routeCache.gen.Load() // before asking: a change meanwhile makes the answer stale
	r, err := routeGet(q)
	if err == nil {
		remember(q, r, gen)
	}
	return r, err
}

func routeGet(q RouteQuery) (Route, error) {
	var r Route
	dst := q.Dst
	opts := &netlink.RouteGetOptions{OifIndex: q.Oif, Mark: q.Mark}
	if q.Src.IsValid() {
		opts.SrcAddr = net.IP(q.Src.WithZone("").AsSlice())
	}
	var routes []netlink.Route
	var err error
	withHandle(func(h *netlink.Handle) { routes, err = h.RouteGetWithOptions(net.IP(dst.AsSlice()), opts) })
	if err != nil {
		return r, fmt.Errorf("route get %s: %w", dst, err)
	}
	if len(routes) == 0 {
		return r, fmt.Errorf("route get %s: no answer", dst)
	}
	rt := routes[0]
	r.LinkIndex = rt.LinkIndex
	r.Table = rt.Table
	r.Type = routeType(rt.Type)
	if a, ok := netip.AddrFromSlice(rt.Gw); ok {
		r.Gateway = a.Unmap()
	}
	if a, ok := netip.AddrFromSlice(rt.Src); ok {
		r.Src = a.Unmap()
	}

	return r, nil
}

func routeType(t int) string {
	switch t {
	case unix.RTN_UNICAST:
		return "unicast"
	case unix.RTN_LOCAL:
		return "local"
	case unix.RTN_BLACKHOLE:
		return "blackhole"
	case unix.RTN_UNREACHABLE:
		return "unreachable"
	case unix.RTN_PROHIBIT:
		return "prohibit"
	case unix.RTN_THROW:
		return "throw"
	case unix.RTN_BROADCAST:
		return "broadcast"
	case unix.RTN_MULTICAST:
		return "multicast"
	}
	return fmt.Sprintf("type %d", t)
}

// NextHop is the address whose neighbor entry a packet to dst needs: the gateway, or dst
// itself on a connected route.
func (r Route) NextHop(dst netip.Addr) netip.Addr {
	if r.Gateway.IsValid() {
		return r.Gateway
	}
	return dst
}

// ErrNoNeighbor says the neighbor table has no entry for the address.
var ErrNoNeighbor = errors.New("no neighbor entry")

// NeighborState returns the state of ip's neighbor entry on link ("REACHABLE", "INCOMPLETE",
// "FAILED", ...).
func NeighborState(ip netip.Addr, linkIndex int) (string, error) {
	fam := netlink.FAMILY_V4
	if ip.Is6() {
		fam = netlink.FAMILY_V6
	}
	neighs, err := netlink.NeighList(linkIndex, fam)
	if err != nil {
		return "", fmt.Errorf("list neighbors on link %d: %w", linkIndex, err)
	}
	for _, n := range neighs {
		if a, ok := netip.AddrFromSlice(n.IP); ok && a.Unmap() == ip.WithZone("") {
			return StateString(n.State), nil
		}
	}
	return "", ErrNoNeighbor
}

// StateString names NUD_* state bits the way `ip neigh` does.
func StateString(s int) string {
	names := []struct {
		bit  int
		name string
	}{
		{netlink.NUD_INCOMPLETE, "INCOMPLETE"}, {netlink.NUD_REACHABLE, "REACHABLE"},
		{netlink.NUD_STALE, "STALE"}, {netlink.NUD_DELAY, "DELAY"}, {netlink.NUD_PROBE, "PROBE"},
		{netlink.NUD_FAILED, "FAILED"}, {netlink.NUD_NOARP, "NOARP"}, {netlink.NUD_PERMANENT, "PERMANENT"},
	}
	var parts []string
	for _, n := range names {
		if s&n.bit != 0 {
			parts = append(parts, n.name)
		}
	}
	if len(parts) == 0 {
		return "NONE"
	}
	return strings.Join(parts, ",")
}

// Unresolved reports whether a neighbor state means the next hop never answered.
func Unresolved(state string) bool {
	return state == "INCOMPLETE" || state == "FAILED"
}

// LinkMTU is the MTU of the interface index: one link by index, not net.InterfaceByIndex's
// dump of every interface.
func LinkMTU(index int) (int, error) {
	var l netlink.Link
	var err error
	withHandle(func(h *netlink.Handle) { l, err = h.LinkByIndex(index) })
	if err != nil {
		return 0, fmt.Errorf("link %d: %w", index, err)
	}
	return l.Attrs().MTU, nil
}

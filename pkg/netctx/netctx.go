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

// RouteTo asks the kernel for the route to dst, leaving through oif when oif > 0.
func RouteTo(dst netip.Addr, oif int) (Route, error) {
	var r Route
	opts := &netlink.RouteGetOptions{OifIndex: oif}
	routes, err := netlink.RouteGetWithOptions(net.IP(dst.AsSlice()), opts)
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
	if rt.LinkIndex > 0 {
		if ifc, err := net.InterfaceByIndex(rt.LinkIndex); err == nil {
			r.Dev = ifc.Name
		}
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

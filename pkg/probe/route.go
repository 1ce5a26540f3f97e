package probe

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"reachd/pkg/netctx"
	"reachd/pkg/verdict"
)

// routeEvidence records the route a failed probe took, so a verdict says which way it went.
func routeEvidence(a Attempt) (*verdict.Route, netctx.Route) {
	r, err := netctx.RouteTo(routeQuery(a))
	if err != nil {
		return nil, r
	}
	out := &verdict.Route{Dev: r.Dev, Table: r.Table, Type: r.Type, Mark: a.Mark}
	if r.Gateway.IsValid() {
		out.Gateway = r.Gateway.String()
	}
	if r.Src.IsValid() {
		out.Src = r.Src.String()
	}
	return out, r
}

// scopeID turns a zone (interface name or index) into an interface index.
func scopeID(zone string) (int, error) {
	if zone == "" {
		return 0, nil
	}
	if n, err := strconv.Atoi(zone); err == nil {
		return n, nil
	}
	ifc, err := net.InterfaceByName(zone)
	if err != nil {
		return 0, fmt.Errorf("interface %s does not exist", zone)
	}
	return ifc.Index, nil
}

// unresolvedNeighbor says, when the next hop toward the attempt's target has a neighbor
// entry that never resolved (ARP/NDP got no answer), which hop, where and in what state.
func unresolvedNeighbor(a Attempt) (string, bool) {
	dst := a.Addr.Addr()
	rt, err := attemptRoute(a)
	if err != nil || rt.LinkIndex == 0 {
		return "", false
	}
	hop := rt.NextHop(dst.WithZone(""))
	state, err := netctx.NeighborState(hop, rt.LinkIndex)
	if err != nil || !netctx.Unresolved(state) {
		return "", false
	}
	if ifc, err := net.InterfaceByIndex(rt.LinkIndex); err == nil {
		rt.Dev = ifc.Name
	}
	return fmt.Sprintf("next hop %s on %s did not answer neighbor resolution (state %s)", hop, rt.Dev, state), true
}

// attemptRoute looks up the route the attempt's packets take.
func attemptRoute(a Attempt) (netctx.Route, error) {
	return netctx.RouteLookup(routeQuery(a))
}

// routeQuery asks for the route as the attempt's sockets see it: from --source, out of
// the target's zone or --interface, with --mark (policy routing may choose a table by any
// of them).
func routeQuery(a Attempt) netctx.RouteQuery {
	dst := a.Addr.Addr()
	return netctx.RouteQuery{Dst: dst.WithZone(""), Src: a.Source, Oif: routeOif(dst, a.Interface), Mark: a.Mark}
}

// routeOif is the interface a route lookup is bound to: the target's zone, else
// --interface, else none (0).
func routeOif(dst netip.Addr, iface string) int {
	oif := 0
	if z := dst.Zone(); z != "" {
		oif, _ = scopeID(z)
	} else if iface != "" {
		oif, _ = scopeID(iface)
	}
	return oif
}

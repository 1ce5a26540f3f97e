package resolv

import (
	"net"
	"net/netip"
)

// order puts the family this host should use first when both came, as RFC 6724's
// destination address selection decides between the first address of each (prefer). A
// connected UDP socket gives the route's source without sending anything; it is the main
// routing context's (a probe's --interface or --mark may route otherwise). One family: as
// given.
func order(addrs []netip.Addr) []netip.Addr {
	var v4, v6 []netip.Addr
	for _, a := range addrs {
		if a.Is4() {
			v4 = append(v4, a)
		} else {
			v6 = append(v6, a)
		}
	}
	if len(v4) == 0 || len(v6) == 0 {
		return addrs
	}
	if prefer(v4[0], v6[0]) {
		return append(v4, v6...)
	}
	return append(v6, v4...)
}

// prefer says whether a goes before b: RFC 6724's rules 1, 2, 5, 6 and 8 (3, 4 and 7 are
// about the source's state and tunnels, which a prober does not weigh).
func prefer(a, b netip.Addr) bool {
	sa, oka := source(a)
	sb, okb := source(b)
	if oka != okb { // rule 1: a destination with no route last
		return oka
	}
	if ma, mb := oka && scope(sa) == scope(a), okb && scope(sb) == scope(b); ma != mb { // rule 2
		return ma
	}
	pa, pb := policyOf(a), policyOf(b)
	if ma, mb := oka && policyOf(sa).label == pa.label, okb && policyOf(sb).label == pb.label; ma != mb { // rule 5
		return ma
	}
	if pa.precedence != pb.precedence { // rule 6
		return pa.precedence > pb.precedence
	}
	return scope(a) < scope(b) // rule 8: the smaller scope
}

// scope is an address's scope (RFC 4291 2.7, RFC 6724 3.2 for IPv4): link-local (2),
// site-local (5) or global (14).
func scope(a netip.Addr) int {
	a = a.Unmap()
	switch {
	case a.IsMulticast() && a.Is6():
		return int(a.As16()[1] & 0x0f)
	case a.IsLoopback(), a.IsLinkLocalUnicast():
		return 2
	case a.Is6() && netip.MustParsePrefix("fec0::/10").Contains(a):
		return 5
	}
	return 14
}

// source is the address this host would send to dst from, if it has a route.
func source(dst netip.Addr) (netip.Addr, bool) {
	c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 53)))
	if err != nil {
		return netip.Addr{}, false
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).AddrPort().Addr().Unmap(), true
}

type policy struct{ precedence, label int }

// policyTable is RFC 6724's default policy table, longest prefixes first.
var policyTable = []struct {
	prefix netip.Prefix
	policy
}{
	{netip.MustParsePrefix("::1/128"), policy{50, 0}},
	{netip.MustParsePrefix("::ffff:0:0/96"), policy{35, 4}},
	{netip.MustParsePrefix("::/96"), policy{1, 3}},
	{netip.MustParsePrefix("2001::/32"), policy{5, 5}},
	{netip.MustParsePrefix("2002::/16"), policy{30, 2}},
	{netip.MustParsePrefix("3ffe::/16"), policy{1, 12}},
	{netip.MustParsePrefix("fec0::/10"), policy{1, 11}},
	{netip.MustParsePrefix("fc00::/7"), policy{3, 13}},
	{netip.MustParsePrefix("::/0"), policy{40, 1}},
}

func policyOf(a netip.Addr) policy {
	a16 := netip.AddrFrom16(a.As16()) // an IPv4 address as ::ffff:a.b.c.d
	for _, p := range policyTable {
		if p.prefix.Contains(a16) {
			return p.policy
		}
	}
	return policy{40, 1}
}

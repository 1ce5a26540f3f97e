package resolv

import (
	"net"
	"net/netip"
)

// order puts the family this host should use first when both came, as RFC 6724's
// destination address selection decides between the first address of each: an address
// this host has no route to last (rule 1), then one whose label matches its source's
// (rule 5), then the higher precedence (rule 6). A connected UDP socket gives the route's
// source without sending anything. One family: as given.
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

// prefer says whether a goes before b.
func prefer(a, b netip.Addr) bool {
	sa, oka := source(a)
	sb, okb := source(b)
	if oka != okb {
		return oka
	}
	pa, pb := policyOf(a), policyOf(b)
	ma, mb := oka && policyOf(sa).label == pa.label, okb && policyOf(sb).label == pb.label
	if ma != mb {
		return ma
	}
	return pa.precedence > pb.precedence
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

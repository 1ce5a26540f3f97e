package lab

import (
	"fmt"
	"net/netip"
)

// The second uplink: a link of its own from the client to the router, chosen by source
// address (policy routing), as on a gateway with two providers:
//
//	client (c1) ──── (r2) router
//	198.51.100.162/28    .161
//	2001:db8:c2::2/64    ::1
//
// ip rule from UplinkClientV4/V6, oif c1 and fwmark UplinkMark lookup UplinkTable, whose
// routes into the lab leave by c1: --source, --interface c1 and --mark each choose it.
var (
	UplinkClientV4 = netip.MustParseAddr("198.51.100.162")
	UplinkRouterV4 = netip.MustParseAddr("198.51.100.161")
	UplinkClientV6 = netip.MustParseAddr("2001:db8:c2::2")
	UplinkRouterV6 = netip.MustParseAddr("2001:db8:c2::1")
)

const (
	UplinkClientIf = "c1"
	UplinkRouterIf = "r2"
	UplinkTable    = 100
	UplinkMark     = 0x10
)

// SecondUplink adds the second uplink and its policy rules, once per lab.
func (l *Lab) SecondUplink() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.uplink {
		return nil
	}
	if err := veth(l.Client, UplinkClientIf, l.Router, UplinkRouterIf); err != nil {
		return err
	}
	for _, a := range []struct {
		ns        *NS
		dev, cidr string
	}{
		{l.Client, UplinkClientIf, UplinkClientV4.String() + "/28"}, {l.Client, UplinkClientIf, UplinkClientV6.String() + "/64"},
		{l.Router, UplinkRouterIf, UplinkRouterV4.String() + "/28"}, {l.Router, UplinkRouterIf, UplinkRouterV6.String() + "/64"},
	} {
		if err := addAddr(a.ns, a.dev, a.cidr); err != nil {
			return err
		}
	}
	for _, c := range [][]string{
		{"-4", "route", "add", "203.0.113.0/24", "via", UplinkRouterV4.String(), "dev", UplinkClientIf, "table", fmt.Sprint(UplinkTable)},
		{"-6", "route", "add", "2001:db8::/33", "via", UplinkRouterV6.String(), "dev", UplinkClientIf, "table", fmt.Sprint(UplinkTable)},
		{"-4", "rule", "add", "from", UplinkClientV4.String(), "lookup", fmt.Sprint(UplinkTable)},
		{"-6", "rule", "add", "from", UplinkClientV6.String(), "lookup", fmt.Sprint(UplinkTable)},
		{"-4", "rule", "add", "oif", UplinkClientIf, "lookup", fmt.Sprint(UplinkTable)},
		{"-6", "rule", "add", "oif", UplinkClientIf, "lookup", fmt.Sprint(UplinkTable)},
		{"-4", "rule", "add", "fwmark", fmt.Sprint(UplinkMark), "lookup", fmt.Sprint(UplinkTable)},
		{"-6", "rule", "add", "fwmark", fmt.Sprint(UplinkMark), "lookup", fmt.Sprint(UplinkTable)},
	} {
		if err := l.Client.Run("ip", c...); err != nil {
			return err
		}
	}
	l.uplink = true
	return nil
}

package lab

import (
	"fmt"
	"net/netip"
	"os"

	"github.com/vishvananda/netns"
)

// A gateway pair for the zero-config profile: a host whose default routes lead to a
// gateway namespace of its own (the lab's client has no default route, and must not get
// one: other tests probe addresses it has no route to).
//
//	host (h0) ──── (g0) gateway
//	198.51.100.234/29   .233 and .235
//	fe80::2             fe80::1
var (
	ProfileHostV4 = netip.MustParseAddr("198.51.100.234")
	ProfileGwV4   = netip.MustParseAddr("198.51.100.233")
	ProfileGwV4b  = netip.MustParseAddr("198.51.100.235")
)

// GatewayPair builds the pair; it is removed with the lab.
func (l *Lab) GatewayPair() (host, gw *NS, err error) {
	base := fmt.Sprintf("%s%d-%d-", namePrefix, os.Getpid(), seq.Add(1))
	for _, p := range []struct {
		ns   **NS
		name string
	}{{&host, "phost"}, {&gw, "pgw"}} {
		ns, err := newNS(base + p.name)
		if err != nil {
			return nil, nil, err
		}
		*p.ns = ns
		l.AddCloser(func() {
			ns.nl.Close()
			ns.handle.Close()
			_ = netns.DeleteNamed(ns.Name)
		})
	}
	if err := veth(host, "h0", gw, "g0"); err != nil {
		return nil, nil, err
	}
	for _, a := range []struct {
		ns        *NS
		dev, cidr string
	}{
		{host, "h0", ProfileHostV4.String() + "/29"}, {host, "h0", "fe80::2/64"},
		{gw, "g0", ProfileGwV4.String() + "/29"}, {gw, "g0", ProfileGwV4b.String() + "/29"}, {gw, "g0", "fe80::1/64"},
	} {
		if err := addAddr(a.ns, a.dev, a.cidr); err != nil {
			return nil, nil, err
		}
	}
	for _, c := range [][]string{
		{"-4", "route", "add", "default", "via", ProfileGwV4.String(), "dev", "h0"},
		{"-6", "route", "add", "default", "via", "fe80::1", "dev", "h0"},
	} {
		if err := host.Run("ip", c...); err != nil {
			return nil, nil, err
		}
	}
	for _, ns := range []*NS{host, gw} {
		if err := ns.Run("ip", "link", "set", "lo", "up"); err != nil {
			return nil, nil, err
		}
	}
	return host, gw, nil
}

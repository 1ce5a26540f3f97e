package lab

import (
	"fmt"
	"net/netip"
	"os"

	"github.com/vishvananda/netns"
)

// Chain is a line of routers between a client and a server, each in a namespace of its
// own, for path traces:
//
//	client (c0) ── (l0) r1 (r0) ── (l0) r2 (r0) ── ... ── (l0) server
//
// Link i joins node i and node i+1 (node 0 the client, node N+1 the server); its left
// end is 198.51.100.(128+4i+1)/30 and 2001:db8:c:i::1/64, its right end .2 and ::2.
type Chain struct {
	Client, Server *NS
	Routers        []*NS
}

// ChainLeft and ChainRight are the addresses of link i's ends.
func ChainLeft(i int, v6 bool) netip.Addr {
	if v6 {
		return netip.MustParseAddr(fmt.Sprintf("2001:db8:c:%x::1", i))
	}
	return netip.MustParseAddr(fmt.Sprintf("198.51.100.%d", 128+4*i+1))
}

func ChainRight(i int, v6 bool) netip.Addr {
	if v6 {
		return netip.MustParseAddr(fmt.Sprintf("2001:db8:c:%x::2", i))
	}
	return netip.MustParseAddr(fmt.Sprintf("198.51.100.%d", 128+4*i+2))
}

// Hop is the address router n (1-based) answers a trace from the client with: its end of
// the link toward the client.
func (c *Chain) Hop(n int, v6 bool) netip.Addr { return ChainRight(n-1, v6) }

// ServerAddr is the server's address.
func (c *Chain) ServerAddr(v6 bool) netip.Addr { return ChainRight(len(c.Routers), v6) }

// Chain builds a chain of n routers; it is removed with the lab.
func (l *Lab) Chain(n int) (*Chain, error) {
	base := fmt.Sprintf("%s%d-%d-", namePrefix, os.Getpid(), seq.Add(1))
	c := &Chain{}
	nodes := make([]*NS, n+2)
	for i := range nodes {
		name := fmt.Sprintf("%sch%d", base, i)
		ns, err := newNS(name)
		if err != nil {
			return nil, err
		}
		l.AddCloser(func() { ns.nl.Close(); ns.handle.Close(); _ = netns.DeleteNamed(ns.Name) })
		nodes[i] = ns
		for _, kv := range [][2]string{{"net.ipv6.conf.all.accept_dad", "0"}, {"net.ipv6.conf.default.accept_dad", "0"},
			{"net.ipv6.conf.default.accept_ra", "0"}, {"net.ipv4.icmp_ratemask", "0"}, {"net.ipv6.icmp.ratemask", ""},
			{"net.ipv4.ip_forward", "1"}, {"net.ipv6.conf.all.forwarding", "1"}} {
			if err := ns.Sysctl(kv[0], kv[1]); err != nil {
				return nil, err
			}
		}
		if err := ns.Run("ip", "link", "set", "lo", "up"); err != nil {
			return nil, err
		}
	}
	c.Client, c.Server, c.Routers = nodes[0], nodes[n+1], nodes[1:n+1]
	for i := 0; i <= n; i++ { // link i: nodes[i] (r0) ── nodes[i+1] (l0)
		if err := veth(nodes[i], "r0", nodes[i+1], "l0"); err != nil {
			return nil, err
		}
		for _, v6 := range []bool{false, true} {
			bits := map[bool]int{false: 30, true: 64}[v6]
			if err := addAddr(nodes[i], "r0", fmt.Sprintf("%s/%d", ChainLeft(i, v6), bits)); err != nil {
				return nil, err
			}
			if err := addAddr(nodes[i+1], "l0", fmt.Sprintf("%s/%d", ChainRight(i, v6), bits)); err != nil {
				return nil, err
			}
		}
	}
	return c, c.routes()
}

// routes: every node reaches the links to its right through its right neighbor (its
// default route) and those to its left through its left neighbor.
func (c *Chain) routes() error {
	nodes := append(append([]*NS{c.Client}, c.Routers...), c.Server)
	for j, ns := range nodes {
		for _, v6 := range []bool{false, true} {
			if j < len(nodes)-1 {
				def := map[bool]string{false: "0.0.0.0/0", true: "::/0"}[v6]
				if err := addRoute(ns, def, ChainRight(j, v6).String(), 0); err != nil {
					return err
				}
			}
			for k := 0; k < j-1; k++ { // link k is left of node j's own left link (j-1)
				p := netip.PrefixFrom(ChainLeft(k, v6), map[bool]int{false: 30, true: 64}[v6]).Masked()
				if err := addRoute(ns, p.String(), ChainLeft(j-1, v6).String(), 0); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

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

// ECMP is a chain with two equal-cost paths at hop 2, r1 hashing flows over them by their
// 5-tuple:
//
//	client ── r1 ─┬─ r2a ─┬─ r3 ── server
//	              └─ r2b ─┘
//
// Returns come back through r2a.
type ECMP struct {
	Client, R1, R2a, R2b, R3, Server *NS
}

// ECMPServerV4 and ECMPServerV6 are the server's addresses.
var (
	ECMPServerV4 = netip.MustParseAddr("198.51.100.190")
	ECMPServerV6 = netip.MustParseAddr("2001:db8:e:5::2")
)

// ECMPChain builds the ECMP topology; it is removed with the lab.
func (l *Lab) ECMPChain() (*ECMP, error) {
	base := fmt.Sprintf("%s%d-%d-", namePrefix, os.Getpid(), seq.Add(1))
	e := &ECMP{}
	nss := []**NS{&e.Client, &e.R1, &e.R2a, &e.R2b, &e.R3, &e.Server}
	for i, p := range nss {
		ns, err := newNS(fmt.Sprintf("%se%d", base, i))
		if err != nil {
			return nil, err
		}
		l.AddCloser(func() { ns.nl.Close(); ns.handle.Close(); _ = netns.DeleteNamed(ns.Name) })
		*p = ns
		for _, kv := range [][2]string{{"net.ipv6.conf.all.accept_dad", "0"}, {"net.ipv6.conf.default.accept_dad", "0"},
			{"net.ipv6.conf.default.accept_ra", "0"}, {"net.ipv4.icmp_ratemask", "0"}, {"net.ipv6.icmp.ratemask", ""},
			{"net.ipv4.ip_forward", "1"}, {"net.ipv6.conf.all.forwarding", "1"},
			// Policy 3 hashes the fields named (63 = 0x3f: addresses, IPv6's flow label,
			// protocol, ports): a router's hash of the headers. Policy 1 would take the
			// hash a veth carries over from the sending socket (a random one per socket),
			// which no wire does.
			{"net.ipv4.fib_multipath_hash_policy", "3"}, {"net.ipv4.fib_multipath_hash_fields", "63"},
			{"net.ipv6.fib_multipath_hash_policy", "3"}, {"net.ipv6.fib_multipath_hash_fields", "63"}} {
			if err := ns.Sysctl(kv[0], kv[1]); err != nil {
				return nil, err
			}
		}
		if err := ns.Run("ip", "link", "set", "lo", "up"); err != nil {
			return nil, err
		}
	}
	// Links: name in each end, and the /30 (v4) and /64 (v6) they share; left ends .1/::1.
	links := []struct {
		a      *NS
		an     string
		b      *NS
		bn     string
		v4, v6 string
	}{
		{e.Client, "r0", e.R1, "l0", "198.51.100.164", "2001:db8:e:0"},
		{e.R1, "ra", e.R2a, "l0", "198.51.100.168", "2001:db8:e:1"},
		{e.R1, "rb", e.R2b, "l0", "198.51.100.172", "2001:db8:e:2"},
		{e.R2a, "r0", e.R3, "la", "198.51.100.176", "2001:db8:e:3"},
		{e.R2b, "r0", e.R3, "lb", "198.51.100.180", "2001:db8:e:4"},
		{e.R3, "r0", e.Server, "l0", "198.51.100.188", "2001:db8:e:5"},
	}
	end := func(net4 string, n int) string { // the /30's n-th address
		a := netip.MustParseAddr(net4)
		for range n {
			a = a.Next()
		}
		return a.String()
	}
	for _, k := range links {
		if err := veth(k.a, k.an, k.b, k.bn); err != nil {
			return nil, err
		}
		for _, x := range []struct {
			ns   *NS
			dev  string
			cidr string
		}{{k.a, k.an, end(k.v4, 1) + "/30"}, {k.b, k.bn, end(k.v4, 2) + "/30"}, {k.a, k.an, k.v6 + "::1/64"}, {k.b, k.bn, k.v6 + "::2/64"}} {
			if err := addAddr(x.ns, x.dev, x.cidr); err != nil {
				return nil, err
			}
		}
	}
	routes := []struct {
		ns   *NS
		args []string
	}{
		{e.Client, []string{"route", "add", "default", "via", "198.51.100.166"}},
		{e.Client, []string{"-6", "route", "add", "default", "via", "2001:db8:e:0::2"}},
		{e.R1, []string{"route", "add", "default", "nexthop", "via", "198.51.100.170", "nexthop", "via", "198.51.100.174"}},
		{e.R1, []string{"-6", "route", "add", "default", "nexthop", "via", "2001:db8:e:1::2", "nexthop", "via", "2001:db8:e:2::2"}},
		{e.R2a, []string{"route", "add", "default", "via", "198.51.100.178"}},
		{e.R2a, []string{"-6", "route", "add", "default", "via", "2001:db8:e:3::2"}},
		{e.R2a, []string{"route", "add", "198.51.100.164/30", "via", "198.51.100.169"}},
		{e.R2a, []string{"-6", "route", "add", "2001:db8:e:0::/64", "via", "2001:db8:e:1::1"}},
		{e.R2b, []string{"route", "add", "default", "via", "198.51.100.182"}},
		{e.R2b, []string{"-6", "route", "add", "default", "via", "2001:db8:e:4::2"}},
		{e.R2b, []string{"route", "add", "198.51.100.164/30", "via", "198.51.100.173"}},
		{e.R2b, []string{"-6", "route", "add", "2001:db8:e:0::/64", "via", "2001:db8:e:2::1"}},
		{e.R3, []string{"route", "add", "default", "via", "198.51.100.177"}},
		{e.R3, []string{"-6", "route", "add", "default", "via", "2001:db8:e:3::1"}},
		{e.Server, []string{"route", "add", "default", "via", "198.51.100.189"}},
		{e.Server, []string{"-6", "route", "add", "default", "via", "2001:db8:e:5::1"}},
	}
	for _, r := range routes {
		if err := r.ns.Run("ip", r.args...); err != nil {
			return nil, fmt.Errorf("ip %v in %s: %w", r.args, r.ns.Name, err)
		}
	}
	return e, nil
}

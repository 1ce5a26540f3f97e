package lab

import (
	"fmt"
	"net/netip"
	"syscall"
)

// Faults are injected on the router (forward chain) unless said otherwise, so ICMP errors
// come from a router on the path, as they would in the field.

func (l *Lab) routerRule(rule string) error {
	return l.routerNft("add rule inet reachd_lab faults " + rule + "\n")
}

// routerNft runs an nft script on the router, creating the lab's table on first use.
func (l *Lab) routerNft(script string) error {
	l.mu.Lock()
	init := !l.nftInit
	l.nftInit = true
	l.mu.Unlock()
	if init {
		script = "table inet reachd_lab {\n chain faults { type filter hook forward priority 0; policy accept; }\n}\n" + script
	}
	return l.Router.Nft(script)
}

func ipKw(a netip.Addr) string {
	if a.Is4() {
		return "ip"
	}
	return "ip6"
}

// DropTCP silently drops TCP to dst:port.
func (l *Lab) DropTCP(dst netip.Addr, port uint16) error {
	return l.routerRule(fmt.Sprintf("%s daddr %s tcp dport %d drop", ipKw(dst), dst, port))
}

// ResetTCP answers TCP to dst:port with an RST from the router (`reject with tcp reset`).
func (l *Lab) ResetTCP(dst netip.Addr, port uint16) error {
	return l.routerRule(fmt.Sprintf("%s daddr %s tcp dport %d reject with tcp reset", ipKw(dst), dst, port))
}

// RejectAdmin answers packets to dst with ICMP/ICMPv6 administratively prohibited.
func (l *Lab) RejectAdmin(dst netip.Addr) error {
	if dst.Is4() {
		return l.routerRule(fmt.Sprintf("ip daddr %s reject with icmp type admin-prohibited", dst))
	}
	return l.routerRule(fmt.Sprintf("ip6 daddr %s reject with icmpv6 type admin-prohibited", dst))
}

// RouteProhibit adds `ip route prohibit PREFIX` on the router.
func (l *Lab) RouteProhibit(p netip.Prefix) error { return l.routerTypedRoute(p, syscall.RTN_PROHIBIT) }

// RouteUnreachable adds `ip route unreachable PREFIX` on the router.
func (l *Lab) RouteUnreachable(p netip.Prefix) error {
	return l.routerTypedRoute(p, syscall.RTN_UNREACHABLE)
}

func (l *Lab) routerTypedRoute(p netip.Prefix, typ int) error {
	return addRouteType(l.Router, p, typ)
}

// ClientRouteProhibit adds a prohibit route on the client itself (a local policy).
func (l *Lab) ClientRouteProhibit(p netip.Prefix) error {
	return addRouteType(l.Client, p, syscall.RTN_PROHIBIT)
}

// DelClientRoute removes the client's route to prefix, leaving it without one.
func (l *Lab) DelClientRoute(p netip.Prefix) error {
	if err := l.Client.nl.RouteDel(&netlinkRoute{Dst: ipNet(p)}); err != nil {
		return fmt.Errorf("delete client route %s: %w", p, err)
	}
	return nil
}

// DropFirstSYN drops the first SYN of every connection to dst:port and lets its
// retransmission through: the router remembers each SYN it dropped in a timed set, keyed by
// source address, source port and initial sequence number. The ISN is random per connection,
// so a later connection that happens to reuse a source port still loses its first SYN. It is
// what a lossy path does to one packet, made deterministic.
func (l *Lab) DropFirstSYN(dst netip.Addr, port uint16) error {
	kw := ipKw(dst)
	set := fmt.Sprintf("firstsyn_%s_%d", kw, port)
	key := fmt.Sprintf("%s saddr . tcp sport . tcp sequence", kw)
	if err := l.routerNft(fmt.Sprintf("add set inet reachd_lab %s { typeof %s; flags dynamic,timeout; timeout 2m; size 65536; }\n", set, key)); err != nil {
		return err
	}
	match := fmt.Sprintf("%s daddr %s tcp dport %d tcp flags & (syn|ack) == syn", kw, dst, port)
	if err := l.routerRule(fmt.Sprintf("%s %s @%s accept", match, key, set)); err != nil {
		return err
	}
	return l.routerRule(fmt.Sprintf("%s add @%s { %s } drop", match, set, key))
}

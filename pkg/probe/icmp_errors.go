package probe

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"reachd/pkg/verdict"
)

// ICMP error types (RFC 792, RFC 4443) that reachd maps to reasons.
const (
	icmp4DestUnreach  = 3
	icmp4SourceQuench = 4
	icmp4TimeExceeded = 11
	icmp4ParamProblem = 12

	icmp6DestUnreach  = 1
	icmp6PacketTooBig = 2
	icmp6TimeExceeded = 3
	icmp6ParamProblem = 4
)

type icmpMeaning struct {
	reason verdict.Reason
	name   string
}

var icmp4Unreach = [...]icmpMeaning{
	0:  {verdict.NetUnreachable, "net unreachable"},
	1:  {verdict.HostUnreachable, "host unreachable"},
	2:  {verdict.ProtocolUnreachable, "protocol unreachable"},
	3:  {verdict.PortUnreachable, "port unreachable"},
	4:  {verdict.FragNeeded, "fragmentation needed"},
	5:  {verdict.NetUnreachable, "source route failed"},
	6:  {verdict.NetUnreachable, "destination network unknown"},
	7:  {verdict.HostUnreachable, "destination host unknown"},
	8:  {verdict.HostUnreachable, "source host isolated"},
	9:  {verdict.AdminProhibited, "network administratively prohibited"},
	10: {verdict.AdminProhibited, "host administratively prohibited"},
	11: {verdict.NetUnreachable, "network unreachable for TOS"},
	12: {verdict.HostUnreachable, "host unreachable for TOS"},
	13: {verdict.AdminProhibited, "communication administratively prohibited"},
	14: {verdict.AdminProhibited, "host precedence violation"},
	15: {verdict.AdminProhibited, "precedence cutoff in effect"},
}

var icmp6Unreach = [...]icmpMeaning{
	0: {verdict.NetUnreachable, "no route to destination"},
	1: {verdict.AdminProhibited, "communication administratively prohibited"},
	2: {verdict.NetUnreachable, "beyond scope of source address"},
	3: {verdict.HostUnreachable, "address unreachable"},
	4: {verdict.PortUnreachable, "port unreachable"},
	5: {verdict.AdminProhibited, "source address failed ingress/egress policy"},
	6: {verdict.AdminProhibited, "reject route to destination"},
}

// ClassifyICMP maps an ICMP (v6=false) or ICMPv6 error to a reason and a name for humans.
// Errors without a more specific reason (parameter problem, unknown codes) are icmp_error.
func ClassifyICMP(v6 bool, typ, code uint8) (verdict.Reason, string) {
	var m icmpMeaning
	switch {
	case !v6 && typ == icmp4DestUnreach && int(code) < len(icmp4Unreach):
		m = icmp4Unreach[code]
	case !v6 && typ == icmp4DestUnreach:
		m = icmpMeaning{verdict.ICMPError, fmt.Sprintf("destination unreachable code %d", code)}
	case !v6 && typ == icmp4TimeExceeded && code == 1:
		m = icmpMeaning{verdict.TTLExceeded, "fragment reassembly time exceeded"}
	case !v6 && typ == icmp4TimeExceeded:
		m = icmpMeaning{verdict.TTLExceeded, "TTL exceeded in transit"}
	case !v6 && typ == icmp4ParamProblem:
		m = icmpMeaning{verdict.ICMPError, "parameter problem"}
	case !v6 && typ == icmp4SourceQuench:
		m = icmpMeaning{verdict.ICMPError, "source quench"}
	case v6 && typ == icmp6DestUnreach && int(code) < len(icmp6Unreach):
		m = icmp6Unreach[code]
	case v6 && typ == icmp6DestUnreach:
		m = icmpMeaning{verdict.ICMPError, fmt.Sprintf("destination unreachable code %d", code)}
	case v6 && typ == icmp6PacketTooBig:
		m = icmpMeaning{verdict.FragNeeded, "packet too big"}
	case v6 && typ == icmp6TimeExceeded && code == 1:
		m = icmpMeaning{verdict.TTLExceeded, "fragment reassembly time exceeded"}
	case v6 && typ == icmp6TimeExceeded:
		m = icmpMeaning{verdict.TTLExceeded, "hop limit exceeded in transit"}
	case v6 && typ == icmp6ParamProblem && code == 1:
		m = icmpMeaning{verdict.ProtocolUnreachable, "unrecognized next header"}
	case v6 && typ == icmp6ParamProblem:
		m = icmpMeaning{verdict.ICMPError, "parameter problem"}
	default:
		m = icmpMeaning{verdict.ICMPError, fmt.Sprintf("type %d code %d", typ, code)}
	}
	return m.reason, m.name
}

// icmpDetail is the sentence a verdict carries for an ICMP error.
func icmpDetail(ic *verdict.ICMP, v6 bool) string {
	proto := "ICMP"
	if v6 {
		proto = "ICMPv6"
	}
	return fmt.Sprintf("%s %s (type %d code %d) from %s", proto, ic.Name, ic.Type, ic.Code, ic.From)
}

// icmpAnswer is what every probe kind reports for an ICMP error that answered it: the
// reason, the wire.icmp object and the detail sentence.
func icmpAnswer(v6 bool, typ, code uint8, from netip.Addr) (verdict.Reason, *verdict.ICMP, string) {
	reason, name := ClassifyICMP(v6, typ, code)
	ic := &verdict.ICMP{Type: typ, Code: code, Name: name}
	if from.IsValid() {
		ic.From = from.String()
	}
	return reason, ic, icmpDetail(ic, v6)
}

// fromThisHost applies the rule for an ICMP error whose sender is this host (sender is one
// of its addresses, or unknown when only an errno said it). Such an error is no router's
// answer. When this host gave up resolving the next hop (ARP/NDP), the kernel reports it as
// a host unreachable "from" its own address, after about 3 s; the verdict then says what
// the same failure says before the kernel gives up — the neighbor that never answered,
// layer link, no wire.icmp — so that every kind agrees at every timeout. Any other error
// this host made (a local firewall's reject) is layer local, its sender named as this host.
// sent words what was sent ("2 SYN(s)"). A target on this host answers from this host:
// the rule is not for it.
func fromThisHost(res Result, a Attempt, sender netip.Addr, sent string) Result {
	if sender.IsValid() && !isLocalAddr(sender) || isLocalAddr(a.Addr.Addr()) {
		return res
	}
	if res.Reason == verdict.HostUnreachable || res.Reason == verdict.NetUnreachable {
		if n, ok := unresolvedNeighbor(a); ok {
			res.Reason, res.Layer, res.ICMP, res.neighbor = verdict.HostUnreachable, verdict.LayerLink, nil, n
			res.Detail = fmt.Sprintf("%s; %s never left the link", n, sent)
			if res.WireTimes != nil {
				res.WireTimes.ICMP = time.Time{}
			}
			return res
		}
	}
	if sender.IsValid() && res.ICMP != nil {
		res.Layer = verdict.LayerLocal
		res.ICMP.From = ""
		res.Detail = strings.Replace(res.Detail, "from "+sender.String(), "made by this host ("+sender.String()+"), not by a router", 1)
	}
	return res
}

package probe

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"reachd/pkg/verdict"

	"golang.org/x/sys/unix"
)

type icmpMeaning struct {
	reason verdict.Reason
	name   string
}

// unreachCodes names the destination unreachable codes of ICMP (v6 false) and ICMPv6.
var unreachCodes = map[struct {
	v6   bool
	code uint8
}]icmpMeaning{
	{false, 0}: {verdict.NetUnreachable, "net unreachable"}, {false, 1}: {verdict.HostUnreachable, "host unreachable"},
	{false, 2}: {verdict.ProtocolUnreachable, "protocol unreachable"}, {false, 3}: {verdict.PortUnreachable, "port unreachable"},
	{false, 4}: {verdict.FragNeeded, "fragmentation needed"}, {false, 5}: {verdict.NetUnreachable, "source route failed"},
	{false, 6}: {verdict.NetUnreachable, "destination network unknown"}, {false, 7}: {verdict.HostUnreachable, "destination host unknown"},
	{false, 8}: {verdict.HostUnreachable, "source host isolated"}, {false, 9}: {verdict.AdminProhibited, "network administratively prohibited"},
	{false, 10}: {verdict.AdminProhibited, "host administratively prohibited"}, {false, 11}: {verdict.NetUnreachable, "network unreachable for TOS"},
	{false, 12}: {verdict.HostUnreachable, "host unreachable for TOS"}, {false, 13}: {verdict.AdminProhibited, "communication administratively prohibited"},
	{false, 14}: {verdict.AdminProhibited, "host precedence violation"}, {false, 15}: {verdict.AdminProhibited, "precedence cutoff in effect"},
	{true, 0}: {verdict.NetUnreachable, "no route to destination"}, {true, 1}: {verdict.AdminProhibited, "communication administratively prohibited"},
	{true, 2}: {verdict.NetUnreachable, "beyond scope of source address"}, {true, 3}: {verdict.HostUnreachable, "address unreachable"},
	{true, 4}: {verdict.PortUnreachable, "port unreachable"}, {true, 5}: {verdict.AdminProhibited, "source address failed ingress/egress policy"},
	{true, 6}: {verdict.AdminProhibited, "reject route to destination"},
}

// ClassifyICMP maps an ICMP (v6=false) or ICMPv6 error to a reason and a name for humans.
// Errors without a more specific reason (parameter problem, unknown codes) are icmp_error.
func ClassifyICMP(v6 bool, typ, code uint8) (verdict.Reason, string) {
	unreach := icmp4DestUnreach
	if v6 {
		unreach = icmp6DestUnreach
	}
	if typ == unreach {
		if m, ok := unreachCodes[struct {
			v6   bool
			code uint8
		}{v6, code}]; ok {
			return m.reason, m.name
		}
		return verdict.ICMPError, fmt.Sprintf("destination unreachable code %d", code)
	}
	var m icmpMeaning
	switch {
	case !v6 && typ == icmp4TimeExceeded && code == 1, v6 && typ == icmp6TimeExceeded && code == 1:
		m = icmpMeaning{verdict.TTLExceeded, "fragment reassembly time exceeded"}
	case !v6 && typ == icmp4TimeExceeded:
		m = icmpMeaning{verdict.TTLExceeded, "TTL exceeded in transit"}
	case v6 && typ == icmp6TimeExceeded:
		m = icmpMeaning{verdict.TTLExceeded, "hop limit exceeded in transit"}
	case !v6 && typ == icmp4SourceQuench:
		m = icmpMeaning{verdict.ICMPError, "source quench"}
	case v6 && typ == icmp6PacketTooBig:
		m = icmpMeaning{verdict.FragNeeded, "packet too big"}
	case v6 && typ == icmp6ParamProblem && code == 1:
		m = icmpMeaning{verdict.ProtocolUnreachable, "unrecognized next header"}
	case !v6 && typ == icmp4ParamProblem, v6 && typ == icmp6ParamProblem:
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
// this host made (a local firewall's reject) is layer local, marked wire.icmp.local.
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
			res.ICMPAt = time.Time{}
			return res
		}
	}
	if sender.IsValid() && res.ICMP != nil {
		res.Layer = verdict.LayerLocal
		res.ICMP.Local = true
		res.Detail = strings.Replace(res.Detail, "from "+sender.String(), "made by this host ("+sender.String()+"), not by a router", 1)
	}
	return res
}

func icmpResult(res Result, q QueuedError, a Attempt) Result {
	res.Reason, res.ICMP, res.Detail = icmpAnswer(a.Addr.Addr().Is6(), q.Type, q.Code, q.Offender)
	res.icmpAt = q.At
	return fromThisHost(res, a, q.Offender, synsSent(res))
}

// asyncErrnoResult classifies a handshake that failed without an ICMP error queued.
func asyncErrnoResult(res Result, e int, elapsed time.Duration) Result {
	switch unix.Errno(e) {
	case unix.ECONNREFUSED:
		res.Reason, res.Detail = verdict.Refused, "RST in answer to SYN: nothing listens on the port, or a firewall resets"
		res.RTT, res.HasRTT = elapsed, true
	case unix.ETIMEDOUT:
		res.Reason, res.Detail = verdict.Timeout, "the kernel gave up retransmitting the SYN"
	case unix.ECONNRESET:
		res.Reason, res.Detail = verdict.Reset, "connection reset during the handshake"
	case unix.ENETUNREACH:
		res.Reason, res.Detail = verdict.NetUnreachable, "network unreachable (no ICMP detail queued)"
	case unix.EHOSTUNREACH:
		res.Reason, res.Detail = verdict.HostUnreachable, "host unreachable (no ICMP detail queued)"
	case unix.EACCES, unix.EPERM:
		res.Reason, res.Detail = verdict.AdminProhibited, fmt.Sprintf("handshake refused by policy: %v", unix.Errno(e))
	default:
		res.Reason, res.Detail = verdict.LocalError, fmt.Sprintf("handshake failed: %v", unix.Errno(e))
	}
	return res
}

// sendError classifies a send (connect, sendto) that failed synchronously: nothing left
// the host, so the cause is local (routing table, policy, resources).
func sendError(op string, err error, a Attempt) Result {
	dst := a.Addr.Addr()
	var r Result
	switch {
	case errors.Is(err, unix.ENETUNREACH), errors.Is(err, unix.EHOSTUNREACH):
		r = Result{Reason: verdict.NoRoute, Detail: fmt.Sprintf("no route to %s in the local routing table", dst)}
		if errors.Is(err, unix.EHOSTUNREACH) {
			r.Detail = fmt.Sprintf("the local routing table marks %s unreachable", dst)
		}
		if a.Interface != "" {
			if ifc, ierr := net.InterfaceByName(a.Interface); ierr == nil && ifc.Flags&net.FlagUp == 0 {
				r = Result{Reason: verdict.LocalError, Detail: fmt.Sprintf("interface %s is down", a.Interface)}
			}
		}
	case errors.Is(err, unix.EACCES) && isBroadcast(a):
		// The kernel refuses to send to a broadcast address without SO_BROADCAST, with the
		// same errno as a prohibit route.
		r = fail(verdict.LocalError, fmt.Sprintf("%s is a broadcast address: reachd probes one host, not a network", dst))
	case errors.Is(err, unix.EACCES):
		r = Result{Reason: verdict.AdminProhibited, Layer: verdict.LayerLocal,
			Detail: fmt.Sprintf("the local routing table prohibits %s (prohibit route)", dst)}
	case errors.Is(err, unix.EPERM):
		r = Result{Reason: verdict.AdminProhibited, Layer: verdict.LayerLocal,
			Detail: fmt.Sprintf("%s to %s blocked on this host (firewall or cgroup policy)", op, dst)}
	case errors.Is(err, unix.EINVAL):
		r = Result{Reason: verdict.NoRoute, Detail: fmt.Sprintf("%s to %s: %v (blackhole route?)", op, dst, err)}
	case errors.Is(err, unix.EADDRNOTAVAIL):
		r = Result{Reason: verdict.LocalError, Detail: "no free local port or source address (EADDRNOTAVAIL)"}
	case errors.Is(err, unix.ENOBUFS), errors.Is(err, unix.EAGAIN):
		r = Result{Reason: verdict.LocalError, Detail: fmt.Sprintf("%s to %s: the socket's send buffer is full (ENOBUFS/EAGAIN)", op, dst)}
	default:
		r = socketError(op, err)
	}
	return r
}

// socketError classifies failures to create or set up a socket.
func socketError(op string, err error) Result {
	switch {
	case errors.Is(err, unix.EMFILE), errors.Is(err, unix.ENFILE):
		return Result{Reason: verdict.LocalError, Detail: fmt.Sprintf("%s: out of file descriptors (raise LimitNOFILE / ulimit -n)", op)}
	case errors.Is(err, unix.ENOBUFS), errors.Is(err, unix.ENOMEM):
		return Result{Reason: verdict.LocalError, Detail: fmt.Sprintf("%s: kernel out of memory for sockets", op)}
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return Result{Reason: verdict.Permission, Detail: fmt.Sprintf("%s: %v (binding to an interface needs CAP_NET_RAW on older kernels)", op, err)}
	}
	return Result{Reason: verdict.LocalError, Detail: fmt.Sprintf("%s: %v", op, err)}
}

func isAsyncICMPErrno(err error) bool {
	return errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, unix.EHOSTUNREACH) || errors.Is(err, unix.ENETUNREACH) ||
		errors.Is(err, unix.EHOSTDOWN) || errors.Is(err, unix.EPROTO) || errors.Is(err, unix.EMSGSIZE) || errors.Is(err, unix.ENOPROTOOPT) ||
		errors.Is(err, unix.EACCES) || errors.Is(err, unix.ENONET)
}

// errnoAsICMP stands in for an error-queue message when only the errno is known.
func errnoAsICMP(err error) *QueuedError {
	q := &QueuedError{Origin: eeOriginICMP, Type: icmp4DestUnreach}
	switch {
	case errors.Is(err, unix.ECONNREFUSED):
		q.Code = 3
	case errors.Is(err, unix.EHOSTUNREACH):
		q.Code = 1
	case errors.Is(err, unix.ENETUNREACH):
		q.Code = 0
	default:
		q.Code = 255
	}
	return q
}

// isLocalAddr reports whether a is one of this host's addresses (in the current netns).
func isLocalAddr(a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	addrs, err := localAddrs()
	if err != nil {
		return false
	}
	return slices.Contains(addrs, a.WithZone(""))
}

func localAddrs() ([]netip.Addr, error) {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	out := make([]netip.Addr, 0, len(as))
	for _, a := range as {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out, nil
}

// isBroadcast says whether the attempt's target is a broadcast address, by its route.
func isBroadcast(a Attempt) bool {
	rt, err := attemptRoute(a)
	return err == nil && rt.Type == "broadcast"
}

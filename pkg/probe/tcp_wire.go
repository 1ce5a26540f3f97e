package probe

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"reachd/pkg/netctx"
	"reachd/pkg/verdict"
	"reachd/pkg/wire"
)

// catchUp bounds how long a verdict waits for the ring-buffer reader to deliver an event
// the socket has already reported (the SYN-ACK is in the ring before connect() returns).
const catchUp = 100 * time.Millisecond

// registerTCP binds the socket to the source the route would choose (unless --source did),
// so that the flow's 5-tuple is known before the SYN leaves, attaches the TC programs to
// the route's interface and registers the flow. It returns nil when any step fails: the
// probe then runs with kernel/userspace timing, and nothing else changes.
func registerTCP(fd int, a Attempt) *wire.Flow {
	dst := a.Addr.Addr()
	oif := 0
	if z := dst.Zone(); z != "" {
		oif, _ = scopeID(z)
	} else if a.Interface != "" {
		oif, _ = scopeID(a.Interface)
	}
	rt, err := netctx.RouteTo(dst.WithZone(""), oif)
	if err != nil || rt.LinkIndex == 0 {
		return nil
	}
	if !a.Source.IsValid() {
		src := rt.Src
		if !src.IsValid() {
			return nil
		}
		if src.Is6() && src.IsLinkLocalUnicast() {
			src = src.WithZone(fmt.Sprint(rt.LinkIndex))
		}
		sa, err := sockaddrOf(netip.AddrPortFrom(src, 0))
		if err != nil || unix.Bind(fd, sa) != nil {
			return nil
		}
	}
	sn, err := unix.Getsockname(fd)
	if err != nil {
		return nil
	}
	local := addrPortOf(sn)
	if local.Port() == 0 {
		return nil
	}
	if err := a.Wire.Attach(rt.LinkIndex); err != nil {
		return nil
	}
	f, err := a.Wire.Register(wire.ProtoTCP, local, netip.AddrPortFrom(dst.WithZone(""), a.Addr.Port()))
	if err != nil {
		return nil
	}
	return f
}

// applyWire replaces the userspace view of an attempt with what TC saw: the SYNs (first and
// retransmitted), the answer and the round trip from the last SYN before it.
func applyWire(res Result, f *wire.Flow, startWall time.Time, startMono int64) Result {
	var want wire.EventKind
	switch {
	case res.Reason == verdict.OK:
		want = wire.EvSYNACK
	case res.Reason == verdict.Refused:
		want = wire.EvRST
	case res.ICMP != nil:
		want = wire.EvICMPError
	}
	evs := f.Events()
	if want != 0 {
		evs = f.WaitFor(time.Now().Add(catchUp), func(e wire.Event) bool { return wire.EventKind(e.Kind) == want })
	}
	slices.SortFunc(evs, func(x, y wire.Event) int { return int(int64(x.TsNs) - int64(y.TsNs)) })
	wall := func(ns uint64) time.Time { return startWall.Add(time.Duration(int64(ns) - startMono)) }

	var syns []uint64
	var answer *wire.Event
	for i := range evs {
		e := &evs[i]
		switch k := wire.EventKind(e.Kind); {
		case k == wire.EvSYN && answer == nil:
			syns = append(syns, e.TsNs)
		case k == want && answer == nil:
			answer = e
		}
	}
	if len(syns) == 0 {
		return res // the SYN left through an interface we do not watch
	}
	wt := &WireTimes{}
	for _, s := range syns {
		wt.SYNs = append(wt.SYNs, wall(s))
	}
	n := len(syns) - 1
	res.SYNRetransmits = &n
	res.WireTimes = wt
	if want == 0 { // silence: the SYN count is the evidence
		res.TimingSource = verdict.SourceWire
		if res.Reason == verdict.Timeout {
			res.Detail = silenceDetail(res.waited, len(syns), " seen leaving on the wire")
		}
		return res
	}
	if answer == nil {
		return res // the answer arrived where we do not watch: keep userspace timing
	}
	rtt := time.Duration(answer.TsNs - syns[len(syns)-1])
	res.TimingSource = verdict.SourceWire
	if want != wire.EvICMPError {
		// An ICMP error is not the target's answer: rtt_ms stays null, as without eBPF, and
		// wire.icmp_at says when the router's error arrived.
		res.RTT, res.HasRTT = rtt, true
	}
	switch want {
	case wire.EvSYNACK:
		wt.SYNACK = wall(answer.TsNs)
		if n > 0 {
			res.Detail = fmt.Sprintf("handshake completed after %d SYN retransmission(s): the SYN-ACK answered the last SYN in %s; the earlier SYN(s) got no answer",
				n, rtt.Round(time.Microsecond))
		}
	case wire.EvRST:
		wt.RST = wall(answer.TsNs)
	case wire.EvICMPError:
		wt.ICMP = wall(answer.TsNs)
		if res.ICMP != nil && res.ICMP.From == "" {
			res.ICMP.From = answer.FromAddr().String()
		}
	}
	return res
}

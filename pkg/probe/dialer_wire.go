package probe

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"reachd/pkg/verdict"
	"reachd/pkg/wire"
)

// registerTCP prepares an attempt's socket for observation before its SYN leaves. For the
// TC programs it binds the socket to the source the route would choose (unless --source
// did), so that the 5-tuple is known, and attaches to the route's interface; for the
// tracepoints it registers the socket's cookie. Whatever fails only lowers the timing
// source (wire → kernel → userspace); it returns nil when nothing can be observed, and a
// note for the verdict when the reason is one the operator must hear of.
func registerTCP(fd int, a Attempt) (*wire.Flow, string) {
	f, note := registerFlow(fd, a, wire.ProtoTCP)
	if f == nil {
		// The tracepoints can still time the handshake, by the socket's cookie.
		f, _ = a.Wire.Register(wire.ProtoTCP, netip.AddrPort{}, a.Addr)
	}
	if f == nil {
		return nil, note
	}
	if cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE); err == nil {
		if err := f.AddSocket(cookie); errors.Is(err, wire.ErrFlowTableFull) {
			note = tableFullNote(err)
		}
	}
	return f, note
}

// tcpTimeline is one attempt's handshake as an observer saw it: every SYN sent (first
// one first) and the instant of the answer, in CLOCK_MONOTONIC ns.
type tcpTimeline struct {
	syns   []uint64
	answer uint64 // 0: no answer seen
	from   netip.Addr
	// TC only: the SYN's and the SYN-ACK's sequence numbers.
	isn, peerISN uint32
}

// wantEvents are the events that answer a handshake as its socket ended it: at TC, and at
// the tracepoints. Zero: silence, nothing answered.
type wantEvents struct{ tc, trace wire.EventKind }

func wantFor(res Result) wantEvents {
	switch {
	case res.Reason == verdict.OK:
		return wantEvents{wire.EvSYNACK, wire.EvState}
	case res.Reason == verdict.Refused:
		return wantEvents{wire.EvRST, wire.EvResetRx}
	case res.ICMP != nil:
		return wantEvents{wire.EvICMPError, wire.EvState}
	}
	return wantEvents{}
}

// handshakeEvents returns the flow's events, in time order. The tracepoints fire in the
// kernel before the socket wakes us, TC before that: both are in the ring already, but the
// reader may not have delivered them yet.
func handshakeEvents(f *wire.Flow, w wantEvents) []wire.Event {
	var evs []wire.Event
	if w.tc == 0 {
		evs = f.Sync() // silence: count every SYN the kernel saw
	} else {
		evs = f.WaitFor(func(e wire.Event) bool {
			k := wire.EventKind(e.Kind)
			return k == w.tc || (k == w.trace && (k != wire.EvState || e.StateOld == wire.TCPSynSent))
		})
	}
	slices.SortFunc(evs, func(x, y wire.Event) int { return int(int64(x.TsNs) - int64(y.TsNs)) })
	return evs
}

// observedTimeline is the handshake as TC saw it (timing_source wire), else as the
// tracepoints did (kernel).
func observedTimeline(evs []wire.Event, w wantEvents, res Result, startWall time.Time, startMono int64) (tcpTimeline, string) {
	if tl := tcTimeline(evs, w.tc); len(tl.syns) > 0 {
		return tl, verdict.SourceWire
	}
	tl := traceTimeline(evs, w.tc)
	if tl.answer == 0 && w.tc == wire.EvICMPError && !res.icmpAt.IsZero() {
		// An ICMP error that arrives while connect() still holds the socket lock (a fast
		// path) does not close the socket, so no state change marks it; the error queue's
		// kernel timestamp does.
		tl.answer = uint64(startMono + int64(res.icmpAt.Sub(startWall)))
	}
	return tl, verdict.SourceKernel
}

// applyWire replaces the userspace view of an attempt with what was observed in the
// kernel: from TC (timing_source wire) when it saw the SYNs, else from the TCP tracepoints
// (timing_source kernel). The round trip is the answer minus the last SYN before it.
func applyWire(res Result, f *wire.Flow, startWall time.Time, startMono int64) Result {
	w := wantFor(res)
	tl, source := observedTimeline(handshakeEvents(f, w), w, res, startWall, startMono)
	if len(tl.syns) == 0 {
		return res // nothing observed: keep userspace timing
	}
	wall := func(ns uint64) time.Time { return startWall.Add(time.Duration(int64(ns) - startMono)) }
	tr := tcpOf(&res)
	tr.syns = nil
	for _, s := range tl.syns {
		tr.syns = append(tr.syns, wall(s))
	}
	n := len(tl.syns) - 1
	tr.synRetransmits = &n
	if w.tc == 0 { // silence: the SYN count is the evidence
		res.TimingSource = source
		switch {
		case res.Reason == verdict.Timeout:
			where := " seen leaving on the wire"
			if source == verdict.SourceKernel {
				where = " sent by the kernel"
			}
			res.Detail = silenceDetail(res.waited, len(tl.syns), where)
		case res.neighbor != "":
			res.Detail = fmt.Sprintf("%s; %d SYN(s) never left the link", res.neighbor, len(tl.syns))
		}
		return res
	}
	if tl.answer == 0 {
		return res // the answer was not observed: keep userspace timing
	}
	rtt := time.Duration(tl.answer - tl.syns[len(tl.syns)-1])
	res.TimingSource = source
	if w.tc != wire.EvICMPError {
		// An ICMP error is not the target's answer: rtt_ms stays null, as without eBPF, and
		// wire.icmp_at says when the router's error arrived.
		res.RTT, res.HasRTT = rtt, true
		// The phase, unlike the round trip, includes the wait for retransmissions.
		res.Connect = time.Duration(tl.answer - tl.syns[0])
	}
	switch w.tc {
	case wire.EvSYNACK:
		tr.synack = wall(tl.answer)
		tr.isn, tr.peerISN, tr.hasISN = tl.isn, tl.peerISN, source == verdict.SourceWire
		if n > 0 {
			res.Detail = fmt.Sprintf("handshake completed after %d SYN retransmission(s): the SYN-ACK answered the last SYN in %s; the earlier SYN(s) got no answer",
				n, rtt.Round(time.Microsecond))
		}
	case wire.EvRST:
		tr.rst = wall(tl.answer)
	case wire.EvICMPError:
		res.ICMPAt = wall(tl.answer)
		if res.ICMP != nil && res.ICMP.From == "" && tl.from.IsValid() {
			res.ICMP.From = tl.from.String()
		}
	}
	return res
}

// tcTimeline reads the packets TC saw: SYNs leaving, and the first answer of kind want.
func tcTimeline(evs []wire.Event, want wire.EventKind) tcpTimeline {
	var tl tcpTimeline
	for i := 0; i < len(evs) && tl.answer == 0; i++ {
		e := &evs[i]
		switch k := wire.EventKind(e.Kind); {
		case k == wire.EvSYN:
			tl.syns = append(tl.syns, e.TsNs)
			tl.isn = e.Seq
		case k == want && want != 0:
			tl.answer = e.TsNs
			tl.peerISN = e.Seq
			if k == wire.EvICMPError {
				tl.from = e.FromAddr()
			}
		}
	}
	return tl
}

// traceTimeline reads the TCP tracepoints: entering SYN_SENT is the first SYN (the kernel
// sends it in the same call), each retransmission in SYN_SENT another; the answer is
// SYN_SENT→ESTABLISHED for a SYN-ACK, a received reset for an RST, and SYN_SENT→CLOSE for
// an ICMP error (the kernel processed it and aborted the connection).
func traceTimeline(evs []wire.Event, want wire.EventKind) tcpTimeline {
	var tl tcpTimeline
	for i := 0; i < len(evs) && tl.answer == 0; i++ {
		e := &evs[i]
		k := wire.EventKind(e.Kind)
		switch {
		case k == wire.EvState && e.StateNew == wire.TCPSynSent:
			tl.syns = append(tl.syns, e.TsNs)
		case k == wire.EvRetransmit && e.StateNew == wire.TCPSynSent && len(tl.syns) > 0:
			tl.syns = append(tl.syns, e.TsNs)
		case want == wire.EvSYNACK && k == wire.EvState && e.StateOld == wire.TCPSynSent && e.StateNew == wire.TCPEstablished,
			want == wire.EvRST && k == wire.EvResetRx,
			want == wire.EvICMPError && k == wire.EvState && e.StateOld == wire.TCPSynSent && e.StateNew == wire.TCPClose:
			tl.answer = e.TsNs
		}
	}
	return tl
}

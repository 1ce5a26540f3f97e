package probe

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"reachd/pkg/verdict"
	"reachd/pkg/wire"
)

// The hop senders of a path trace, one per kind of flow. What stays the probe's own in
// each hop, and what varies:
//   - TCP: the SYN from the attempt's local port; the kernel picks each hop's sequence
//     number.
//   - UDP: the attempt's first datagram, byte for byte, from its local port: nothing
//     varies, so a hop's answer is told from an earlier hop's by its time alone.
//   - ICMP: an echo request with the attempt's type, code and checksum (routers that
//     hash ICMP hash those first four bytes); the sequence number varies, and a payload
//     word makes up for it and for the trace's own identifier (paris-traceroute's
//     checksum trick).

// newHopper returns the hop sender of a failed attempt's flow, nil when the attempt left
// nothing to send again.
func newHopper(a Attempt, last Result) (hopper, error) {
	switch {
	case last.proto == unix.IPPROTO_TCP && last.Local.IsValid():
		return &flowHopper{a: a, local: zoned(last.Local, a), typ: unix.SOCK_STREAM}, nil
	case last.proto == unix.IPPROTO_UDP && last.Local.IsValid() && last.payload != nil:
		return &flowHopper{a: a, local: zoned(last.Local, a), typ: unix.SOCK_DGRAM, payload: last.payload}, nil
	case (last.proto == unix.IPPROTO_ICMP || last.proto == unix.IPPROTO_ICMPV6) && len(last.payload) >= echoHeaderLen:
		return newEchoHopper(a, last.payload)
	}
	return nil, errors.New("the attempt left no flow to send again")
}

// zoned gives a link-local local address the target's zone, which binding needs.
func zoned(local netip.AddrPort, a Attempt) netip.AddrPort {
	if l := local.Addr(); l.Is6() && l.IsLinkLocalUnicast() && l.Zone() == "" {
		return netip.AddrPortFrom(l.WithZone(a.Addr.Addr().Zone()), local.Port())
	}
	return local
}

// flowHopper sends a TCP SYN or the UDP datagram from the flow's own local port, a socket
// per hop (so that a TCP hop's answer reaches none but it).
type flowHopper struct {
	a       Attempt
	local   netip.AddrPort
	typ     int    // SOCK_STREAM or SOCK_DGRAM
	payload []byte // UDP: the datagram
}

func (t *flowHopper) close() {}

func (t *flowHopper) hop(ctx context.Context, ttl int, wait time.Duration) (hopAnswer, error) {
	ans := hopAnswer{Hop: verdict.Hop{N: ttl}}
	proto, wproto, stamps := unix.IPPROTO_TCP, uint8(wire.ProtoTCP), sockStreamStamps
	if t.typ == unix.SOCK_DGRAM {
		proto, wproto, stamps = unix.IPPROTO_UDP, wire.ProtoUDP, sockDgramStamps
	}
	f, fd, sa, res, ok := probeSocket(t.a, t.typ, proto)
	if !ok {
		return ans, errors.New(res.Detail)
	}
	defer f.Close()
	b := t.a
	b.Source = netip.Addr{} // bound below, with the flow's port
	if res, ok := setupSocket(fd, b, stamps); !ok {
		return ans, errors.New(res.Detail)
	}
	if err := hopSocket(fd, t.local, ttl); err != nil {
		return ans, err
	}
	wf := watchHop(t.a, wproto, t.local)
	if wf != nil {
		defer wf.Close()
	}
	sent := time.Now()
	if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		return ans, fmt.Errorf("connect from %s: %w", t.local, err)
	}
	events, tx := int16(unix.POLLOUT), wire.EvSYN
	answered := func(revents int16) bool {
		soErr, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		return soErr == 0 && revents&unix.POLLOUT != 0 || unix.Errno(soErr) == unix.ECONNREFUSED
	}
	if t.typ == unix.SOCK_DGRAM {
		if _, err := unix.Write(fd, t.payload); err != nil {
			return ans, fmt.Errorf("send from %s: %w", t.local, err)
		}
		events, tx = unix.POLLIN, wire.EvUDPTx
		answered = func(revents int16) bool {
			_, _, err := unix.Recvfrom(fd, make([]byte, 1), unix.MSG_DONTWAIT|unix.MSG_TRUNC)
			return err == nil
		}
	}
	ans = awaitHop(ctx, fd, t.a, ans, sent, wait, events, answered)
	if ans.Addr != "" && wf != nil {
		ans.wire = wireHopTime(wf, &ans.Hop, tx, func(e wire.Event) bool { return e.Egress == 0 && isAnswer(wire.EventKind(e.Kind)) })
	}
	return ans, nil
}

// isAnswer says whether an event at TC answers a hop's probe.
func isAnswer(k wire.EventKind) bool {
	switch k {
	case wire.EvICMPError, wire.EvSYNACK, wire.EvRST, wire.EvUDPRx, wire.EvEchoReply:
		return true
	}
	return false
}

// awaitHop waits on a hop's socket for its answer, at most wait: an ICMP error in the error
// queue (time exceeded from a router, or an error that ends the trace), else what answered
// says whether the target did (its SYN-ACK or RST, its datagram) once the socket polls
// events.
func awaitHop(ctx context.Context, fd int, a Attempt, ans hopAnswer, sent time.Time, wait time.Duration, events int16, answered func(revents int16) bool) hopAnswer {
	until := sent.Add(wait)
	target := a.Addr.Addr().WithZone("")
	for rev, ok := pollReady(ctx, fd, events, until); ok; rev, ok = pollReady(ctx, fd, events, until) {
		if q, ok := lastICMP(drainErrQueue(fd)); ok {
			at := q.At
			if at.IsZero() {
				at = time.Now()
			}
			return icmpHop(ans, q, target, at.Sub(sent))
		}
		if rev&events != 0 && answered(rev) {
			ans.Addr, ans.RTTMs = target.String(), verdict.MsPtr(time.Since(sent))
			ans.reached, ans.final = true, true
			return ans
		}
	}
	return ans
}

// icmpHop is a hop answered by an ICMP error after rtt: a router's time exceeded, or an
// error that ends the trace (the target's own, or a router's reject).
func icmpHop(ans hopAnswer, q QueuedError, target netip.Addr, rtt time.Duration) hopAnswer {
	reason, name := ClassifyICMP(target.Is6(), q.Type, q.Code)
	ans.Addr, ans.ICMP, ans.RTTMs = q.Offender.WithZone("").String(), name, verdict.MsPtr(rtt)
	ans.reached = q.Offender.WithZone("") == target
	ans.final = reason != verdict.TTLExceeded
	return ans
}

// watchHop registers one hop's flow with the TC programs, so that its probe and the answer
// are timed at the wire; nil when TC is not in use. The attempt's own registration has
// ended, and its interface is attached.
func watchHop(a Attempt, proto uint8, local netip.AddrPort) *wire.Flow {
	if a.Wire == nil || !a.Wire.HasTC() {
		return nil
	}
	remote := netip.AddrPortFrom(a.Addr.Addr().WithZone(""), a.Addr.Port())
	f, err := a.Wire.Register(proto, netip.AddrPortFrom(local.Addr().WithZone(""), local.Port()), remote)
	if err != nil {
		return nil
	}
	return f
}

// wireHopTime replaces a hop's round trip with the one TC saw: from the last of its probes
// to leave (tx) before the first answer to it. False when TC saw no such pair.
func wireHopTime(f *wire.Flow, h *verdict.Hop, tx wire.EventKind, answer func(wire.Event) bool) bool {
	evs := f.WaitFor(answer)
	slices.SortFunc(evs, func(x, y wire.Event) int { return int(int64(x.TsNs) - int64(y.TsNs)) })
	var sent uint64
	for _, e := range evs {
		switch {
		case wire.EventKind(e.Kind) == tx && e.Egress != 0:
			sent = e.TsNs
		case sent != 0 && answer(e):
			h.RTTMs = verdict.MsPtr(time.Duration(e.TsNs - sent))
			return true
		}
	}
	return false
}

// hopSocket readies fd to carry the flow's SYN at ttl: the flow's local address and port
// (free again: the attempt's socket is closed), and closed with a reset.
func hopSocket(fd int, local netip.AddrPort, ttl int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
		return err
	}
	if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1}); err != nil {
		return err
	}
	if err := setHopLimit(fd, local.Addr().Is6(), ttl); err != nil {
		return err
	}
	sa, err := sockaddrOf(local)
	if err != nil {
		return err
	}
	if err := unix.Bind(fd, sa); err != nil {
		return fmt.Errorf("bind the flow's own %s: %w", local, err)
	}
	return nil
}

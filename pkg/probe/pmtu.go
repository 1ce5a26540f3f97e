package probe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"

	"reachd/pkg/netctx"
	"reachd/pkg/verdict"
)

// A path MTU search sends echo requests with DF set (IP_PMTUDISC_PROBE: neither
// fragmented here nor held back by a cached path MTU) at the egress link's MTU, then
// smaller, and finds the largest that is answered. A path that loses full-size packets
// while no router says "fragmentation needed" / "packet too big" is an MTU black hole: a
// tunnel without working PMTUD, or those ICMP errors filtered, which every peer of the
// path sees as a timeout.

// pmtuVerdict turns a search into the attempt's result, whose small echoes were answered:
// a router's fragmentation needed is frag_needed with the MTU it gave; full-size echoes
// lost without one, while smaller ones pass, are mtu_blackhole; else the path passes the
// link's MTU.
func pmtuVerdict(res Result, r pmtuResult) Result {
	what := fmt.Sprintf("%d DF echo request(s) in %s", r.probes, r.took.Round(time.Millisecond))
	switch {
	case r.ptb != nil:
		res.Reason, res.Layer = verdict.FragNeeded, verdict.LayerNetwork
		res.Detail = fmt.Sprintf("%s: %d-byte packets need fragmenting at %s, which gives a path MTU of %d (%s)",
			res.Detail, r.high, r.ptb.Offender, r.ptb.Info, what)
	case r.largest > 0 && r.largest < r.high:
		res.Reason, res.Layer = verdict.MTUBlackhole, verdict.LayerNetwork
		res.Detail = fmt.Sprintf("%s, but %d-byte packets are lost without a \"fragmentation needed\" or \"packet too big\": an MTU black hole; the largest that passes is %d bytes (%s)",
			res.Detail, r.high, r.largest, what)
	case r.largest == r.high:
		res.Detail += fmt.Sprintf("; the path passes %d-byte packets, the link's MTU", r.high)
	default:
		res.Detail += "; the path MTU search got no answer at any size"
	}
	return res
}

// pmtuResult is what a search found.
type pmtuResult struct {
	high    int           // the size tried first: the egress link's MTU
	largest int           // the largest size answered (0: none)
	ptb     *QueuedError  // a router's fragmentation needed / packet too big, if one came
	probes  int           // echo requests sent
	took    time.Duration // the search's time
}

// PMTUBudget is what a path MTU search may add to an attempt.
const PMTUBudget = 12 * time.Second

// pmtuMin is the smallest size searched: IPv4's minimum reassembly size, IPv6's minimum MTU.
func pmtuMin(v6 bool) int {
	if v6 {
		return 1280
	}
	return 576
}

// pmtuSearch searches the path MTU toward a.Addr, each probe waiting at most wait.
func pmtuSearch(ctx context.Context, a Attempt, wait time.Duration) (pmtuResult, error) {
	start := time.Now()
	v6 := a.Addr.Addr().Is6()
	var r pmtuResult
	rt, err := netctx.RouteTo(routeQuery(a))
	if err != nil {
		return r, fmt.Errorf("route: %w", err)
	}
	ifc, err := net.InterfaceByIndex(rt.LinkIndex)
	if err != nil {
		return r, fmt.Errorf("egress link: %w", err)
	}
	ps, err := newPMTUSocket(a)
	if err != nil {
		return r, err
	}
	defer ps.close()
	r.high = ifc.MTU
	low, high := pmtuMin(v6), ifc.MTU
	try := func(size int) (bool, error) {
		r.probes++
		ok, ptb, err := ps.echo(ctx, size, uint16(r.probes), wait)
		if ptb != nil && r.ptb == nil {
			r.ptb = ptb
		}
		return ok, err
	}
	for _, first := range []int{high, low} { // full size, then the minimum
		ok, err := try(first)
		if err != nil || r.ptb != nil {
			r.took = time.Since(start)
			return r, err
		}
		if ok {
			r.largest = first
			break
		}
	}
	if r.largest == high || r.largest == 0 { // all pass, or nothing passes: no MTU to find
		r.took = time.Since(start)
		return r, nil
	}
	// The minimum passes and full size does not: halve down to the byte (about ten
	// probes, half of them lost and waited for).
	lo, hi := low, high
	for hi-lo > 1 && ctx.Err() == nil && r.ptb == nil {
		mid := (lo + hi) / 2
		ok, err := try(mid)
		if err != nil {
			break
		}
		if ok {
			lo = mid
		} else {
			hi = mid
		}
	}
	r.largest, r.took = lo, time.Since(start)
	return r, nil
}

// pmtuSocket is a raw echo socket with DF set and never held back by a cached path MTU.
type pmtuSocket struct{ *rawEcho }

func newPMTUSocket(a Attempt) (*pmtuSocket, error) {
	e, err := openRawEcho(a, "a path MTU search")
	if err != nil {
		return nil, err
	}
	level, disc, probe := unix.SOL_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_PROBE
	if e.v6 {
		level, disc, probe = unix.SOL_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_PROBE
	}
	if err := unix.SetsockoptInt(e.fd, level, disc, probe); err != nil {
		e.close()
		return nil, fmt.Errorf("path MTU socket: %w", err)
	}
	return &pmtuSocket{e}, nil
}

// echo sends an echo request of size bytes (IP header included) and waits for its reply,
// or a router's fragmentation needed / packet too big.
func (ps *pmtuSocket) echo(ctx context.Context, size int, seq uint16, wait time.Duration) (bool, *QueuedError, error) {
	hdr, reply := 20, icmp4EchoReply
	if ps.v6 {
		hdr, reply = 40, icmp6EchoReply
	}
	msg := buildEcho(ps.v6, ps.id, seq, make([]byte, size-hdr-echoHeaderLen))
	if _, err := unix.Write(ps.fd, msg); err != nil {
		if errors.Is(err, unix.EMSGSIZE) { // larger than this host lets out: not the path's
			return false, nil, nil
		}
		return false, nil, fmt.Errorf("send %d bytes: %w", size, err)
	}
	until := time.Now().Add(wait)
	buf := make([]byte, 65536)
	for ctx.Err() == nil && time.Now().Before(until) {
		pfd := []unix.PollFd{{Fd: int32(ps.fd), Events: unix.POLLIN | unix.POLLERR}}
		if n, _ := unix.Poll(pfd, int(min(max(time.Until(until).Milliseconds(), 1), 100))); n == 0 {
			continue
		}
		for _, q := range drainErrQueue(ps.fd) {
			if q.IsICMP() && (!ps.v6 && q.Type == icmp4DestUnreach && q.Code == 4 || ps.v6 && q.Type == icmp6PacketTooBig) {
				return false, &q, nil
			}
		}
		for p, _, ok := ps.read(buf); ok; p, _, ok = ps.read(buf) {
			if p.Type == reply && p.ID == ps.id && p.Seq == seq {
				return true, nil, nil
			}
		}
	}
	return false, nil, nil
}

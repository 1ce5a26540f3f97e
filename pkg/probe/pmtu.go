package probe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"

	"reachd/pkg/netctx"
	"reachd/pkg/schedule"
	"reachd/pkg/verdict"
)

// A path MTU search sends echo requests with DF set (IP_PMTUDISC_PROBE: neither
// fragmented here nor held back by a cached path MTU) at the egress link's MTU, then
// smaller, and finds the largest that is answered. A path that loses full-size packets
// while no router says "fragmentation needed" / "packet too big" is an MTU black hole: a
// tunnel without working PMTUD, or those ICMP errors filtered, which every peer of the
// path sees as a timeout.

// pmtuVerdict turns a search into the attempt's result: a router's fragmentation needed
// is frag_needed with the MTU it gave; full-size packets lost without one, while smaller
// ones pass, are mtu_blackhole; else the attempt's own reason stands, and the detail says
// what the path passes.
func pmtuVerdict(res Result, r pmtuResult) Result {
	what := fmt.Sprintf("%d %s in %s", r.probes, r.unit, r.took.Round(100*time.Microsecond))
	switch {
	case r.ptb != nil:
		at := "a router (not seen at TC)"
		if r.ptb.Offender.IsValid() {
			at = r.ptb.Offender.String()
		}
		res.Reason, res.Layer = verdict.FragNeeded, verdict.LayerNetwork
		res.Detail = fmt.Sprintf("%s; path MTU: %d-byte packets need fragmenting at %s, which gives a path MTU of %d (%s)",
			res.Detail, r.tried, at, r.ptb.Info, what)
	case r.largest > 0 && r.largest < r.high:
		res.Reason, res.Layer = verdict.MTUBlackhole, verdict.LayerNetwork
		res.Detail = fmt.Sprintf("%s; path MTU: %d-byte packets are lost without a \"fragmentation needed\" or \"packet too big\", smaller ones pass: an MTU black hole; the largest that passes is %d bytes (%s)",
			res.Detail, r.high, r.largest, what)
	case r.largest == r.high:
		res.Detail += fmt.Sprintf("; path MTU: the path passes %d-byte packets, %s", r.high, r.highIs)
	default:
		res.Detail += fmt.Sprintf("; path MTU: no answer at any size (%s)", what)
	}
	return res
}

// pmtuResult is what a search found.
type pmtuResult struct {
	high    int           // the size tried first
	highIs  string        // what high is: the egress link's MTU, or the peer's MSS
	unit    string        // what was sent: DF echo requests, DF TCP segments
	largest int           // the largest size answered (0: none)
	ptb     *QueuedError  // a router's fragmentation needed / packet too big, if one came
	tried   int           // the size the router said needs fragmenting
	probes  int           // packets sent
	took    time.Duration // the search's time
}

// The search rate cap, process-wide, as the trace's: a daemon with many targets failing
// at once searches a few paths, not all (a search sends a dozen packets or connections).
const (
	PMTURate  = 2
	PMTUBurst = 5
)

var pmtuTokens = schedule.NewSharedBucket(PMTURate, PMTUBurst)

// PMTUBudget is what a path MTU search may add to an attempt.
const PMTUBudget = 12 * time.Second

// pmtuMin is the smallest size searched: IPv4's minimum reassembly size, IPv6's minimum MTU.
func pmtuMin(v6 bool) int {
	if v6 {
		return 1280
	}
	return 576
}

// pmtuProber sends one probe of a size (IP header included) with DF and says whether it
// passed, or a router said it needs fragmenting.
type pmtuProber interface {
	try(ctx context.Context, size int, seq uint16, wait time.Duration) (ok bool, ptb *QueuedError, err error)
	close()
}

// searchPMTU searches the path MTU toward a failed or answered attempt's target: a TCP
// flow's with TCP segments to its port (an echo may be filtered where the port is open),
// others' with echo requests to its address. Each probe waits at most wait.
func searchPMTU(ctx context.Context, a Attempt, last Result, wait time.Duration) (pmtuResult, error) {
	ctx, cancel := context.WithTimeout(ctx, PMTUBudget)
	defer cancel()
	var pr pmtuProber
	r := pmtuResult{unit: "DF echo request(s)", highIs: "the link's MTU"}
	if last.proto == unix.IPPROTO_TCP {
		tp, high, err := newTCPPMTU(ctx, a, wait)
		if err != nil {
			return r, err
		}
		pr, r.high, r.unit, r.highIs = tp, high, "DF TCP segment(s)", tp.highIs
	} else {
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
		pr, r.high = ps, ifc.MTU
	}
	defer pr.close()
	return bisectPMTU(ctx, pr, r, pmtuMin(a.Addr.Addr().Is6()), wait)
}

// bisectPMTU tries r.high, then low, then halves between them down to the byte.
func bisectPMTU(ctx context.Context, pr pmtuProber, r pmtuResult, low int, wait time.Duration) (pmtuResult, error) {
	start := time.Now()
	try := func(size int) (bool, error) {
		r.probes++
		ok, ptb, err := pr.try(ctx, size, uint16(r.probes), wait)
		if ptb != nil && r.ptb == nil {
			r.ptb, r.tried = ptb, size
		}
		return ok, err
	}
	high := r.high
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

// try sends an echo request of size bytes (IP header included) and waits for its reply,
// or a router's fragmentation needed / packet too big.
func (ps *pmtuSocket) try(ctx context.Context, size int, seq uint16, wait time.Duration) (bool, *QueuedError, error) {
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

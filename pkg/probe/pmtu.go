package probe

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"reachd/pkg/netctx"
	"reachd/pkg/schedule"
	"reachd/pkg/verdict"
)

// A path MTU search sends packets with DF set at falling sizes and finds the largest that
// is answered. A path that loses full-size packets while no router says "fragmentation
// needed" / "packet too big" is an MTU black hole: a tunnel without working PMTUD, or those
// ICMP errors filtered, which every peer of the path sees as a timeout. A TCP flow's path
// is searched with TCP segments to its port (pmtu_tcp.go), others' with echo requests.

// pmtuResult is what a search found.
type pmtuResult struct {
	high    int           // the size tried first
	highIs  string        // what high is: the egress link's MTU, or the peer's MSS
	unit    string        // what was sent: DF echo requests, DF TCP segments
	largest int           // the largest size answered (0: none)
	below   int           // with cut: the smallest size known lost (the MTU is under it)
	ptb     *QueuedError  // a router's fragmentation needed / packet too big, if one came
	tried   int           // the size the router said needs fragmenting
	probes  int           // packets sent
	took    time.Duration // the search's time
	cut     string        // why the search stopped before its end ("": it did not)
	back    string        // TCP: what the echo search said of the way back
	at      time.Time     // when it was made (kept for the rate cap: see pmtuRecent)
}

// finding words a search's outcome and names its reason: frag_needed, mtu_blackhole, or
// "" when the path passes its largest size, nothing passed, or the search was cut short
// before it knew.
func (r pmtuResult) finding() (string, verdict.Reason) {
	what := fmt.Sprintf("%d %s in %s", r.probes, r.unit, r.took.Round(100*time.Microsecond))
	lost := fmt.Sprintf("%d-byte packets are lost without a \"fragmentation needed\" or \"packet too big\", smaller ones pass: an MTU black hole", r.high)
	switch {
	case r.ptb != nil:
		at := "a router (not seen at TC)"
		if r.ptb.Offender.IsValid() {
			at = r.ptb.Offender.String()
		}
		return fmt.Sprintf("%d-byte packets need fragmenting at %s, which gives a path MTU of %d (%s)%s", r.tried, at, r.ptb.Info, what, r.back), verdict.FragNeeded
	case r.cut != "" && r.below > 0:
		return fmt.Sprintf("%s; %d bytes pass, %d do not (the search was cut short: %s; %s)%s", lost, r.largest, r.below, r.cut, what, r.back), verdict.MTUBlackhole
	case r.cut != "" && r.largest > 0:
		return fmt.Sprintf("%d-byte packets pass; the search was cut short before it knew more (%s; %s)", r.largest, r.cut, what), ""
	case r.cut != "":
		return fmt.Sprintf("the search was cut short before any size passed (%s; %s)", r.cut, what), ""
	case r.largest > 0 && r.largest < r.high:
		return fmt.Sprintf("%s; the largest that passes is %d bytes (%s)%s", lost, r.largest, what, r.back), verdict.MTUBlackhole
	case r.largest == r.high:
		return fmt.Sprintf("the path passes %d-byte packets, %s (%s)%s", r.high, r.highIs, what, r.back), ""
	}
	return fmt.Sprintf("no answer at any size (%s)", what), ""
}

// limit is the size above which a search says packets are lost: the MTU a router gave, or
// the largest that passes a black hole (of a search cut short: the smallest known lost,
// less one); 0: none.
func (r pmtuResult) limit() int {
	switch {
	case r.ptb != nil:
		return int(r.ptb.Info)
	case r.cut != "" && r.below > 0:
		return r.below - 1
	case r.cut == "" && r.largest > 0 && r.largest < r.high:
		return r.largest
	}
	return 0
}

// PMTUBudget is what a path MTU search may add to a chain.
const PMTUBudget = 12 * time.Second

// The search rate cap, process-wide, as the trace's: a daemon with many targets failing
// at once searches a few paths, not all (a search sends a dozen packets or connections).
const (
	PMTURate  = 2
	PMTUBurst = 5
)

var pmtuTokens = schedule.NewSharedBucket(PMTURate, PMTUBurst)

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
	// retries is how many times a lost size is sent again before it counts as lost (TCP
	// retransmits by itself within the wait).
	retries() int
	close()
}

// searchPMTU searches the path MTU toward a chain's target: a TCP flow's with TCP segments
// to its port (an echo may be filtered where the port is open), then, when they pass, with
// echo requests, which test the way back too; others' with echo requests. Each probe
// waits at most wait.
func searchPMTU(ctx context.Context, a Attempt, last Result, wait time.Duration) (pmtuResult, error) {
	ctx, cancel := context.WithTimeout(ctx, PMTUBudget)
	defer cancel()
	if last.proto != unix.IPPROTO_TCP {
		return echoPMTU(ctx, a, wait)
	}
	tp, high, err := newTCPPMTU(ctx, a, wait)
	if err != nil {
		return pmtuResult{}, err
	}
	r := pmtuResult{high: high, unit: "DF TCP segment(s)", highIs: tp.highIs}
	r, err = bisectPMTU(ctx, tp, r, pmtuMin(a.Addr.Addr().Is6()), wait)
	if err != nil || r.largest != r.high || r.ptb != nil || r.cut != "" {
		return r, err
	}
	// TCP segments pass the way there; an echo reply is as large as its request.
	e, err := echoPMTU(ctx, a, wait)
	return wayBack(r, e, err, a.Addr.Addr().Is6(), tp.learned), nil
}

// wayBack reads the echo search e made after the TCP search r passed at its largest size
// (err: e could not be made). learned: r's largest size is a path MTU the route learned.
func wayBack(r, e pmtuResult, err error, v6, learned bool) pmtuResult {
	r.probes, r.took, r.unit = r.probes+e.probes, r.took+e.took, r.unit+" and echo requests"
	switch {
	case err != nil:
		r.back = "; the way back is not tested (" + err.Error() + ")"
	case e.ptb != nil && learned && int(e.ptb.Info) == r.high && e.tried > r.high:
		// The segments' size is the path MTU the route learned, and the router says it
		// again: the same finding as the search that taught the route.
		e.probes, e.took, e.unit = r.probes, r.took, r.unit
		return e
	case e.ptb != nil: // a router answers the request: the way there, at a size TCP did not use
		r.back = fmt.Sprintf("; echo requests of %d bytes need fragmenting at %s on the way there", e.tried, e.ptb.Offender)
	case e.limit() > 0 && e.limit() < r.high:
		e.probes, e.took, e.unit = r.probes, r.took, r.unit
		e.back = fmt.Sprintf("; TCP segments of %d bytes reach the target: the way back", r.high)
		return e
	case e.limit() > 0:
		r.back = fmt.Sprintf("; echo requests over %d bytes are lost, larger than the TCP segments", e.limit())
	case e.largest == 0:
		r.back = "; the way back is not tested (the target answers no echo request)"
	case v6:
		r.back = fmt.Sprintf("; the way back passes %d-byte echo replies", e.largest)
	default:
		// Linux, and routers on the way, may send and fragment an IPv4 echo reply without
		// DF: it passes where the target's TCP segments, with DF, would not.
		r.back = fmt.Sprintf("; %d-byte echo replies come back, but over IPv4 maybe in fragments: the way back for TCP segments is not known", e.largest)
	}
	return r
}

// echoPMTU searches with echo requests from the egress link's MTU (IP_PMTUDISC_PROBE: a
// path MTU the route has learned, or a locked one, does not hold them back).
func echoPMTU(ctx context.Context, a Attempt, wait time.Duration) (pmtuResult, error) {
	r := pmtuResult{unit: "DF echo request(s)", highIs: "the link's MTU"}
	mtu, err := egressMTU(a)
	if err != nil {
		return r, err
	}
	ps, err := newPMTUSocket(a)
	if err != nil {
		return r, err
	}
	defer ps.close()
	r.high = mtu
	return bisectPMTU(ctx, ps, r, pmtuMin(a.Addr.Addr().Is6()), wait)
}

// errCutShort is a probe whose wait the search's end (its budget, reachd stopping) cut
// short: not a lost size.
var errCutShort = errors.New("its time ran out")

// egressMTU is the MTU of the interface a's packets leave by.
func egressMTU(a Attempt) (int, error) {
	rt, err := netctx.RouteLookup(routeQuery(a))
	if err != nil {
		return 0, fmt.Errorf("route: %w", err)
	}
	mtu, err := netctx.LinkMTU(rt.LinkIndex)
	if err != nil {
		return 0, fmt.Errorf("egress link: %w", err)
	}
	return mtu, nil
}

// bisectPMTU tries the minimum size, then r.high, then halves between them down to the
// byte. A lost size is sent again (pr.retries), the full size once more than the others,
// so that one lost packet is not a black hole; once a size has passed, an echo is waited
// for four times the slowest answer, at least 100 ms, not the whole wait. A search cut
// short (its budget, an error) says so, with the sizes it knows; the error of its first
// probe is the search's.
func bisectPMTU(ctx context.Context, pr pmtuProber, r pmtuResult, low int, wait time.Duration) (pmtuResult, error) {
	start := time.Now()
	low = min(low, r.high)
	var slowest time.Duration
	try := func(size, tries int) (bool, error) {
		w := wait
		if slowest > 0 {
			w = min(wait, max(4*slowest, 100*time.Millisecond))
		}
		for range tries {
			r.probes++
			t0 := time.Now()
			ok, ptb, err := pr.try(ctx, size, uint16(r.probes), w)
			if ptb != nil && r.ptb == nil {
				r.ptb, r.tried = ptb, size
			}
			if ok {
				slowest = max(slowest, time.Since(t0))
			}
			if err == nil && !ok && ptb == nil && ctx.Err() != nil {
				err = errCutShort
			}
			if ok || ptb != nil || err != nil {
				return ok, err
			}
		}
		return false, nil
	}
	ok, err := try(low, 1+pr.retries())
	r.took = time.Since(start)
	switch {
	case err != nil && r.probes == 1:
		return r, err // the search could not be made
	case err != nil:
		r.cut = err.Error()
		return r, nil
	case r.ptb != nil || !ok:
		return r, nil // nothing passes: no MTU to find
	}
	r.largest = low
	ok, err = try(r.high, 2+pr.retries())
	r.took = time.Since(start)
	switch {
	case err != nil:
		r.cut = err.Error() // the full size is not known
		return r, nil
	case r.ptb != nil:
		return r, nil
	case ok:
		r.largest = r.high
		return r, nil
	}
	// The minimum passes and full size does not: halve down to the byte.
	lo, hi := low, r.high
	for hi-lo > 1 && r.ptb == nil {
		mid := (lo + hi) / 2
		ok, err := try(mid, 1+pr.retries())
		if err != nil {
			r.cut = err.Error()
			break
		}
		if ok {
			lo = mid
		} else if r.ptb == nil {
			hi = mid
		}
	}
	r.largest, r.took = lo, time.Since(start)
	if r.cut != "" {
		r.below = hi
	}
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

func (ps *pmtuSocket) retries() int { return 1 }

// try sends an echo request of size bytes (IP header included) and waits for its reply,
// or a router's fragmentation needed / packet too big.
func (ps *pmtuSocket) try(ctx context.Context, size int, seq uint16, wait time.Duration) (bool, *QueuedError, error) {
	msg := buildEcho(ps.v6, ps.id, seq, make([]byte, size-ipHeader(ps.v6)-echoHeaderLen))
	if _, err := unix.Write(ps.fd, msg); err != nil {
		if errors.Is(err, unix.EMSGSIZE) { // larger than this host lets out: not the path's
			return false, nil, fmt.Errorf("this host does not send %d-byte packets", size)
		}
		return false, nil, fmt.Errorf("send %d bytes: %w", size, err)
	}
	until := time.Now().Add(wait)
	buf := make([]byte, 65536)
	for _, ok := pollReady(ctx, ps.fd, unix.POLLIN, until); ok; _, ok = pollReady(ctx, ps.fd, unix.POLLIN, until) {
		for _, q := range drainErrQueue(ps.fd) {
			if ps.quotes(q, seq) && (!ps.v6 && q.Type == icmp4DestUnreach && q.Code == 4 || ps.v6 && q.Type == icmp6PacketTooBig) {
				return false, &q, nil
			}
		}
		if ps.replied(buf, seq) {
			return true, nil, nil
		}
	}
	return false, nil, nil
}

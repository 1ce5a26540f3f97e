package probe

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"reachd/pkg/schedule"
	"reachd/pkg/verdict"
)

// A same-flow path trace re-sends a failed TCP attempt's SYN from its own local port, so
// that the 5-tuple is the probe's (ECMP and policy routing send it the same way, as
// paris-traceroute keeps it), with TTL (hop limit) 1, 2, ...; only the sequence number the
// kernel picks differs. Each hop's router answers with time exceeded, the target with a
// SYN-ACK or RST, or nothing answers.

// Bounds of a trace: its hops, and the silent hops in a row that end it.
const (
	maxTraceHops   = 30
	traceSilentEnd = 3
)

// The trace rate cap, process-wide: a daemon with many targets failing at once traces a
// few, not all (each trace sends up to 30 packets).
const (
	TraceRate  = 2
	TraceBurst = 5
)

var traceTokens = struct {
	sync.Mutex
	schedule.Bucket
}{Bucket: schedule.NewBucket(TraceRate, TraceBurst)}

// traceAllowed takes a token of the trace rate cap, if one is left.
func traceAllowed(now time.Time) bool {
	traceTokens.Lock()
	defer traceTokens.Unlock()
	return traceTokens.Take(now)
}

// TraceBudget bounds a trace's time, whatever its hops: a daemon's chain of attempts
// waits for it.
const TraceBudget = 8 * time.Second

// traceTCP traces the flow local → a.Addr. Each hop waits at most wait. known is a router
// the failed attempt heard from (its ICMP error), if any: silent hops before it do not end
// the trace. A trace this host cannot make (its socket, the flow's port taken) is an error.
func traceTCP(ctx context.Context, a Attempt, local netip.AddrPort, wait time.Duration, known netip.Addr) (*verdict.Path, error) {
	ctx, cancel := context.WithTimeout(ctx, TraceBudget)
	defer cancel()
	p := &verdict.Path{}
	silent := 0
	seen := map[string]int{}
	for ttl := 1; ttl <= maxTraceHops && (silent < traceSilentEnd || known.IsValid()) && ctx.Err() == nil; ttl++ {
		h, reached, final, err := tcpHop(ctx, a, local, ttl, wait)
		if err != nil {
			return nil, err
		}
		if ctx.Err() != nil { // cut short: not silence
			p.Incomplete = true
			break
		}
		p.Hops = append(p.Hops, h)
		if h.Addr == "" {
			silent++
			continue
		}
		silent = 0
		if known.IsValid() && h.Addr == known.WithZone("").String() {
			known = netip.Addr{}
		}
		if prev := len(p.Hops) - 2; final && !reached && prev >= 0 && p.Hops[prev].Addr == h.Addr {
			// The router that let TTL n-1 expire forwards TTL n and rejects it: its
			// error belongs to its own hop (TTL is checked before the forward hook).
			p.Hops[prev].ICMP, p.Hops = h.ICMP, p.Hops[:prev+1]
			break
		}
		p.LastAnswered = ttl
		if n, loop := seen[h.Addr]; loop && n < ttl-1 {
			p.Loop = true // the same router again, not at the next hop: a routing loop
			break
		}
		seen[h.Addr] = ttl
		if reached || final {
			p.Reached = reached
			break
		}
	}
	for i := range p.Hops {
		h := &p.Hops[i]
		if h.Addr == "" && h.N < p.LastAnswered {
			h.RateLimited = true
		} else if h.Addr == "" && p.FirstSilent == 0 && !p.Incomplete {
			p.FirstSilent = h.N
		}
	}
	return p, nil
}

// pathDetail words where a trace ended: "lost after hop 3 (198.51.100.9)".
func pathDetail(p *verdict.Path) string {
	switch {
	case p.Reached:
		return fmt.Sprintf("path: the target answers at hop %d", p.LastAnswered)
	case p.Loop:
		return fmt.Sprintf("path: a routing loop: %s answers again at hop %d", p.Hops[p.LastAnswered-1].Addr, p.LastAnswered)
	case p.LastAnswered == 0 && p.Incomplete:
		return "path: the trace was cut short before any hop answered"
	case p.LastAnswered == 0:
		return "path: no hop answered (lost at the first hop, or its router does not send time exceeded)"
	case p.FirstSilent > 0:
		return fmt.Sprintf("path: lost after hop %d (%s)", p.LastAnswered, p.Hops[p.LastAnswered-1].Addr)
	case p.Incomplete:
		return fmt.Sprintf("path: hop %d (%s) answered before the trace was cut short", p.LastAnswered, p.Hops[p.LastAnswered-1].Addr)
	}
	last := p.Hops[p.LastAnswered-1]
	return fmt.Sprintf("path: hop %d (%s) answered %s", p.LastAnswered, last.Addr, last.ICMP)
}

// tcpHop sends the flow's SYN with ttl and says who answered: reached when it was the
// target, final when the answer ends the trace (an ICMP error other than time exceeded).
// An error is this host's: the hop could not be sent.
func tcpHop(ctx context.Context, a Attempt, local netip.AddrPort, ttl int, wait time.Duration) (h verdict.Hop, reached, final bool, err error) {
	h.N = ttl
	if l := local.Addr(); l.Is6() && l.IsLinkLocalUnicast() && l.Zone() == "" {
		local = netip.AddrPortFrom(l.WithZone(a.Addr.Addr().Zone()), local.Port())
	}
	f, fd, sa, res, ok := probeSocket(a, unix.SOCK_STREAM, unix.IPPROTO_TCP)
	if !ok {
		return h, false, false, errors.New(res.Detail)
	}
	defer f.Close()
	b := a
	b.Source = netip.Addr{} // bound below, with the flow's port
	if res, ok := setupSocket(fd, b, sockStreamStamps); !ok {
		return h, false, false, errors.New(res.Detail)
	}
	if err := hopSocket(fd, local, ttl); err != nil {
		return h, false, false, err
	}
	sent := time.Now()
	if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		return h, false, false, fmt.Errorf("connect from %s: %w", local, err)
	}
	until := sent.Add(wait)
	for ctx.Err() == nil && time.Now().Before(until) {
		// Short polls: a daemon stopping, or the trace's budget, ends the wait.
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT | unix.POLLERR}}
		if n, _ := unix.Poll(pfd, int(min(max(time.Until(until).Milliseconds(), 1), 100))); n == 0 {
			continue
		}
		if q, ok := lastICMP(drainErrQueue(fd)); ok {
			at := q.At
			if at.IsZero() {
				at = time.Now()
			}
			reason, name := ClassifyICMP(a.Addr.Addr().Is6(), q.Type, q.Code)
			h.Addr, h.ICMP, h.RTTMs = q.Offender.String(), name, verdict.MsPtr(at.Sub(sent))
			reached = q.Offender.WithZone("") == a.Addr.Addr().WithZone("")
			return h, reached, reason != verdict.TTLExceeded, nil
		}
		soErr, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if soErr == 0 && pfd[0].Revents&unix.POLLOUT != 0 || unix.Errno(soErr) == unix.ECONNREFUSED {
			h.Addr, h.RTTMs = a.Addr.Addr().WithZone("").String(), verdict.MsPtr(time.Since(sent))
			return h, true, true, nil
		}
	}
	return h, false, false, nil
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
	level, opt := unix.SOL_IP, unix.IP_TTL
	if local.Addr().Is6() {
		level, opt = unix.SOL_IPV6, unix.IPV6_UNICAST_HOPS
	}
	if err := unix.SetsockoptInt(fd, level, opt, ttl); err != nil {
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

package probe

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"

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
	tokens float64
	at     time.Time
}{tokens: TraceBurst}

// traceAllowed takes a token of the trace rate cap, if one is left.
func traceAllowed(now time.Time) bool {
	traceTokens.Lock()
	defer traceTokens.Unlock()
	if !traceTokens.at.IsZero() {
		traceTokens.tokens = min(TraceBurst, traceTokens.tokens+now.Sub(traceTokens.at).Seconds()*TraceRate)
	}
	traceTokens.at = now
	if traceTokens.tokens < 1 {
		return false
	}
	traceTokens.tokens--
	return true
}

// traceTCP traces the flow local → a.Addr. Each hop waits at most wait.
func traceTCP(ctx context.Context, a Attempt, local netip.AddrPort, wait time.Duration) *verdict.Path {
	p := &verdict.Path{}
	silent := 0
	for ttl := 1; ttl <= maxTraceHops && silent < traceSilentEnd && ctx.Err() == nil; ttl++ {
		h, reached, final := tcpHop(ctx, a, local, ttl, wait)
		p.Hops = append(p.Hops, h)
		if h.Addr == "" {
			silent++
			continue
		}
		silent = 0
		if prev := len(p.Hops) - 2; final && !reached && prev >= 0 && p.Hops[prev].Addr == h.Addr {
			// The router that let TTL n-1 expire forwards TTL n and rejects it: its
			// error belongs to its own hop (TTL is checked before the forward hook).
			p.Hops[prev].ICMP, p.Hops = h.ICMP, p.Hops[:prev+1]
			break
		}
		p.LastAnswered = ttl
		if reached || final {
			p.Reached = reached
			break
		}
	}
	for i := range p.Hops {
		h := &p.Hops[i]
		if h.Addr == "" && h.N < p.LastAnswered {
			h.RateLimited = true
		} else if h.Addr == "" && p.FirstSilent == 0 {
			p.FirstSilent = h.N
		}
	}
	return p
}

// pathDetail words where a trace ended: "lost after hop 3 (198.51.100.9)".
func pathDetail(p *verdict.Path) string {
	switch {
	case p.Reached:
		return fmt.Sprintf("the path reaches the target in %d hop(s)", p.LastAnswered)
	case p.LastAnswered == 0:
		return "path: no hop answered (lost at the first hop, or its router does not send time exceeded)"
	case p.FirstSilent > 0:
		return fmt.Sprintf("path: lost after hop %d (%s)", p.LastAnswered, p.Hops[p.LastAnswered-1].Addr)
	}
	last := p.Hops[p.LastAnswered-1]
	return fmt.Sprintf("path: hop %d (%s) answered %s", p.LastAnswered, last.Addr, last.ICMP)
}

// tcpHop sends the flow's SYN with ttl and says who answered: reached when it was the
// target, final when the answer ends the trace (an ICMP error other than time exceeded).
func tcpHop(ctx context.Context, a Attempt, local netip.AddrPort, ttl int, wait time.Duration) (h verdict.Hop, reached, final bool) {
	h.N = ttl
	if l := local.Addr(); l.Is6() && l.IsLinkLocalUnicast() && l.Zone() == "" {
		local = netip.AddrPortFrom(l.WithZone(a.Addr.Addr().Zone()), local.Port())
	}
	f, fd, sa, _, ok := probeSocket(a, unix.SOCK_STREAM, unix.IPPROTO_TCP)
	if !ok {
		return h, false, true
	}
	defer f.Close()
	b := a
	b.Source = netip.Addr{} // bound below, with the flow's port
	if _, ok := setupSocket(fd, b, sockStreamStamps); !ok || hopSocket(fd, local, ttl) != nil {
		return h, false, true
	}
	sent := time.Now()
	if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, unix.EINPROGRESS) {
		return h, false, true
	}
	until := sent.Add(wait)
	if dl, ok := ctx.Deadline(); ok && dl.Before(until) {
		until = dl
	}
	for time.Now().Before(until) {
		pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT | unix.POLLERR}}
		if n, _ := unix.Poll(pfd, int(max(time.Until(until).Milliseconds(), 1))); n == 0 {
			break
		}
		if q, ok := lastICMP(drainErrQueue(fd)); ok {
			at := q.At
			if at.IsZero() {
				at = time.Now()
			}
			v6 := a.Addr.Addr().Is6()
			reason, name := ClassifyICMP(v6, q.Type, q.Code)
			h.Addr, h.ICMP, h.RTTMs = q.Offender.String(), name, verdict.MsPtr(at.Sub(sent))
			reached = q.Offender.WithZone("") == a.Addr.Addr().WithZone("")
			return h, reached, reason != verdict.TTLExceeded
		}
		soErr, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
		if soErr == 0 && pfd[0].Revents&unix.POLLOUT != 0 || unix.Errno(soErr) == unix.ECONNREFUSED {
			h.Addr, h.RTTMs = a.Addr.Addr().WithZone("").String(), verdict.MsPtr(time.Since(sent))
			return h, true, true
		}
		if ctx.Err() != nil {
			break
		}
	}
	return h, false, false
}

// hopSocket readies fd to carry the flow's SYN at ttl: the flow's local address and port
// (free again: the attempt's socket was closed with a reset), and closed with a reset too.
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
	return unix.Bind(fd, sa)
}

package probe

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	"reachd/pkg/verdict"
	"reachd/pkg/wire"
)

// ICMP probes with echo requests (ICMP for IPv4, ICMPv6 for IPv6): a.Count of them per
// attempt, a.Interval apart, through the socket all concurrent echo probes share.
//
// The attempt is ok when at least one echo is answered. Each echo waits a.Timeout for its
// answer. rtt_ms is the reply's round trip (the average over the answered echoes when
// several were sent), timed at TC when eBPF is loaded, else by the kernel's transmit and
// receive timestamps.
func ICMP(ctx context.Context, a Attempt) Result {
	dst := a.Addr.Addr()
	if _, err := sockaddrOf(a.Addr); err != nil {
		return Result{Reason: verdict.LocalError, Detail: err.Error()}
	}
	k := pingerKey{v6: dst.Is6(), iface: a.Interface, source: a.Source, txStamps: a.Wire == nil || !a.Wire.HasTC()}
	p, err := acquirePinger(k)
	if err != nil {
		var pe errPermission
		if errors.As(err, &pe) {
			return Result{Reason: verdict.Permission, Detail: pe.msg}
		}
		return Result{Reason: verdict.LocalError, Detail: err.Error()}
	}
	defer p.release()
	w, unwatch := p.watchDst(a)
	defer unwatch()

	count := max(a.Count, 1)
	flow := w.flow
	if flow != nil {
		// Room for this attempt's events on top of those of the other attempts that
		// share the flow: a request and an answer per echo.
		defer flow.Reserve(2 * count)()
	}
	var c echoCounters
	foreign0, corrupt0 := w.foreign.Load(), w.corrupt.Load()
	deadline, _ := ctx.Deadline()
	timeout := a.Timeout
	if timeout <= 0 {
		timeout = time.Until(deadline)
	}

	echoes := make([]*echo, 0, count)
	var sendErr error
	start := time.Now()
	for i := range count {
		if i > 0 && sleepUntil(ctx, start.Add(time.Duration(i)*a.Interval)) != nil {
			break
		}
		if i == 0 && !time.Now().Before(deadline) {
			return Result{Reason: verdict.SelfOverload,
				Detail: "the attempt's deadline passed before the echo request was sent: the prober is overloaded"}
		}
		e, err := p.send(dst, &c)
		if err != nil {
			sendErr = err
			break
		}
		echoes = append(echoes, e)
	}
	for _, e := range echoes {
		waitEcho(ctx, e, earlier(e.sentWall.Add(timeout), deadline))
	}
	p.finish(echoes)

	var evs []wire.Event
	if flow != nil && len(echoes) > 0 {
		evs = echoEvents(flow, echoes)
	}
	if len(echoes) == 0 && sendErr != nil {
		return sendError("send echo request", sendErr, a)
	}
	res := echoResult(echoes, evs, a, k.v6, timeout)
	res.EchoID = new(int(p.id))
	st := res.Stats
	st.Duplicates = int(c.duplicates.Load())
	st.Late = int(c.late.Load())
	st.Corrupt = int(c.corrupt.Load() + w.corrupt.Load() - corrupt0)
	st.Foreign = int(w.foreign.Load() - foreign0)
	if extra := ignoredNote(st); extra != "" {
		res.Detail += "; " + extra
	}
	if sendErr != nil {
		res.Detail += fmt.Sprintf("; sending stopped after %d of %d echo requests: %v", len(echoes), count, sendErr)
	}
	if w.note != "" {
		res.Detail += "; " + w.note
	}
	return res
}

func earlier(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// sleepUntil waits until t or until ctx is done.
func sleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-tm.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func waitEcho(ctx context.Context, e *echo, until time.Time) {
	d := time.Until(until)
	if d <= 0 {
		return
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-e.done:
	case <-tm.C:
	case <-ctx.Done():
	}
}

// echoEvents collects what TC saw of the echoes: each request leaving and the reply or
// ICMP error coming back. They are in the ring before the socket wakes the reader, but the
// ring's reader may not have delivered them yet.
func echoEvents(f *wire.Flow, echoes []*echo) []wire.Event {
	seqs := make(map[uint32]bool, len(echoes))
	for _, e := range echoes {
		seqs[uint32(e.seq)] = true
	}
	// An ICMP error event carries the sequence of the echo it quotes: concurrent attempts to
	// one destination each take their own.
	ours := func(ev wire.Event) bool {
		k := wire.EventKind(ev.Kind)
		return (k == wire.EvICMPError || k == wire.EvEchoRequest || k == wire.EvEchoReply) && seqs[ev.Seq]
	}
	// Complete: every request seen, and for every answered echo an answer event no earlier
	// than the kernel's receive stamp of the accepted packet (TC ingress runs after that
	// stamp is taken; 20 µs allow for converting between the clocks). An earlier event
	// may be a damaged copy that userspace rejected.
	complete := func(evs []wire.Event) bool {
		for _, e := range echoes {
			anchor := monoAt(e.rxKernel, e.sentWall, e.sentMono) - int64(20*time.Microsecond)
			req, ans := false, !e.answered
			for _, ev := range evs {
				switch k := wire.EventKind(ev.Kind); {
				case k == wire.EvEchoRequest && ev.Seq == uint32(e.seq):
					req = true
				case e.answered && int64(ev.TsNs) >= anchor &&
					ev.Seq == uint32(e.seq) && (e.err == nil && k == wire.EvEchoReply || e.err != nil && k == wire.EvICMPError):
					ans = true
				}
			}
			if !req || !ans {
				return false
			}
		}
		return true
	}
	if !complete(f.Events()) {
		f.Sync(time.Now().Add(catchUp))
	}
	evs := f.Take(ours)
	slices.SortFunc(evs, func(x, y wire.Event) int { return int(int64(x.TsNs) - int64(y.TsNs)) })
	return evs
}

// echoTiming is one answered echo's round trip and where it was measured.
type echoTiming struct {
	e      *echo
	rtt    time.Duration
	source string
	tx, rx time.Time // wall clock
}

// timeEcho picks the best clock for e: TC (wire), else the kernel's socket timestamps,
// else userspace.
func timeEcho(e *echo, evs []wire.Event) echoTiming {
	wall := func(ns uint64) time.Time { return e.sentWall.Add(time.Duration(int64(ns) - e.sentMono)) }
	t := echoTiming{e: e, source: verdict.SourceUserspace, tx: e.sentWall, rx: e.rxUser}
	// TC sees every reply, also the damaged ones and the copies userspace rejected: the
	// answer is the one nearest to when the kernel received the accepted packet.
	anchor := monoAt(e.rxKernel, e.sentWall, e.sentMono)
	var req, ans uint64
	for _, ev := range evs {
		k := wire.EventKind(ev.Kind)
		isAns := ev.Seq == uint32(e.seq) && (e.err == nil && k == wire.EvEchoReply || e.err != nil && k == wire.EvICMPError)
		switch {
		case req == 0 && k == wire.EvEchoRequest && ev.Seq == uint32(e.seq):
			req = ev.TsNs
		case req != 0 && isAns && ev.TsNs >= req && (ans == 0 || nearer(ev.TsNs, ans, anchor)):
			ans = ev.TsNs
		}
	}
	switch {
	case req != 0 && ans != 0:
		t.source, t.tx, t.rx, t.rtt = verdict.SourceWire, wall(req), wall(ans), time.Duration(ans-req)
		return t
	case !e.txKernel.IsZero() && !e.rxKernel.IsZero() && !e.rxKernel.Before(e.txKernel):
		t.source, t.tx, t.rx = verdict.SourceKernel, e.txKernel, e.rxKernel
	case req != 0:
		t.tx = wall(req)
	}
	t.rtt = t.rx.Sub(t.tx)
	return t
}

// monoAt converts wall-clock instant t to CLOCK_MONOTONIC ns through a pair of readings
// taken together (wall, mono); a zero t gives 0, "no anchor".
func monoAt(t, wall time.Time, mono int64) int64 {
	if t.IsZero() {
		return 0
	}
	return mono + int64(t.Sub(wall))
}

// nearer reports whether ts is nearer to anchor than best is; without an anchor (0) the
// earlier one wins.
func nearer(ts, best uint64, anchor int64) bool {
	if anchor == 0 {
		return false
	}
	d := func(x uint64) int64 {
		v := int64(x) - anchor
		if v < 0 {
			return -v
		}
		return v
	}
	return d(ts) < d(best)
}

// worstSource is the worst of the sources that timed a summary's packets: a summary is
// only as good as its worst part.
func worstSource(sources []string) string {
	worst := verdict.SourceWire
	for _, s := range sources {
		if sourceRank(s) < sourceRank(worst) {
			worst = s
		}
	}
	return worst
}

func sourceRank(s string) int {
	switch s {
	case verdict.SourceWire:
		return 2
	case verdict.SourceKernel:
		return 1
	}
	return 0
}

// echoResult turns an attempt's echoes into a result: ok if any was answered, else the
// last ICMP error, else silence.
func echoResult(echoes []*echo, evs []wire.Event, a Attempt, v6 bool, waited time.Duration) Result {
	res := Result{sent: len(echoes) > 0}
	st := &verdict.Stats{Count: len(echoes)}
	res.Stats = st
	var replies []echoTiming
	var lastErr *echoTiming
	for _, e := range echoes {
		if !e.answered {
			continue
		}
		t := timeEcho(e, evs)
		if e.err != nil {
			lastErr = &t
			continue
		}
		replies = append(replies, t)
	}
	st.Received = len(replies)
	if st.Count > 0 {
		st.LossPct = math.Round(1000*float64(st.Count-st.Received)/float64(st.Count)) / 10
	}
	wt := &WireTimes{}
	if len(echoes) > 0 {
		wt.EchoTx = echoes[0].sentWall
	}
	res.WireTimes = wt
	switch {
	case len(replies) > 0:
		rtts, sources := make([]time.Duration, len(replies)), make([]string, len(replies))
		for i, r := range replies {
			rtts[i], sources[i] = r.rtt, r.source
		}
		first := replies[0]
		wt.EchoTx, wt.EchoReply = first.tx, first.rx
		if first.e.ttl >= 0 {
			res.ReplyTTL = new(first.e.ttl)
		}
		res.Reason, res.HasRTT = verdict.OK, true
		res.RTT, res.TimingSource = rttStats(st, rtts), worstSource(sources)
		if len(echoes) == 1 {
			res.Detail = fmt.Sprintf("echo reply from %s in %s", first.e.dst, fmtRTT(first.rtt))
			if first.e.ttl >= 0 && v6 {
				res.Detail += fmt.Sprintf(", hop limit %d", first.e.ttl)
			} else if first.e.ttl >= 0 {
				res.Detail += fmt.Sprintf(", TTL %d", first.e.ttl)
			}
		} else {
			res.Detail = fmt.Sprintf("%d/%d echo replies (%.1f%% loss), min/avg/max %s/%s/%s ms",
				st.Received, st.Count, st.LossPct, fmtMs(st.MinMs), fmtMs(st.AvgMs), fmtMs(st.MaxMs))
		}
	case lastErr != nil:
		ee := lastErr.e.err
		var reason verdict.Reason
		reason, res.ICMP, res.Detail = icmpAnswer(v6, ee.typ, ee.code, ee.from)
		res.Reason = reason
		if len(echoes) > 1 {
			res.Detail += fmt.Sprintf(" (no reply to any of %d echo requests)", len(echoes))
		}
		if lastErr.source != verdict.SourceUserspace {
			res.TimingSource = lastErr.source
		}
		wt.ICMP = lastErr.rx
		res = fromThisHost(res, a, ee.from, fmt.Sprintf("%d echo request(s)", len(echoes)))
	case len(echoes) > 0:
		res.Reason = verdict.Timeout
		res.waited = waited
		res.Detail = fmt.Sprintf("no echo reply or ICMP error within %s of %d echo request(s)", waited.Round(time.Millisecond), len(echoes))
		if n, ok := unresolvedNeighbor(a); ok {
			res.Reason, res.Layer = verdict.HostUnreachable, verdict.LayerLink
			res.Detail = fmt.Sprintf("%s; %d echo request(s) never left the link", n, len(echoes))
		}
		sources := 0
		for _, e := range echoes {
			for _, ev := range evs {
				if wire.EventKind(ev.Kind) == wire.EvEchoRequest && ev.Seq == uint32(e.seq) {
					sources++
					break
				}
			}
		}
		if sources == len(echoes) {
			res.TimingSource = verdict.SourceWire
			res.Detail += " (all seen leaving on the wire)"
		}
	}
	return res
}

// rttStats sets st's min/avg/max/stddev from the answered packets' round trips and returns
// their mean: the headline rtt_ms (a single packet's own round trip).
func rttStats(st *verdict.Stats, rtts []time.Duration) time.Duration {
	lo, hi, sum := rtts[0], rtts[0], 0.0
	for _, r := range rtts {
		lo, hi = min(lo, r), max(hi, r)
		sum += float64(r)
	}
	mean := sum / float64(len(rtts))
	var sq float64
	for _, r := range rtts {
		d := float64(r) - mean
		sq += d * d
	}
	std := math.Sqrt(sq / float64(len(rtts)))
	st.MinMs, st.MaxMs = verdict.MsPtr(lo), verdict.MsPtr(hi)
	st.AvgMs, st.StddevMs = verdict.MsPtr(time.Duration(mean)), verdict.MsPtr(time.Duration(std))
	return time.Duration(mean)
}

func fmtRTT(d time.Duration) string {
	return fmt.Sprintf("%.3f ms", float64(d)/float64(time.Millisecond))
}

func fmtMs(m *verdict.Millis) string {
	if m == nil {
		return "-"
	}
	return fmt.Sprintf("%.3f", float64(*m))
}

// ignoredNote words the answers that were not counted, if any.
func ignoredNote(st *verdict.Stats) string {
	var parts []string
	for _, x := range []struct {
		n    int
		what string
	}{{st.Duplicates, "duplicate"}, {st.Late, "late"}, {st.Corrupt, "corrupt"}, {st.Foreign, "other programs'"}} {
		if x.n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", x.n, x.what))
		}
	}
	if len(parts) == 0 {
		return ""
	}
	return "ignored " + strings.Join(parts, ", ") + " repl(ies)"
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

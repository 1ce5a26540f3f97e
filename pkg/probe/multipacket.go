package probe

import (
	"context"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"reachd/pkg/schedule"
	"reachd/pkg/verdict"
	"reachd/pkg/wire"
)

// The multi-packet request/response engine: an attempt of echo, UDP (and DNS) sends
// --count packets --interval apart, reads the answers as they come, and waits --timeout
// for each packet's answer; then each answered packet is timed by the best clock that saw
// it, and the attempt is summarised (loss, min/avg/max/stddev). A kind brings its
// transport (exchange) and what its packets and answers look like at the wire.

// Packets are the options of kinds that send several packets an attempt.
type Packets struct {
	Count    int
	Interval time.Duration
}

// MaxCount bounds --count.
const MaxCount = 10000

// AddFlags binds --count and --interval.
func (p *Packets) AddFlags(fs *pflag.FlagSet) {
	fs.IntVar(&p.Count, "count", 1, "packets per attempt (loss and min/avg/max/stddev in stats)")
	fs.DurationVar(&p.Interval, "interval", time.Second, "between the packets of an attempt")
}

// Check validates --count and --interval.
func (p *Packets) Check() error {
	if p.Count < 1 || p.Count > MaxCount {
		return fmt.Errorf("--count must be between 1 and %d, got %d", MaxCount, p.Count)
	}
	if p.Count > 1 && p.Interval < time.Millisecond {
		return fmt.Errorf("--interval must be at least 1ms, got %s", p.Interval)
	}
	return nil
}

func (p *Packets) packets() Packets { return *p }

// exchange is one multi-packet attempt's transport.
type exchange interface {
	// send sends the next packet now.
	send() error
	// wait reads answers until until, or, with all, until every packet sent is answered
	// (or its own wait is over). It returns ctx's error when ctx ended the wait.
	wait(ctx context.Context, until time.Time, all bool) error
}

// sendPackets sends p.Count packets through x, p.Interval apart, reading answers between
// sends, then waits until the last packet's wait is over (deadline at the latest). It
// returns how many went and the error that stopped sending; overload says the deadline
// had passed before the first could go (the prober is late, not the target).
func sendPackets(ctx context.Context, x exchange, p Packets, timeout time.Duration, deadline time.Time) (sent int, sendErr error, overload bool) {
	start := time.Now()
	var last time.Time
	for i := range max(p.Count, 1) {
		if i > 0 && x.wait(ctx, start.Add(time.Duration(i)*p.Interval), false) != nil {
			break
		}
		if i == 0 && !time.Now().Before(deadline) {
			return 0, nil, true
		}
		last = time.Now()
		if err := x.send(); err != nil {
			sendErr = err
			break
		}
		sent++
	}
	if sent > 0 {
		_ = x.wait(ctx, earlier(last.Add(timeout), deadline), true)
	}
	return sent, sendErr, false
}

// attemptTimes are an attempt's per-packet wait (the timeout, else what is left of the
// attempt) and its deadline.
func attemptTimes(ctx context.Context, a Attempt) (timeout time.Duration, deadline time.Time) {
	deadline, _ = ctx.Deadline()
	timeout = a.Timeout
	if timeout <= 0 {
		timeout = time.Until(deadline)
	}
	return timeout, deadline
}

// sendAll is sendPackets with its early ends classified: the prober late for the first
// packet, or no packet sent at all (what names the packet: "echo request", "datagram").
func sendAll(ctx context.Context, x exchange, a Attempt, p Packets, what string) (sent int, sendErr error, early *Result) {
	timeout, deadline := attemptTimes(ctx, a)
	sent, sendErr, overload := sendPackets(ctx, x, p, timeout, deadline)
	switch {
	case overload:
		r := fail(verdict.SelfOverload, fmt.Sprintf("the attempt's deadline passed before the %s was sent: the prober is overloaded", what))
		return 0, nil, &r
	case sent == 0 && sendErr != nil:
		r := sendError("send "+what, sendErr, a)
		return 0, sendErr, &r
	}
	return sent, sendErr, nil
}

// packetClock is what each clock knows of one packet and its answer: userspace's send and
// receive, the kernel's stamps, and which wire events are the packet leaving and its answer
// arriving.
type packetClock struct {
	sentWall           time.Time
	sentMono           int64
	txKernel, rxKernel time.Time
	rxUser             time.Time
	isTx, isAnswer     func(wire.Event) bool
}

// packetTiming is one answered packet's round trip and the clock that measured it.
type packetTiming struct {
	rtt    time.Duration
	source string
	tx, rx time.Time // wall clock
}

// timing picks the best clock for the packet: TC (wire), else the kernel's timestamps,
// else userspace. TC sees every answer, also damaged ones and copies userspace rejected:
// the answer is the one nearest to when the kernel received the accepted one.
func (c packetClock) timing(evs []wire.Event) packetTiming {
	wall := func(ns uint64) time.Time { return c.sentWall.Add(time.Duration(int64(ns) - c.sentMono)) }
	t := packetTiming{source: verdict.SourceUserspace, tx: c.sentWall, rx: c.rxUser}
	// Without the kernel's stamp (timestamps did not come on), userspace's receive time
	// still picks the right answer among several, if less sharply.
	anchor := monoAt(c.rxKernel, c.sentWall, c.sentMono)
	if anchor == 0 {
		anchor = monoAt(c.rxUser, c.sentWall, c.sentMono)
	}
	var tx, rx uint64
	for _, ev := range evs {
		switch {
		case tx == 0 && c.isTx(ev):
			tx = ev.TsNs
		case tx != 0 && c.isAnswer(ev) && ev.TsNs >= tx && (rx == 0 || nearer(ev.TsNs, rx, anchor)):
			rx = ev.TsNs
		}
	}
	switch {
	case tx != 0 && rx != 0:
		t.source, t.tx, t.rx = verdict.SourceWire, wall(tx), wall(rx)
		t.rtt = time.Duration(rx - tx)
		return t
	case !c.txKernel.IsZero() && !c.rxKernel.IsZero() && !c.rxKernel.Before(c.txKernel):
		t.source, t.tx, t.rx = verdict.SourceKernel, c.txKernel, c.rxKernel
	case tx != 0:
		t.tx = wall(tx)
	}
	t.rtt = t.rx.Sub(t.tx)
	return t
}

// summarise fills st from the answered packets (count sent, replies answered) and returns
// the headline round trip (their mean) and the clock it may claim (the worst of theirs).
func summarise(st *verdict.Stats, replies []packetTiming) (time.Duration, string) {
	st.Received = len(replies)
	if st.Count > 0 {
		st.LossPct = math.Round(1000*float64(st.Count-st.Received)/float64(st.Count)) / 10
	}
	if len(replies) == 0 {
		return 0, ""
	}
	rtts, sources := make([]time.Duration, len(replies)), make([]string, len(replies))
	for i, r := range replies {
		rtts[i], sources[i] = r.rtt, r.source
	}
	return rttStats(st, rtts), worstSource(sources)
}

// statsDetail words a multi-packet attempt's answers ("3/5 echo replies (40.0% loss), ...").
func statsDetail(st *verdict.Stats, answered string) string {
	return fmt.Sprintf("%d/%d %s (%.1f%% loss), min/avg/max %s/%s/%s ms",
		st.Received, st.Count, answered, st.LossPct, fmtMs(st.MinMs), fmtMs(st.AvgMs), fmtMs(st.MaxMs))
}

// allSeenLeaving says whether TC saw each of n packets leave (isTx): silence then is the
// network's, with the packets timed at the wire.
func allSeenLeaving(evs []wire.Event, n int, isTx func(wire.Event) bool) bool {
	seen := 0
	for _, ev := range evs {
		if isTx(ev) {
			seen++
		}
	}
	return n > 0 && seen >= n
}

// sleepUntil waits until t or until ctx is done.
func sleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	return schedule.RealSleep(ctx, d)
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

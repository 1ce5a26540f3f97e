package probe

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"reachd/pkg/verdict"
	"reachd/pkg/wire"
)

// icmpKind: echo requests (ICMP for IPv4, ICMPv6 for IPv6), --count of them an attempt,
// --interval apart, through the socket all concurrent echo probes share (echo_socket.go).
//
// The attempt is ok when at least one echo is answered. Each echo waits --timeout for its
// answer. rtt_ms is the reply's round trip (the average over the answered echoes when
// several were sent), timed at TC when eBPF is loaded, else by the kernel's transmit and
// receive timestamps.
var icmpKind = register(&Kind{
	Name:       "icmp",
	Order:      2,
	Summary:    "ICMP/ICMPv6 echo request and reply (raw socket, or ping socket without CAP_NET_RAW)",
	Example:    "  reachd probe icmp 198.51.100.10 2001:db8::1 'fe80::1%eth0'\n  reachd probe icmp --count 20 --interval 200ms --family both example.net",
	HostOnly:   true,
	Needs:      Needs{EchoSocket: true, Timestamps: true},
	NewOptions: func() KindOptions { return newICMPOptions() },
	run:        runICMP,
})

// ICMPOptions are the icmp kind's options.
type ICMPOptions struct {
	Packets
}

func newICMPOptions() *ICMPOptions {
	return &ICMPOptions{Packets: Packets{Count: 1, Interval: time.Second}}
}

func (o *ICMPOptions) AddFlags(fs *pflag.FlagSet) {
	o.Packets.AddFlags(fs)
}

func (o *ICMPOptions) Check(func(string) bool) error { return o.Packets.Check() }

// echoEvidence is what an echo attempt tells beyond the common result.
type echoEvidence struct {
	stats    *verdict.Stats
	tx, rx   time.Time // the first answered echo (else the first sent) and its reply
	id       int
	replyTTL *int
}

func (r *echoEvidence) fill(v *verdict.Verdict, since func(time.Time) *verdict.Millis) {
	w := wireOf(v)
	w.EchoID, w.ReplyTTL = &r.id, r.replyTTL
	w.EchoTx, w.EchoReply = since(r.tx), since(r.rx)
	v.Stats = r.stats
}

func runICMP(ctx context.Context, a Attempt) Result {
	o, _ := a.Opts.(*ICMPOptions)
	if o == nil {
		o = newICMPOptions()
	}
	dst := a.Addr.Addr()
	if _, err := sockaddrOf(a.Addr); err != nil {
		return fail(verdict.LocalError, err.Error())
	}
	k := pingerKey{v6: dst.Is6(), iface: a.Interface, mark: a.Mark, source: a.Source, txStamps: a.Wire == nil || !a.Wire.HasTC()}
	p, err := acquirePinger(k)
	if err != nil {
		var pe errPermission
		if errors.As(err, &pe) {
			return fail(verdict.Permission, pe.msg)
		}
		return fail(verdict.LocalError, err.Error())
	}
	defer p.release()
	w, unwatch := p.watchDst(a)
	defer unwatch()
	if w.flow != nil {
		// Room for this attempt's events on top of those of the other attempts that
		// share the flow: a request and an answer per echo.
		defer w.flow.Reserve(2 * o.Count)()
	}
	foreign0, corrupt0 := w.foreign.Load(), w.corrupt.Load()
	timeout, deadline := attemptTimes(ctx, a)
	x := &echoExchange{p: p, dst: dst, c: &echoCounters{}, timeout: timeout, deadline: deadline}
	sent, sendErr, early := sendAll(ctx, x, a, o.Packets, "echo request")
	p.finish(x.echoes)
	if early != nil {
		return *early
	}
	var evs []wire.Event
	if w.flow != nil {
		evs = echoEvents(w.flow, x.echoes, p.staleSeq)
		p.collected(x.echoes)
	}
	res := echoResult(x.echoes, evs, a, timeout)
	if len(x.echoes) > 0 {
		res.proto, res.payload = unix.IPPROTO_ICMP, buildEcho(k.v6, p.id, x.echoes[0].seq, p.payload(x.echoes[0]))
		if k.v6 {
			res.proto = unix.IPPROTO_ICMPV6
		}
	}
	ev := res.Kind.(*echoEvidence)
	ev.id = int(p.id)
	st := ev.stats
	st.Duplicates = int(x.c.duplicates.Load())
	st.Late = int(x.c.late.Load())
	st.Corrupt = int(x.c.corrupt.Load() + w.corrupt.Load() - corrupt0)
	st.Foreign = int(w.foreign.Load() - foreign0)
	if extra := ignoredNote(st); extra != "" {
		res.Detail += "; " + extra
	}
	if sendErr != nil {
		res.Detail += fmt.Sprintf("; sending stopped after %d of %d echo requests: %v", sent, o.Count, sendErr)
	}
	if w.note != "" {
		res.Detail += "; " + w.note
	}
	return res
}

// echoExchange sends an attempt's echoes on the shared socket, whose reader goroutine
// answers them.
type echoExchange struct {
	p        *pinger
	dst      netip.Addr
	c        *echoCounters
	echoes   []*echo
	timeout  time.Duration
	deadline time.Time
}

func (x *echoExchange) send() error {
	e, err := x.p.send(x.dst, x.c)
	if err == nil {
		x.echoes = append(x.echoes, e)
	}
	return err
}

func (x *echoExchange) wait(ctx context.Context, until time.Time, all bool) error {
	if !all {
		return sleepUntil(ctx, until)
	}
	for _, e := range x.echoes {
		waitEcho(ctx, e, earlier(e.sentWall.Add(x.timeout), x.deadline))
	}
	return ctx.Err()
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
//
// Events that are no attempt's any more (late replies and errors to echoes whose attempt has
// already taken its events) are taken out too, so that a flow concurrent attempts keep open
// (a daemon probing one host often) does not fill up with them.
func echoEvents(f *wire.Flow, echoes []*echo, stale func(seq uint16) bool) []wire.Event {
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
		f.Sync()
	}
	taken := f.Take(func(ev wire.Event) bool { return ours(ev) || stale(uint16(ev.Seq)) })
	evs := slices.DeleteFunc(taken, func(ev wire.Event) bool { return !ours(ev) })
	slices.SortFunc(evs, func(x, y wire.Event) int { return int(int64(x.TsNs) - int64(y.TsNs)) })
	return evs
}

// clock is what each clock knows of e and its answer.
func (e *echo) clock() packetClock {
	seq := uint32(e.seq)
	want := wire.EvEchoReply
	if e.err != nil {
		want = wire.EvICMPError
	}
	return packetClock{
		sentWall: e.sentWall, sentMono: e.sentMono, txKernel: e.txKernel, rxKernel: e.rxKernel, rxUser: e.rxUser,
		isTx:     func(ev wire.Event) bool { return wire.EventKind(ev.Kind) == wire.EvEchoRequest && ev.Seq == seq },
		isAnswer: func(ev wire.Event) bool { return wire.EventKind(ev.Kind) == want && ev.Seq == seq },
	}
}

// echoResult turns an attempt's echoes into a result: ok if any was answered, else the
// last ICMP error, else silence.
func echoResult(echoes []*echo, evs []wire.Event, a Attempt, waited time.Duration) Result {
	ev := &echoEvidence{stats: &verdict.Stats{Count: len(echoes)}}
	res := Result{sent: len(echoes) > 0, Kind: ev}
	var replies []packetTiming
	var first, lastErr *echo
	var errTiming packetTiming
	for _, e := range echoes {
		switch {
		case e.answered && e.err != nil:
			lastErr, errTiming = e, e.clock().timing(evs)
		case e.answered:
			t := e.clock().timing(evs)
			if first == nil {
				first, ev.tx, ev.rx = e, t.tx, t.rx
			}
			replies = append(replies, t)
		}
	}
	if first == nil && len(echoes) > 0 {
		ev.tx = echoes[0].sentWall
	}
	res.RTT, res.TimingSource = summarise(ev.stats, replies)
	switch {
	case first != nil:
		res.Reason, res.HasRTT = verdict.OK, true
		if first.ttl >= 0 {
			ev.replyTTL = new(first.ttl)
		}
		switch {
		case len(echoes) > 1:
			res.Detail = statsDetail(ev.stats, "echo replies")
		case first.ttl >= 0 && a.Addr.Addr().Is6():
			res.Detail = fmt.Sprintf("echo reply from %s in %s, hop limit %d", first.dst, fmtRTT(replies[0].rtt), first.ttl)
		case first.ttl >= 0:
			res.Detail = fmt.Sprintf("echo reply from %s in %s, TTL %d", first.dst, fmtRTT(replies[0].rtt), first.ttl)
		default:
			res.Detail = fmt.Sprintf("echo reply from %s in %s", first.dst, fmtRTT(replies[0].rtt))
		}
	case lastErr != nil:
		ee := lastErr.err
		res.Reason, res.ICMP, res.Detail = icmpAnswer(a.Addr.Addr().Is6(), ee.typ, ee.code, ee.from)
		if len(echoes) > 1 {
			res.Detail += fmt.Sprintf(" (no reply to any of %d echo requests)", len(echoes))
		}
		if errTiming.source != verdict.SourceUserspace {
			res.TimingSource = errTiming.source
		}
		res.ICMPAt = errTiming.rx
		res = fromThisHost(res, a, ee.from, fmt.Sprintf("%d echo request(s)", len(echoes)))
	case len(echoes) > 0:
		res.Reason, res.waited = verdict.Timeout, waited
		res.Detail = fmt.Sprintf("no echo reply or ICMP error within %s of %d echo request(s)", waited.Round(time.Millisecond), len(echoes))
		if n, ok := unresolvedNeighbor(a); ok {
			res.Reason, res.Layer = verdict.HostUnreachable, verdict.LayerLink
			res.Detail = fmt.Sprintf("%s; %d echo request(s) never left the link", n, len(echoes))
		}
		seqs := map[uint32]bool{}
		for _, e := range echoes {
			seqs[uint32(e.seq)] = true
		}
		if allSeenLeaving(evs, len(echoes), func(ev wire.Event) bool {
			return wire.EventKind(ev.Kind) == wire.EvEchoRequest && seqs[ev.Seq]
		}) {
			res.TimingSource = verdict.SourceWire
			res.Detail += " (all seen leaving on the wire)"
		}
	}
	return res
}

package probe

import (
	"time"

	"reachd/pkg/verdict"
	"reachd/pkg/wire"
)

// The phases of an application probe (resolve, setup, connect, tls, request, ttfb, transfer) run
// between instants that mark a connection's progress. Each instant is taken at TC when the
// packet that made it was seen there — the SYN-ACK, the server's last handshake byte, the
// request's first byte leaving, the response's first and last bytes arriving — and in
// userspace otherwise. Consecutive phases share their instants, so they add up to the
// total exactly; a phase is wire-timed when both its instants are.

// mark is one instant; wire says TC saw it.
type mark struct {
	at   time.Time
	wire bool
}

func (m mark) set() bool { return !m.at.IsZero() }

// marks are a connection's instants, and the stream offsets that tell which packet made
// each (placed on the wire by session.place).
type marks struct {
	begin, resolved, syn, connected, secured, sent, first, end mark
	// Stream offsets (bytes before the one meant): the server's last handshake byte, the
	// request's first byte, the response's first and last bytes. -1: not known.
	securedRx, sentTx, firstRx, endRx int64
	// firstSpan, when not 0: firstRx starts a read of this many bytes that holds the
	// response's first byte somewhere (see place).
	firstSpan int64
}

// phaseNames lists the phases in order, each with the instants it runs between.
var phaseNames = []string{"resolve", "setup", "connect", "tls", "request", "ttfb", "transfer"}

// durations returns each phase's length, keyed as phaseNames, and whether both its
// instants were taken at TC; an instant not taken (no TLS) merges its phase into the next
// one's, and an instant earlier than the one before it (two clocks) counts as that one.
func (m marks) durations() (map[string]time.Duration, map[string]bool) {
	seq := []mark{m.begin, m.resolved, m.syn, m.connected, m.secured, m.sent, m.first, m.end}
	d := map[string]time.Duration{}
	w := map[string]bool{}
	prev := seq[0]
	for i, cur := range seq[1:] {
		if !cur.set() {
			continue
		}
		if cur.at.Before(prev.at) {
			cur.at = prev.at
		}
		name := phaseNames[i]
		d[name] = cur.at.Sub(prev.at)
		w[name] = cur.wire && prev.wire
		prev = cur
	}
	return d, w
}

// phases are the phases of every connection an attempt made (several when it followed
// redirects), added up.
type phases struct {
	d    map[string]time.Duration
	wire map[string]bool
}

// span is the time the phases cover: the first connection's begin to the last one's end
// (they meet end to end).
func (p *phases) span() time.Duration {
	var t time.Duration
	for _, v := range p.d {
		t += v
	}
	return t
}

func (p *phases) add(m marks) {
	if p.d == nil {
		p.d, p.wire = map[string]time.Duration{}, map[string]bool{}
	}
	d, w := m.durations()
	for name, v := range d {
		_, seen := p.d[name]
		p.d[name] += v
		p.wire[name] = w[name] && (!seen || p.wire[name])
	}
}

// fill writes the phases into the verdict's timings, after the runner's resolution.
func (p *phases) fill(v *verdict.Verdict) {
	if v.Timings == nil {
		v.Timings = &verdict.Timings{}
	}
	t := v.Timings
	var resolve time.Duration
	if t.Resolve != nil {
		resolve = time.Duration(float64(*t.Resolve) * float64(time.Millisecond))
	}
	set := func(dst **verdict.Millis, name string) {
		if d, ok := p.d[name]; ok {
			*dst = verdict.MsPtr(d)
			if p.wire[name] {
				t.Wire = append(t.Wire, name)
			}
		}
	}
	resolve += p.d["resolve"]
	t.Resolve = verdict.MsPtr(resolve)
	set(&t.Setup, "setup")
	set(&t.Connect, "connect")
	set(&t.TLS, "tls")
	set(&t.Request, "request")
	set(&t.TTFB, "ttfb")
	set(&t.Transfer, "transfer")
	t.Total = verdict.MsPtr(resolve + p.span() - p.d["resolve"])
}

// carrier finds when the segment (of kind, on a stream whose initial sequence number is
// isn) that carried the byte at stream offset off was seen. With span > 0 the byte meant
// is somewhere in the span bytes from off (one read): the first of the segments that
// carried them, if they all came within spanSpread of it (else the instant is not known to
// that bound). Sequence numbers wrap: the arithmetic is modulo 2^32.
func carrier(evs []wire.Event, kind wire.EventKind, isn uint32, off, span int64) (uint64, bool) {
	if off < 0 {
		return 0, false
	}
	want := isn + 1 + uint32(off)
	var first, last uint64
	for i := range evs {
		e := &evs[i]
		if wire.EventKind(e.Kind) != kind {
			continue
		}
		switch {
		case want-e.Seq < e.Len: // carries the byte at off (the earliest copy)
			if first == 0 || e.TsNs < first {
				first = e.TsNs
			}
			last = max(last, e.TsNs)
		case span > 0 && e.Seq-want < uint32(span): // starts within the read
			last = max(last, e.TsNs)
		}
	}
	if first == 0 || (span > 0 && time.Duration(last-first) > spanSpread) {
		return 0, false
	}
	return first, true
}

// spanSpread bounds how far apart the segments of one read may have arrived for the read's
// first to stand for a byte somewhere in it: the error `make bench` holds TTFB to.
const spanSpread = 20 * time.Microsecond

// place replaces the userspace instants of m with the instants TC saw the packets that
// carried their bytes, where it saw them: a byte at stream offset off was carried by the
// segment whose sequence range holds ISN + 1 + off.
func (s *session) place(m *marks) {
	tr, ok := s.tcp.Kind.(*tcpResult)
	if s.d.flow == nil || !ok || !tr.hasISN {
		return
	}
	evs := s.d.flow.Sync()
	at := func(egress bool, off, span int64) (mark, bool) {
		isn, kind := tr.peerISN, wire.EvDataRx
		if egress {
			isn, kind = tr.isn, wire.EvDataTx
		}
		ts, ok := carrier(evs, kind, isn, off, span)
		return mark{at: s.d.wall(ts), wire: true}, ok
	}
	for _, p := range []struct {
		dst       *mark
		egress    bool
		off, span int64
	}{{&m.secured, false, m.securedRx, 0}, {&m.sent, true, m.sentTx, 0}, {&m.first, false, m.firstRx, m.firstSpan}, {&m.end, false, m.endRx, 0}} {
		if !p.dst.set() {
			continue
		}
		if w, ok := at(p.egress, p.off, p.span); ok {
			*p.dst = w
		}
	}
}

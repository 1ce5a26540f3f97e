package probe

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"reachd/pkg/verdict"
	"reachd/pkg/wire"
)

// UDP probes a port with datagrams on a connected socket (a.Count per attempt, a.Interval
// apart) and classifies what came back: a reply (ok, if it meets the expectation), an ICMP
// error read from the error queue (IP_RECVERR: port unreachable means closed), or silence,
// which is open_filtered and never "closed": routers and hosts rate-limit ICMP errors.
func UDP(ctx context.Context, a Attempt) Result {
	o := a.UDP
	if o == nil {
		o = &UDPOptions{}
	}
	deadline, _ := ctx.Deadline()
	timeout := a.Timeout
	if timeout <= 0 {
		timeout = time.Until(deadline)
	}
	dst := a.Addr.Addr()
	f, fd, sa, res, ok := probeSocket(a, unix.SOCK_DGRAM, unix.IPPROTO_UDP)
	if !ok {
		return res
	}
	defer f.Close()
	if res, ok := setupUDPSocket(fd, dst.Is6(), a); !ok {
		return res
	}
	count := max(a.Count, 1)
	var flow *wire.Flow
	var note string
	if a.Wire != nil && a.Wire.HasTC() {
		if flow, note = registerFlow(fd, a, wire.ProtoUDP); flow != nil {
			defer flow.Close()
			defer flow.Reserve(2 * count)()
		}
	}
	if err := unix.Connect(fd, sa); err != nil {
		return sendError("connect", err, a)
	}
	u := &udpConn{f: f, fd: fd, opts: o}
	var sendErr error
	start := time.Now()
	for i := range count {
		// Between sends, answers to the datagrams already sent are read as they come: a
		// reply may come after the next datagram left (an RTT longer than the interval).
		if i > 0 && u.wait(ctx, start.Add(time.Duration(i)*a.Interval), false) != nil {
			break
		}
		if i == 0 && !time.Now().Before(deadline) {
			return Result{Reason: verdict.SelfOverload,
				Detail: "the attempt's deadline passed before the datagram was sent: the prober is overloaded"}
		}
		req, err := o.newRequest(a.Addr)
		if err != nil {
			return Result{Reason: verdict.LocalError, Detail: err.Error()}
		}
		if err := u.send(req, timeout, deadline); err != nil {
			sendErr = err
			break
		}
	}
	// Each datagram waits the timeout for its answer; the last one's wait ends last.
	if n := len(u.dgrams); n > 0 {
		_ = u.wait(ctx, u.dgrams[n-1].until, true)
	}
	if len(u.dgrams) == 0 && sendErr != nil {
		return sendError("send datagram", sendErr, a)
	}
	var evs []wire.Event
	if flow != nil {
		evs = flow.Sync(time.Now().Add(catchUp))
		slices.SortFunc(evs, func(x, y wire.Event) int { return int(int64(x.TsNs) - int64(y.TsNs)) })
	}
	res = u.result(evs, a, timeout)
	if sn, err := unix.Getsockname(fd); err == nil {
		res.Local = addrPortOf(sn)
	}
	if sendErr != nil {
		res.Detail += fmt.Sprintf("; sending stopped after %d of %d datagrams: %v", len(u.dgrams), count, sendErr)
	}
	if note != "" {
		res.Detail += "; " + note
	}
	return res
}

// setupUDPSocket sets the error queue, timestamps, the interface and the source address.
// Transmit timestamps are always asked for: whenever TC does not see a datagram (an
// interface it cannot watch, a full flow table), the kernel's stamps time it, never
// userspace; they cost one error-queue read per datagram.
func setupUDPSocket(fd int, v6 bool, a Attempt) (Result, bool) {
	level, opt := unix.SOL_IP, unix.IP_RECVERR
	if v6 {
		level, opt = unix.SOL_IPV6, unix.IPV6_RECVERR
	}
	if err := unix.SetsockoptInt(fd, level, opt, 1); err != nil {
		return socketError("setsockopt IP_RECVERR", err), false
	}
	// OPT_ID numbers the transmit stamps 0, 1, ... in send order; TSONLY returns no data.
	flags := unix.SOF_TIMESTAMPING_RX_SOFTWARE | unix.SOF_TIMESTAMPING_SOFTWARE |
		unix.SOF_TIMESTAMPING_TX_SOFTWARE | unix.SOF_TIMESTAMPING_OPT_ID | unix.SOF_TIMESTAMPING_OPT_TSONLY
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPING, flags); err != nil {
		return socketError("setsockopt SO_TIMESTAMPING", err), false
	}
	if a.Interface != "" {
		if err := unix.SetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE, a.Interface); err != nil {
			if errors.Is(err, unix.ENODEV) {
				return Result{Reason: verdict.LocalError, Detail: fmt.Sprintf("interface %s does not exist", a.Interface)}, false
			}
			return socketError("bind to interface "+a.Interface, err), false
		}
	}
	if a.Source.IsValid() {
		if err := bindSource(fd, a); err != nil {
			return Result{Reason: verdict.LocalError, Detail: err.Error()}, false
		}
	}
	return Result{}, true
}

// dgram is one datagram sent and what came back for it.
type dgram struct {
	req      request
	sentWall time.Time
	sentMono int64
	until    time.Time // the end of its wait for an answer
	txKernel time.Time
	reply    []byte // the first reply that answers it
	replied  bool   // (a reply may be empty)
	rxUser   time.Time
	rxKernel time.Time
	err      *QueuedError // an ICMP error in answer
	errUser  time.Time
	mismatch string // why a reply did not answer it (built-in payloads)
}

func (d *dgram) answered() bool { return d.replied || d.err != nil }

// open says whether d still waits for its answer at now.
func (d *dgram) open(now time.Time) bool { return !d.answered() && !now.After(d.until) }

// udpConn is one attempt's socket and its datagrams. Answers are matched to datagrams, not
// to the one sent last: a built-in request's answer by its identifier, other replies and
// ICMP errors to the oldest datagram still waiting (a server answers in order; an ICMP
// error's quote, when it has the payload, picks among datagrams that differ).
type udpConn struct {
	f      *os.File
	fd     int
	opts   *UDPOptions
	dgrams []*dgram
	extra  int // replies beyond the first to a datagram
	late   int // replies that came after their datagram's wait
	buf    [65536]byte
	oob    [512]byte
}

func (u *udpConn) send(req request, timeout time.Duration, deadline time.Time) error {
	d := &dgram{req: req}
	d.sentMono, d.sentWall = wire.Monotonic(), time.Now()
	_, err := unix.Write(u.fd, req.data)
	if err != nil && isAsyncICMPErrno(err) {
		// The error belongs to an earlier datagram (the kernel reports an ICMP error on
		// the next call); its details are in the error queue. This write did not happen.
		u.drain()
		d.sentMono, d.sentWall = wire.Monotonic(), time.Now()
		_, err = unix.Write(u.fd, req.data)
	}
	if err != nil {
		return err
	}
	d.until = earlier(d.sentWall.Add(timeout), deadline)
	u.dgrams = append(u.dgrams, d)
	return nil
}

func isAsyncICMPErrno(err error) bool {
	return errors.Is(err, unix.ECONNREFUSED) || errors.Is(err, unix.EHOSTUNREACH) || errors.Is(err, unix.ENETUNREACH) ||
		errors.Is(err, unix.EHOSTDOWN) || errors.Is(err, unix.EPROTO) || errors.Is(err, unix.EMSGSIZE) || errors.Is(err, unix.ENOPROTOOPT) ||
		errors.Is(err, unix.EACCES) || errors.Is(err, unix.ENONET)
}

// wait reads answers until until, or, with all, until every datagram sent is answered. It
// returns ctx's error when ctx ended the wait.
func (u *udpConn) wait(ctx context.Context, until time.Time, all bool) error {
	if u.drain() && all || !time.Now().Before(until) {
		return ctx.Err()
	}
	if u.f.SetReadDeadline(until) != nil {
		return ctx.Err()
	}
	rc, err := u.f.SyscallConn()
	if err != nil {
		return ctx.Err()
	}
	stop := context.AfterFunc(ctx, func() { _ = u.f.SetReadDeadline(time.Now()) })
	defer stop()
	_ = rc.Read(func(uintptr) bool { return u.drain() && all })
	return ctx.Err()
}

// drain reads both queues to empty (the poller is edge-triggered) and reports whether
// every datagram sent has been answered.
func (u *udpConn) drain() bool {
	for range 1 << 12 {
		n, oobn, _, _, err := unix.Recvmsg(u.fd, u.buf[:], u.oob[:], unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
		if err != nil {
			break
		}
		u.errQueued(u.buf[:n], u.oob[:oobn])
	}
	for range 1 << 12 {
		n, oobn, _, _, err := unix.Recvmsg(u.fd, u.buf[:], u.oob[:], unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if err != nil {
			// A pending socket error (an ICMP error) that this read cleared; its details
			// were in the error queue. Without them (no IP_RECVERR support), the errno
			// alone still says what happened.
			if d := u.oldestOpen(time.Now(), nil); d != nil && isAsyncICMPErrno(err) {
				d.err, d.errUser = errnoAsICMP(err), time.Now()
			}
			continue
		}
		u.received(u.buf[:n], u.oob[:oobn])
	}
	for _, d := range u.dgrams {
		if !d.answered() {
			return false
		}
	}
	return len(u.dgrams) > 0
}

// oldestOpen is the earliest datagram still waiting at now for which fits holds (nil:
// any).
func (u *udpConn) oldestOpen(now time.Time, fits func(*dgram) bool) *dgram {
	for _, d := range u.dgrams {
		if d.open(now) && (fits == nil || fits(d)) {
			return d
		}
	}
	return nil
}

// errQueued handles one error-queue message: a transmit timestamp, or an ICMP error, whose
// data is the start of the datagram it answers.
func (u *udpConn) errQueued(b, oob []byte) {
	m := parseRxOOB(oob)
	if m.ee == nil {
		return
	}
	if m.ee.Origin == eeOriginTimestamping {
		if i := int(m.ee.Data); i < len(u.dgrams) && u.dgrams[i].txKernel.IsZero() {
			u.dgrams[i].txKernel = m.at
		}
		return
	}
	if !m.ee.IsICMP() {
		return
	}
	now := time.Now()
	d := u.oldestOpen(now, func(d *dgram) bool { return bytes.HasPrefix(d.req.data, b) })
	if d == nil {
		d = u.oldestOpen(now, nil)
	}
	if d != nil {
		d.err, d.errUser = m.ee, now
	}
}

// received matches one reply to the datagram it answers.
func (u *udpConn) received(b, oob []byte) {
	now := time.Now()
	if len(u.dgrams) == 0 {
		return
	}
	var d *dgram
	if u.dgrams[0].req.check != nil {
		// A built-in request's answer names its request (DNS id, NTP origin, ...).
		for _, c := range u.dgrams {
			if c.req.check(b) == "" {
				d = c
				break
			}
		}
		if d == nil {
			if o := u.oldestOpen(now, nil); o != nil {
				o.mismatch = o.req.check(b)
			}
			return
		}
	} else if d = u.oldestOpen(now, nil); d == nil {
		d = u.dgrams[len(u.dgrams)-1] // no datagram waits: a duplicate, or a late reply
	}
	switch {
	case d.replied:
		u.extra++
	case !d.open(now):
		u.late++
	default:
		d.reply, d.replied = append([]byte{}, b...), true
		d.rxUser, d.rxKernel = now, parseRxOOB(oob).at
	}
}

// errnoAsICMP stands in for an error-queue message when only the errno is known.
func errnoAsICMP(err error) *QueuedError {
	q := &QueuedError{Origin: eeOriginICMP, Type: icmp4DestUnreach}
	switch {
	case errors.Is(err, unix.ECONNREFUSED):
		q.Code = 3
	case errors.Is(err, unix.EHOSTUNREACH):
		q.Code = 1
	case errors.Is(err, unix.ENETUNREACH):
		q.Code = 0
	default:
		q.Code = 255
	}
	return q
}

// udpTiming is one answered datagram's round trip and where it was measured.
type udpTiming struct {
	d      *dgram
	rtt    time.Duration
	source string
	tx, rx time.Time
}

// timeDgram picks the best clock for datagram i: TC (the i-th datagram seen leaving and
// the first answer after it), else the kernel's timestamps, else userspace.
func (u *udpConn) timeDgram(i int, evs []wire.Event) udpTiming {
	d := u.dgrams[i]
	wall := func(ns uint64) time.Time { return d.sentWall.Add(time.Duration(int64(ns) - d.sentMono)) }
	rxUser, rxKernel := d.rxUser, d.rxKernel
	want := wire.EvUDPRx
	if !d.replied {
		rxUser, rxKernel, want = d.errUser, d.err.At, wire.EvICMPError
	}
	t := udpTiming{d: d, source: verdict.SourceUserspace, tx: d.sentWall, rx: rxUser}
	var next int64 = math.MaxInt64
	if i+1 < len(u.dgrams) {
		next = u.dgrams[i+1].sentMono
	}
	// The answer is the event nearest to when the kernel received the accepted one (a
	// server may send several datagrams; a reply may not match a built-in payload).
	anchor := monoAt(rxKernel, d.sentWall, d.sentMono)
	var tx, rx uint64
	for _, ev := range evs {
		k := wire.EventKind(ev.Kind)
		switch {
		case tx == 0 && k == wire.EvUDPTx && int64(ev.TsNs) >= d.sentMono && int64(ev.TsNs) < next:
			tx = ev.TsNs
		case tx != 0 && k == want && ev.TsNs >= tx && (rx == 0 || nearer(ev.TsNs, rx, anchor)):
			rx = ev.TsNs
		}
	}
	switch {
	case tx != 0 && rx != 0:
		t.source, t.tx, t.rx = verdict.SourceWire, wall(tx), wall(rx)
	case !d.txKernel.IsZero() && !rxKernel.IsZero() && !rxKernel.Before(d.txKernel):
		t.source, t.tx, t.rx = verdict.SourceKernel, d.txKernel, rxKernel
	case tx != 0:
		t.tx = wall(tx)
	}
	t.rtt = t.rx.Sub(t.tx)
	return t
}

// result classifies the attempt: a reply, else the last ICMP error, else a reply that did
// not answer, else silence.
func (u *udpConn) result(evs []wire.Event, a Attempt, timeout time.Duration) Result {
	o := u.opts
	v6 := a.Addr.Addr().Is6()
	res := Result{sent: len(u.dgrams) > 0}
	st := &verdict.Stats{Count: len(u.dgrams), Duplicates: u.extra, Late: u.late}
	res.Stats = st
	var replies []udpTiming
	var lastErr *udpTiming
	mismatch := ""
	for i, d := range u.dgrams {
		switch {
		case d.replied:
			replies = append(replies, u.timeDgram(i, evs))
		case d.err != nil:
			t := u.timeDgram(i, evs)
			lastErr = &t
		case d.mismatch != "":
			mismatch = d.mismatch
		}
	}
	st.Received = len(replies)
	if st.Count > 0 {
		st.LossPct = math.Round(1000*float64(st.Count-st.Received)/float64(st.Count)) / 10
	}
	wt := &WireTimes{}
	if len(u.dgrams) > 0 {
		wt.UDPTx = u.dgrams[0].sentWall
	}
	res.WireTimes = wt
	if len(u.dgrams) > 0 {
		// What went, also when nothing answered: a silent port may want another payload.
		res.UDP = &verdict.UDP{Payload: u.dgrams[0].req.name, Sent: len(u.dgrams[0].req.data)}
	}
	switch {
	case len(replies) > 0:
		first := replies[0]
		rtts, sources := make([]time.Duration, len(replies)), make([]string, len(replies))
		for i, r := range replies {
			rtts[i], sources[i] = r.rtt, r.source
		}
		res.RTT, res.TimingSource = rttStats(st, rtts), worstSource(sources)
		wt.UDPTx, wt.UDPRx = first.tx, first.rx
		res.UDP = &verdict.UDP{Payload: first.d.req.name, Sent: len(first.d.req.data), Received: len(first.d.reply), Reply: quoteBytes(first.d.reply, 64)}
		res.HasRTT = true
		what, unmet := first.d.req.describeReply(first.d.reply), o.expectation(first.d.reply)
		switch {
		case o.ExpectClosed:
			res.Reason = verdict.ProtocolMismatch
			res.Detail = fmt.Sprintf("--expect-closed, but the port answered: %s in %s", what, fmtRTT(first.rtt))
		case unmet != "":
			res.Reason = verdict.BodyMismatch
			res.Detail = unmet
		default:
			res.Reason = verdict.OK
			res.Detail = fmt.Sprintf("%s in %s", what, fmtRTT(first.rtt))
			if len(u.dgrams) > 1 {
				res.Detail = fmt.Sprintf("%d/%d datagrams answered (%.1f%% loss), min/avg/max %s/%s/%s ms",
					st.Received, st.Count, st.LossPct, fmtMs(st.MinMs), fmtMs(st.AvgMs), fmtMs(st.MaxMs))
			}
		}
	case lastErr != nil:
		q := lastErr.d.err
		// Only the errno was known (errnoAsICMP): it is named in ICMP's terms.
		asV6 := v6 && q.Origin != eeOriginICMP
		var reason verdict.Reason
		reason, res.ICMP, res.Detail = icmpAnswer(asV6, q.Type, q.Code, q.Offender)
		res.Reason = reason
		if lastErr.source != verdict.SourceUserspace {
			res.TimingSource = lastErr.source
		}
		wt.ICMP = lastErr.rx
		res = fromThisHost(res, a, q.Offender, fmt.Sprintf("%d datagram(s)", len(u.dgrams)))
		if reason == verdict.PortUnreachable && o.ExpectClosed {
			res.Reason = verdict.OK
			res.Detail = "port closed, as --expect-closed wants: " + res.Detail
		}
	case mismatch != "":
		res.Reason, res.Detail = verdict.ProtocolMismatch, mismatch
	case len(u.dgrams) > 0:
		res.Reason = verdict.OpenFiltered
		res.waited = timeout
		res.Detail = fmt.Sprintf("no reply or ICMP error within %s of %d datagram(s): open (and silent to this payload) or filtered; silence is never taken for closed",
			timeout.Round(time.Millisecond), len(u.dgrams))
		if n, ok := unresolvedNeighbor(a); ok {
			res.Reason, res.Layer = verdict.HostUnreachable, verdict.LayerLink
			res.Detail = fmt.Sprintf("%s; %d datagram(s) never left the link", n, len(u.dgrams))
		}
		seen := 0
		for _, ev := range evs {
			if wire.EventKind(ev.Kind) == wire.EvUDPTx {
				seen++
			}
		}
		if seen >= len(u.dgrams) {
			res.TimingSource = verdict.SourceWire
			res.Detail += " (all seen leaving on the wire)"
		}
	}
	return res
}

package probe

import (
	"bytes"
	"context"
	"errors"
	"math"
	"net/netip"
	"os"
	"reachd/pkg/wire"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

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
	f        *os.File
	fd       int
	opts     *UDPOptions
	dst      netip.AddrPort
	timeout  time.Duration
	deadline time.Time
	idBase   uint16 // the first datagram's 16-bit identifier; the next ones count up
	dgrams   []*dgram
	extra    int // replies beyond the first to a datagram
	late     int // replies that came after their datagram's wait
	buf      [65536]byte
	oob      [512]byte
}

// send sends the next datagram: a fresh request (built-in ones carry a new identifier).
func (u *udpConn) send() error {
	req, err := u.opts.newRequest(u.dst, u.idBase+uint16(len(u.dgrams)))
	if err != nil {
		return err
	}
	d := &dgram{req: req}
	d.sentMono, d.sentWall = wire.Monotonic(), time.Now()
	_, err = unix.Write(u.fd, req.data)
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
	d.until = earlier(d.sentWall.Add(u.timeout), u.deadline)
	u.dgrams = append(u.dgrams, d)
	return nil
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
	u.drainErrors()
	for range 1 << 12 {
		n, oobn, _, _, err := unix.Recvmsg(u.fd, u.buf[:], u.oob[:], unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) {
			break
		}
		if err != nil {
			// A pending socket error (an ICMP error) that this read cleared; its details
			// were in the error queue. Without them (no IP_RECVERR support), the errno
			// alone still says what happened.
			// An ICMP error that came after the error queue was read sets the socket's
			// error with its details queued: read them, and fall back on the errno only
			// when none were.
			if u.drainErrors() > 0 {
				continue
			}
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

// drainErrors reads the error queue to empty and says how many ICMP errors it held.
func (u *udpConn) drainErrors() int {
	n := 0
	for range 1 << 12 {
		m, oobn, _, _, err := unix.Recvmsg(u.fd, u.buf[:], u.oob[:], unix.MSG_ERRQUEUE|unix.MSG_DONTWAIT)
		if err != nil {
			break
		}
		if u.errQueued(u.buf[:m], u.oob[:oobn]) {
			n++
		}
	}
	return n
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
// data is the start of the datagram it answers. It says whether it was an ICMP error.
func (u *udpConn) errQueued(b, oob []byte) bool {
	m := parseRxOOB(oob)
	if m.ee == nil {
		return false
	}
	if m.ee.Origin == eeOriginTimestamping {
		if i := int(m.ee.Data); i < len(u.dgrams) && u.dgrams[i].txKernel.IsZero() {
			u.dgrams[i].txKernel = m.at
		}
		return false
	}
	if !m.ee.IsICMP() {
		return false
	}
	now := time.Now()
	// The error's data is the start of the datagram it answers: the oldest one still
	// waiting among those it fits. If it fits only datagrams whose wait is over, it is late.
	quoted := func(d *dgram) bool { return bytes.HasPrefix(d.req.data, b) }
	d := u.oldestOpen(now, quoted)
	if d == nil && !slices.ContainsFunc(u.dgrams, quoted) {
		d = u.oldestOpen(now, nil) // a quote too short or altered to tell
	}
	if d != nil {
		d.err, d.errUser = m.ee, now
	}
	return true
}

// received matches one reply to the datagram it answers.
func (u *udpConn) received(b, oob []byte) {
	now := time.Now()
	if len(u.dgrams) == 0 {
		return
	}
	var d *dgram
	if u.dgrams[0].req.check != nil {
		// A built-in request's answer names its request (DNS id, NTP origin, ...): the
		// oldest one still waiting that it answers, else (to count it as a duplicate or
		// late) the first it answers. SSDP's answers name none: oldest first.
		var first *dgram
		for _, c := range u.dgrams {
			if c.req.check(b) != "" {
				continue
			}
			if first == nil {
				first = c
			}
			if c.open(now) {
				d = c
				break
			}
		}
		if d == nil {
			d = first
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

// clock is what each clock knows of datagram i and its answer: TC's view is the first
// datagram seen leaving between its send and the next one's, and the answer nearest the
// kernel's receive stamp of the accepted one (a server may send several datagrams; a reply
// may not match a built-in payload).
func (u *udpConn) clock(i int) packetClock {
	d := u.dgrams[i]
	c := packetClock{sentWall: d.sentWall, sentMono: d.sentMono, txKernel: d.txKernel, rxKernel: d.rxKernel, rxUser: d.rxUser}
	want := wire.EvUDPRx
	if !d.replied {
		c.rxUser, c.rxKernel, want = d.errUser, d.err.At, wire.EvICMPError
	}
	var next int64 = math.MaxInt64
	if i+1 < len(u.dgrams) {
		next = u.dgrams[i+1].sentMono
	}
	c.isTx = func(ev wire.Event) bool {
		return wire.EventKind(ev.Kind) == wire.EvUDPTx && int64(ev.TsNs) >= d.sentMono && int64(ev.TsNs) < next
	}
	c.isAnswer = func(ev wire.Event) bool { return wire.EventKind(ev.Kind) == want }
	return c
}

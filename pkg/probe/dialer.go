package probe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"reachd/pkg/verdict"
	"reachd/pkg/wire"
)

// DialTCP makes a TCP connection with its handshake timed at the wire, for the tcp kind
// and for the kinds that speak over TCP (TLS, HTTP, line protocols): on success it returns
// the established connection, whose owner closes it, and a Result that says how the
// handshake went (its round trip, every SYN sent, the SYN-ACK); on failure no connection
// and the failure classified.
//
// It drives the socket itself rather than through net.Dialer so that: the socket error
// queue (IP_RECVERR) says which ICMP error ended the handshake and who sent it; the SYN
// count comes from TCP_INFO; and the prober's own lateness is told apart from the target's
// (self_overload). A context without a deadline bounds the handshake by a.Timeout.
func DialTCP(ctx context.Context, a Attempt) (net.Conn, Result) {
	conn, res, d := dialTCP(ctx, a, false)
	if d.flow != nil {
		d.flow.Close()
	}
	return conn, res
}

// dialed is what a wire-timed dial leaves its caller besides the connection: the flow,
// still registered so that the connection's payload can be timed (the caller closes it),
// and the clocks of the moment connect() was issued, to place the flow's events.
type dialed struct {
	flow      *wire.Flow
	startWall time.Time
	startMono int64
}

// wall turns an event's CLOCK_MONOTONIC stamp into wall time.
func (d dialed) wall(ns uint64) time.Time {
	return d.startWall.Add(time.Duration(int64(ns) - d.startMono))
}

// dialTCP is DialTCP keeping the flow; with payload, TC also reports the connection's
// payload segments, from before the SYN (a server may speak first, right after the
// handshake).
func dialTCP(ctx context.Context, a Attempt, payload bool) (conn net.Conn, res Result, d dialed) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(a.Timeout)
	}
	f, fd, sa, res, ok := probeSocket(a, unix.SOCK_STREAM, unix.IPPROTO_TCP)
	if !ok {
		return nil, res, d
	}
	defer f.Close() // a returned conn holds a duplicate
	if res, ok := setupSocket(fd, a, sockStreamStamps); !ok {
		return nil, res, d
	}
	var note string
	if a.Wire != nil {
		if d.flow, note = registerTCP(fd, a); d.flow != nil && payload {
			if err := d.flow.WatchPayload(payloadTx, payloadRx); err != nil {
				a.log().Debug("payload not watched: its phases are timed in userspace", "dst", a.Addr, "err", err)
			}
		}
		if d.flow != nil {
			defer func() {
				if conn == nil {
					d.flow.Close()
					d.flow = nil
				}
			}()
		}
	}
	if !time.Now().Before(deadline) {
		return nil, fail(verdict.SelfOverload, "the attempt's deadline passed before connect() was issued: the prober is overloaded"), d
	}
	d.startMono, d.startWall = wire.Monotonic(), time.Now()
	if err := unix.Connect(fd, sa); err != nil && !errors.Is(err, unix.EINPROGRESS) && !errors.Is(err, unix.EINTR) {
		return nil, sendError("connect", err, a), d
	}
	res = tcpOutcome(ctx, f, fd, deadline, d.startWall, a)
	if d.flow != nil {
		res = applyWire(res, d.flow, d.startWall, d.startMono)
	}
	if res.Connect == 0 && res.HasRTT {
		res.Connect = res.RTT
	}
	if note != "" {
		res.Detail += "; " + note
	}
	if res.Reason != verdict.OK {
		return nil, res, d
	}
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fail(verdict.LocalError, fmt.Sprintf("handshake completed, but the socket cannot be used: %v", err)), d
	}
	return c, res, d
}

// tcpResult is what a handshake tells beyond the common result: how many SYNs went, and
// when each packet was seen.
type tcpResult struct {
	synRetransmits *int
	syns           []time.Time // every SYN sent, first one first
	synack, rst    time.Time
	// The initial sequence numbers of both sides, from the SYN and SYN-ACK seen at TC: they
	// place a byte of the connection's streams in the packets that carried it.
	isn, peerISN uint32
	hasISN       bool
}

func (r *tcpResult) fill(v *verdict.Verdict, since func(time.Time) *verdict.Millis) {
	if r.synRetransmits != nil {
		wireOf(v).SYNRetransmits = r.synRetransmits
	}
	if len(r.syns) > 0 {
		w := wireOf(v)
		w.SYNTx = since(r.syns[0])
		for _, s := range r.syns[1:] {
			w.SYNRetransmitTx = append(w.SYNRetransmitTx, *since(s))
		}
	}
	if !r.synack.IsZero() {
		wireOf(v).SYNACK = since(r.synack)
	}
	if !r.rst.IsZero() {
		wireOf(v).RST = since(r.rst)
	}
}

// tcpOf returns res's handshake evidence, adding it if res has none.
func tcpOf(res *Result) *tcpResult {
	if tr, ok := res.Kind.(*tcpResult); ok {
		return tr
	}
	tr := &tcpResult{}
	res.Kind = tr
	return tr
}

// tcpOutcome waits for the handshake to end and classifies how it ended.
func tcpOutcome(ctx context.Context, f *os.File, fd int, deadline, start time.Time, a Attempt) Result {
	res := Result{sent: true}
	soErr, waitErr := waitConnect(ctx, f, deadline)
	elapsed := time.Since(start)
	info, _ := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if info != nil {
		n := int(info.Total_retrans)
		tcpOf(&res).synRetransmits = &n
	}
	if sn, err := unix.Getsockname(fd); err == nil {
		res.Local, res.proto = addrPortOf(sn), unix.IPPROTO_TCP
	}
	switch {
	case waitErr != nil && errors.Is(waitErr, os.ErrDeadlineExceeded) && errors.Is(ctx.Err(), context.Canceled):
		return Result{Reason: verdict.LocalError, sent: true,
			Detail: fmt.Sprintf("probe cancelled %s into the handshake", elapsed.Round(time.Millisecond))}
	case waitErr != nil && errors.Is(waitErr, os.ErrDeadlineExceeded):
		// A late ICMP error may sit in the queue without having ended the handshake yet.
		if q, ok := lastICMP(drainErrQueue(fd)); ok {
			return icmpResult(res, q, a)
		}
		return timeoutResult(res, a, elapsed)
	case waitErr != nil:
		return Result{Reason: verdict.LocalError, Detail: fmt.Sprintf("waiting for the handshake: %v", waitErr)}
	case soErr == 0:
		res.Reason = verdict.OK
		res.RTT, res.HasRTT = elapsed, true
		res.Detail = "handshake completed"
		if n := tcpOf(&res).synRetransmits; n != nil && *n > 0 {
			res.Detail = fmt.Sprintf("handshake completed after %d SYN retransmission(s); the userspace rtt includes the retransmission timeout", *n)
		}
		return res
	}
	if q, ok := lastICMP(drainErrQueue(fd)); ok {
		return icmpResult(res, q, a)
	}
	res = asyncErrnoResult(res, soErr, elapsed)
	if res.Reason == verdict.HostUnreachable || res.Reason == verdict.NetUnreachable {
		res = fromThisHost(res, a, netip.Addr{}, synsSent(res))
	}
	return res
}

// waitConnect waits until the non-blocking connect completes, the deadline passes or ctx
// is cancelled (then it returns os.ErrDeadlineExceeded too), and returns the socket's
// error (0 when connected).
func waitConnect(ctx context.Context, f *os.File, deadline time.Time) (int, error) {
	if err := f.SetWriteDeadline(deadline); err != nil {
		return 0, err
	}
	stop := context.AfterFunc(ctx, func() { _ = f.SetWriteDeadline(time.Now()) })
	defer stop()
	rc, err := f.SyscallConn()
	if err != nil {
		return 0, err
	}
	var soErr int
	werr := rc.Write(func(fd uintptr) bool {
		e, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ERROR)
		if err != nil {
			soErr = int(unix.EBADF)
			if errno, ok := err.(unix.Errno); ok {
				soErr = int(errno)
			}
			return true
		}
		switch unix.Errno(e) {
		case unix.EINPROGRESS, unix.EALREADY, unix.EINTR:
			return false
		case 0:
			// Writable with no error can also mean "not yet": the first call comes before
			// any event. Connected sockets have a peer.
			if _, err := unix.Getpeername(int(fd)); errors.Is(err, unix.ENOTCONN) {
				return false
			}
		}
		soErr = e
		return true
	})
	return soErr, werr
}

// timeoutResult explains silence: how many SYNs went out, and whether the next hop's
// neighbor entry ever resolved (if not, the SYNs never left this link).
func timeoutResult(res Result, a Attempt, waited time.Duration) Result {
	res.Reason = verdict.Timeout
	sent := 1
	if n := tcpOf(&res).synRetransmits; n != nil {
		sent += *n
	}
	res.waited = waited
	res.Detail = silenceDetail(waited, sent, "")
	if n, ok := unresolvedNeighbor(a); ok {
		res.Reason = verdict.HostUnreachable
		res.Layer = verdict.LayerLink
		res.neighbor = n
		res.Detail = fmt.Sprintf("%s; %s never left the link", n, synsSent(res))
	}
	return res
}

// synsSent words how many SYNs a handshake sent, as TCP_INFO counts them.
func synsSent(res Result) string {
	sent := 1
	if tr, ok := res.Kind.(*tcpResult); ok && tr.synRetransmits != nil {
		sent += *tr.synRetransmits
	}
	return fmt.Sprintf("%d SYN(s)", sent)
}

// silenceDetail words a timeout; how says where the SYN count comes from.
func silenceDetail(waited time.Duration, sent int, how string) string {
	return fmt.Sprintf("no SYN-ACK, RST or ICMP error within %s after %d SYN transmission(s)%s", waited.Round(time.Millisecond), sent, how)
}

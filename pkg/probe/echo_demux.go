package probe

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"net/netip"
	"reachd/pkg/wire"
	"time"

	"golang.org/x/sys/unix"
)

// dstKey is a destination on its link: fe80::1%a and fe80::1%b are two hosts.
type dstKey struct {
	addr    netip.Addr // without zone
	ifindex int        // the zone's interface index; 0 without a zone
}

func keyOf(a netip.Addr) dstKey {
	id, _ := scopeID(a.Zone())
	return dstKey{a.WithZone(""), id}
}

// fromKey is the key of a packet's sender as the socket gave it.
func fromKey(sa unix.Sockaddr) dstKey {
	k := dstKey{addr: addrPortOf(sa).Addr().Unmap()}
	if s6, ok := sa.(*unix.SockaddrInet6); ok && k.addr.IsLinkLocalUnicast() {
		k.ifindex = int(s6.ZoneId)
	}
	return k
}

// watchDst registers dst's flow with the observer (once for concurrent attempts to it) so
// that TC reports its echoes; the returned function undoes it, or keeps the registration
// for dst's next attempt (see keep).
func (p *pinger) watchDst(a Attempt) (*watch, func()) {
	dst := keyOf(a.Addr.Addr())
	p.mu.Lock()
	w := p.watches[dst]
	var kept *watch
	if w != nil && w.refs == 0 {
		kept, w = w, nil // kept from an earlier attempt: revalidated below
	}
	first := w == nil
	if first {
		w = &watch{ready: make(chan struct{})}
		p.watches[dst] = w
	}
	w.refs++
	p.mu.Unlock()
	// The first attempt to dst registers its flow (a route lookup and maybe an attach:
	// not under p.mu, which the reader needs); the others wait for it, so none sends an
	// echo TC is not yet watching.
	if first {
		if a.Wire != nil && a.Wire.HasTC() {
			w.flow, w.reg, w.note = registerEcho(a, p.id, p.key.v6, kept)
		} else if kept != nil {
			kept.flow.Close()
		}
		if w.flow == nil {
			// TC will not see these echoes: the kernel's transmit stamps time them.
			p.wantTxStamps()
		}
		close(w.ready)
	} else {
		<-w.ready
	}
	return w, func() {
		now := time.Now()
		p.mu.Lock()
		w.refs--
		var done []*wire.Flow
		if w.refs == 0 {
			if w.flow != nil && p.keep(a) {
				w.idleSince = now
			} else {
				done = append(done, w.flow)
				delete(p.watches, dst)
			}
		}
		done = append(done, p.sweepWatches(now, false)...)
		p.mu.Unlock()
		for _, f := range done {
			if f != nil {
				f.Close()
			}
		}
	}
}

// keep says whether a destination's registration outlives its attempt, for the next: in a
// daemon (whose echo sockets linger, see KeepEchoSockets), while the flow table is less
// than half full, so kept registrations never crowd out an attempt's. Registering and
// deleting a flow for each echo cost a fifth of its CPU at a thousand targets a second.
// p.mu is held (and pingers' lock is not: it is taken before p.mu).
func (p *pinger) keep(a Attempt) bool {
	return pingers.linger.Load() > 0 && a.Wire.Roomy()
}

// keptFor bounds how long a registration nobody uses is kept while its socket is in use:
// long enough for the next tick of a probe every two minutes, short enough that the
// targets a reload removed give their table entries back soon. A socket nobody uses any
// more takes its registrations with it when it closes (see KeepEchoSockets).
const keptFor = 2 * time.Minute

// sweepWatches removes the kept registrations idle for longer than keptFor or than a socket
// lingers (or all of them), at most once a second unless all, and returns their flows to
// close. p.mu is held.
func (p *pinger) sweepWatches(now time.Time, all bool) []*wire.Flow {
	if !all && now.Sub(p.swept) < time.Second {
		return nil
	}
	p.swept = now
	linger := min(time.Duration(pingers.linger.Load()), keptFor)
	var done []*wire.Flow
	for k, w := range p.watches {
		if w.refs == 0 && (all || now.Sub(w.idleSince) > linger) {
			done = append(done, w.flow)
			delete(p.watches, k)
		}
	}
	return done
}

// echoReg is where an echo flow was registered: its local address and the interface TC
// watches it on.
type echoReg struct {
	src  netip.Addr
	link int
}

// registerEcho registers the flow (local address, dst, identifier) with the TC programs
// and attaches them to the interface the route leaves by. A registration kept from an
// earlier attempt is reused if the route still gives the same source and interface, and
// closed if not.
func registerEcho(a Attempt, id uint16, v6 bool, kept *watch) (*wire.Flow, echoReg, string) {
	var reg echoReg
	rt, err := attemptRoute(a)
	if err == nil {
		reg = echoReg{src: a.Source, link: rt.LinkIndex}
		if !reg.src.IsValid() {
			reg.src = rt.Src
		}
	}
	if kept != nil {
		if kept.reg == reg && err == nil && a.Wire.Attach(reg.link) == nil {
			// Nothing is in flight to dst: what the flow holds or the ring still has for it
			// (a late reply, the echoes of an attempt that ended early) is no attempt's.
			kept.flow.Discard()
			return kept.flow, reg, ""
		}
		kept.flow.Close()
	}
	if err != nil || reg.link == 0 || !reg.src.IsValid() || a.Wire.Attach(reg.link) != nil {
		return nil, reg, ""
	}
	proto := uint8(wire.ProtoICMP)
	if v6 {
		proto = wire.ProtoICMPv6
	}
	f, err := a.Wire.Register(proto, netip.AddrPortFrom(reg.src.WithZone(""), id), netip.AddrPortFrom(a.Addr.Addr().WithZone(""), 0))
	if errors.Is(err, wire.ErrFlowTableFull) {
		return nil, reg, tableFullNote(err)
	}
	if err != nil {
		return nil, reg, ""
	}
	return f, reg, ""
}

// wantTxStamps turns the kernel's transmit timestamps on for the socket, once: an echo TC
// does not watch is timed by them, never in userspace.
func (p *pinger) wantTxStamps() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.txStamps.Load() {
		return
	}
	flags := unix.SOF_TIMESTAMPING_RX_SOFTWARE | unix.SOF_TIMESTAMPING_SOFTWARE | unix.SOF_TIMESTAMPING_TX_SOFTWARE
	if unix.SetsockoptInt(p.fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPING, flags) == nil {
		p.txStamps.Store(true)
	}
}

// sendTries bounds the resends of an echo whose send failed with another echo's pending
// ICMP error (see send).
const sendTries = 8

// send transmits one echo request to dst and returns it pending.
func (p *pinger) send(dst netip.Addr, c *echoCounters) (*echo, error) {
	e := &echo{dst: dst.WithZone(""), counters: c, done: make(chan struct{}), ttl: -1}
	if _, err := rand.Read(e.nonce[:]); err != nil {
		return nil, err
	}
	p.mu.Lock()
	// Sequence numbers run on from a random start; one still pending or remembered is
	// skipped, so no two echoes of this socket are ever confused.
	free := false
	for range 65536 {
		s := p.nextSeq
		p.nextSeq++
		if p.pending[s] == nil && p.recent[s] == nil {
			e.seq, free = s, true
			break
		}
	}
	if !free {
		p.mu.Unlock()
		return nil, errors.New("all 65536 echo sequence numbers are in flight or recently used")
	}
	p.pending[e.seq] = e
	p.mu.Unlock()

	sa, err := sockaddrOf(netip.AddrPortFrom(dst, 0))
	if err == nil {
		pkt := buildEcho(p.key.v6, p.id, e.seq, p.payload(e))
		e.sentMono, e.sentWall = wire.Monotonic(), time.Now()
		err = unix.Sendto(p.fd, pkt, 0, sa)
		// An echo socket records each ICMP error it queues as the socket's pending error
		// too, and the next send fails with it, whichever echo it belonged to; each read
		// of the error queue sets it again while ICMP errors remain queued behind. A send
		// that failed cleared it: a real local error (a prohibit route) fails every time,
		// a pending one of another echo does not for long.
		for try := 0; try < sendTries && err != nil && isAsyncICMPErrno(err); try++ {
			e.sentMono, e.sentWall = wire.Monotonic(), time.Now()
			err = unix.Sendto(p.fd, pkt, 0, sa)
		}
	}
	if err != nil {
		p.mu.Lock()
		delete(p.pending, e.seq)
		p.mu.Unlock()
		return nil, err
	}
	return e, nil
}

// payload is an echo's data: the socket's nonce, the echo's nonce, then a fixed pattern.
func (p *pinger) payload(e *echo) []byte {
	b := make([]byte, echoPayloadLen)
	copy(b[0:8], p.nonce[:])
	copy(b[8:16], e.nonce[:])
	for i := 16; i < len(b); i++ {
		b[i] = byte(i)
	}
	return b
}

// staleSeq says whether events of the echo numbered seq are no attempt's any more: its
// attempt has taken its events (collected), or it is too old to be remembered.
func (p *pinger) staleSeq(seq uint16) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pending[seq] != nil {
		return false
	}
	e := p.recent[seq]
	return e == nil || e.collected
}

// collected marks echoes whose attempt has taken its events.
func (p *pinger) collected(echoes []*echo) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range echoes {
		e.collected = true
	}
}

// finish retires an attempt's echoes: they stop being pending, and are remembered a while
// so that their duplicates and late replies are known as such.
func (p *pinger) finish(echoes []*echo) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range echoes {
		if p.pending[e.seq] != e {
			continue
		}
		delete(p.pending, e.seq)
		if p.ringLen == recentSeqs {
			delete(p.recent, p.ring[p.ringPos])
		} else {
			p.ringLen++
		}
		p.ring[p.ringPos] = e.seq
		p.ringPos = (p.ringPos + 1) % recentSeqs
		p.recent[e.seq] = e
	}
}

// read is the socket's only reader. It drains the receive queue (replies, and errors on
// raw sockets) and the error queue (errors on ping sockets, transmit timestamps) whenever
// the poller says either has something, until the socket is closed.
func (p *pinger) read() {
	defer close(p.done)
	rc, err := p.f.SyscallConn()
	if err != nil {
		return
	}
	buf, oob := make([]byte, 2048), make([]byte, 512)
	errBuf, errOOB := make([]byte, 256), make([]byte, 256)
	// The poller is edge-triggered: each wake-up must drain both queues to EAGAIN. Any other
	// error is a pending socket error (an ICMP error set it on a ping socket) that the
	// failed read has cleared; the queue behind it still holds packets.
	drain := func(fd, flags int, buf, oob []byte, handle func(b, oob []byte, from unix.Sockaddr)) {
		for range 1 << 16 {
			n, oobn, _, from, err := unix.Recvmsg(fd, buf, oob, flags|unix.MSG_DONTWAIT)
			if errors.Is(err, unix.EAGAIN) {
				return
			}
			if err == nil {
				handle(buf[:n], oob[:oobn], from)
			}
		}
	}
	_ = rc.Read(func(fd uintptr) bool {
		// Transmit timestamps first, so an echo's is recorded before its reply completes it.
		drain(int(fd), unix.MSG_ERRQUEUE, buf, oob, p.errQueued)
		drain(int(fd), 0, buf, oob, func(b, oob []byte, from unix.Sockaddr) {
			if p.txStamps.Load() {
				// A reply can be read in the same pass as its request's transmit stamp
				// was queued: read the stamp first. Only without TC, where stamps are on.
				drain(int(fd), unix.MSG_ERRQUEUE, errBuf, errOOB, p.errQueued)
			}
			p.received(b, oob, fromKey(from))
		})
		return false // wait for more; Close ends the wait
	})
}

// received handles one message from the receive queue.
func (p *pinger) received(b, oob []byte, from dstKey) {
	now := time.Now()
	m := parseRxOOB(oob)
	v6 := p.key.v6
	pkt, err := parseICMP(b, v6, p.raw && !v6)
	if m.ttl < 0 {
		m.ttl = pkt.TTL
	}
	src := from.addr
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		return
	}
	if !pkt.ChecksumOK {
		// Damaged on the way: ours if it carries our identifier (the damage may be
		// anywhere, but an identifier that matches by accident is one in 65536).
		if w := p.watches[from]; w != nil && pkt.IsEchoReply(v6) && pkt.ID == p.id {
			w.corrupt.Add(1)
		}
		return
	}
	switch {
	case pkt.IsEchoReply(v6):
		p.reply(pkt, from, now, m)
	case pkt.IsError(v6) && pkt.Quote != nil && pkt.Quote.ID == p.id:
		if e := p.pending[pkt.Quote.Seq]; e != nil && e.dst == pkt.Quote.Dst.WithZone("") {
			p.answer(e, now, m.at, -1, &echoError{typ: pkt.Type, code: pkt.Code, from: src})
		}
	}
}

// reply matches an echo reply to its request; p.mu is held.
func (p *pinger) reply(pkt icmpPacket, from dstKey, now time.Time, m rxMeta) {
	src := from.addr
	if pkt.ID != p.id || len(pkt.Payload) < 8 || !bytes.Equal(pkt.Payload[:8], p.nonce[:]) {
		// Another program's echo (another id), or another run that drew our id.
		if w := p.watches[from]; w != nil {
			w.foreign.Add(1)
		}
		return
	}
	if e := p.pending[pkt.Seq]; e != nil && e.dst == src {
		if !bytes.Equal(pkt.Payload, p.payload(e)) {
			e.counters.corrupt.Add(1) // ours, but the data came back wrong
			return
		}
		if e.answered {
			e.counters.duplicates.Add(1)
			return
		}
		p.answer(e, now, m.at, m.ttl, nil)
		return
	}
	if e := p.recent[pkt.Seq]; e != nil && e.dst == src && bytes.Equal(pkt.Payload, p.payload(e)) {
		if e.answered {
			e.counters.duplicates.Add(1)
		} else {
			e.counters.late.Add(1)
		}
	}
}

// answer records e's first answer; p.mu is held.
func (p *pinger) answer(e *echo, now, kernelAt time.Time, ttl int, ee *echoError) {
	if e.answered {
		return
	}
	e.answered, e.rxUser, e.rxKernel, e.ttl, e.err = true, now, kernelAt, ttl, ee
	close(e.done)
}

// errQueued handles one message from the error queue: a transmit timestamp, or (ping
// sockets) an ICMP error whose data is the echo request it answers.
func (p *pinger) errQueued(b, oob []byte, from unix.Sockaddr) {
	now := time.Now()
	m := parseRxOOB(oob)
	if m.ee == nil {
		return
	}
	v6 := p.key.v6
	p.mu.Lock()
	defer p.mu.Unlock()
	if m.ee.Origin == eeOriginTimestamping {
		if id, seq, ok := echoTail(b, echoHeaderLen+echoPayloadLen, v6); ok && id == p.id {
			if e := p.pending[seq]; e != nil && e.txKernel.IsZero() {
				e.txKernel = m.ee.At
			}
		}
		return
	}
	if !m.ee.IsICMP() || len(b) < echoHeaderLen {
		return
	}
	seq := binary.BigEndian.Uint16(b[6:8])
	e := p.pending[seq]
	if e == nil {
		return
	}
	if dst := addrPortOf(from).Addr(); dst.IsValid() && dst.Unmap().WithZone("") != e.dst {
		return
	}
	p.answer(e, now, m.ee.At, -1, &echoError{typ: m.ee.Type, code: m.ee.Code, from: m.ee.Offender})
}

package probe

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"golang.org/x/sys/unix"

	"reachd/pkg/verdict"
	"reachd/pkg/wire"
)

// echoHopper sends a failed echo attempt's request again, hop by hop, from a raw socket
// of its own (the shared pinger's identifier is in use), keeping the attempt's checksum.
type echoHopper struct {
	a     Attempt
	e     *rawEcho
	probe []byte // the attempt's first echo request, as sent
	wf    *wire.Flow
}

func newEchoHopper(a Attempt, probe []byte) (hopper, error) {
	e, err := openRawEcho(a, "an icmp path trace")
	if err != nil {
		return nil, err
	}
	h := &echoHopper{a: a, e: e, probe: probe}
	if a.Wire != nil && a.Wire.HasTC() {
		h.wf = watchTraceEcho(a, e)
	}
	return h, nil
}

// watchTraceEcho registers the trace's echoes with TC under an identifier no other flow
// from its source to the target holds (a pinger's, another trace's): the socket's, else
// another one picked at random (the raw socket sends whatever identifier it is given).
// Nil when TC cannot watch them: the hops are then timed in userspace.
func watchTraceEcho(a Attempt, e *rawEcho) *wire.Flow {
	rt, err := attemptRoute(a)
	if err != nil || rt.LinkIndex == 0 || a.Wire.Attach(rt.LinkIndex) != nil {
		return nil
	}
	src := a.Source
	if !src.IsValid() {
		src = rt.Src
	}
	if !src.IsValid() {
		return nil // no key TC could match
	}
	proto := uint8(wire.ProtoICMP)
	if e.v6 {
		proto = wire.ProtoICMPv6
	}
	for range 4 {
		f, err := a.Wire.RegisterNew(proto, netip.AddrPortFrom(src.WithZone(""), e.id), netip.AddrPortFrom(a.Addr.Addr().WithZone(""), 0))
		if !errors.Is(err, wire.ErrFlowTaken) {
			return f
		}
		idb, err := random(2)
		if err != nil {
			return nil
		}
		e.id = binary.BigEndian.Uint16(idb)
	}
	return nil
}

func (h *echoHopper) close() {
	if h.wf != nil {
		h.wf.Close()
	}
	h.e.close()
}

// traceEcho is the echo request of hop seq: the probe's data with its first word changed
// so that the one's complement sum, and so the checksum, is the probe's whatever the
// identifier and sequence (RFC 1071: the sum of 16-bit words, end-around carry). A probe
// with less than a word of data keeps its data; its checksum then differs.
func traceEcho(v6 bool, probe []byte, id, seq uint16) []byte {
	data := append([]byte(nil), probe[echoHeaderLen:]...)
	if len(data) >= 2 {
		w := onesAdd(binary.BigEndian.Uint16(data), binary.BigEndian.Uint16(probe[4:6]))
		w = onesAdd(w, binary.BigEndian.Uint16(probe[6:8]))
		w = onesAdd(w, ^id)
		w = onesAdd(w, ^seq)
		binary.BigEndian.PutUint16(data, w)
	}
	return buildEcho(v6, id, seq, data)
}

// onesAdd is one's complement addition of 16-bit words.
func onesAdd(a, b uint16) uint16 {
	s := uint32(a) + uint32(b)
	return uint16(s&0xffff + s>>16)
}

func (h *echoHopper) hop(ctx context.Context, ttl int, wait time.Duration) (hopAnswer, error) {
	ans := hopAnswer{Hop: verdict.Hop{N: ttl}}
	if err := setHopLimit(h.e.fd, h.e.v6, ttl); err != nil {
		return ans, err
	}
	// The sequence says which hop an answer is for: a late answer to an earlier hop is not
	// this hop's.
	seq := binary.BigEndian.Uint16(h.probe[6:8]) + uint16(ttl)
	if h.wf != nil {
		h.wf.Discard() // the earlier hops' events: this hop's are timed alone
	}
	sent := time.Now()
	if _, err := unix.Write(h.e.fd, traceEcho(h.e.v6, h.probe, h.e.id, seq)); err != nil {
		return ans, fmt.Errorf("send the echo request: %w", err)
	}
	target := h.a.Addr.Addr().WithZone("")
	buf := make([]byte, 1500)
	until := sent.Add(wait)
	for _, ok := pollReady(ctx, h.e.fd, unix.POLLIN, until); ok && ans.Addr == ""; _, ok = pollReady(ctx, h.e.fd, unix.POLLIN, until) {
		// A connected raw socket is handed the target's packets; routers' errors reach
		// it through the error queue, with the echo they quote.
		for _, q := range drainErrQueue(h.e.fd) {
			if h.e.quotes(q, seq) {
				ans = icmpHop(ans, q, target, time.Since(sent))
			}
		}
		if ans.Addr == "" && h.e.replied(buf, seq) {
			ans.Addr, ans.RTTMs = target.String(), verdict.MsPtr(time.Since(sent))
			ans.reached, ans.final = true, true
		}
	}
	if ans.Addr != "" && h.wf != nil {
		ans.wire = wireHopTime(h.wf, &ans.Hop, wire.EvEchoRequest, func(e wire.Event) bool {
			k := wire.EventKind(e.Kind)
			return e.Egress == 0 && e.Seq == uint32(seq) && (k == wire.EvEchoReply || k == wire.EvICMPError)
		})
	}
	return ans, nil
}

package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// fuzzFlows are the flows registered for FuzzTCParser, with their tokens.
var fuzzFlows = []struct {
	proto         uint8
	local, remote netip.AddrPort
	token         uint64
}{
	{ProtoTCP, ap(cli4, 40000), ap(srv4, 80), 1},
	{ProtoUDP, ap(cli4, 40003), ap(srv4, 53), 2},
	{ProtoICMP, ap(cli4, 4242), ap(srv4, 0), 3},
	{ProtoTCP, ap(cli6, 40001), ap(srv6, 443), 4},
	{ProtoICMPv6, ap(cli6, 4243), ap(srv6, 0), 5},
	{ProtoUDP, ap(cli6, 40004), ap(srv6, 53), 6},
}

// fuzzGate is the payload gate the fuzzer's programs run with.
var fuzzGate [65536]byte

var fuzzObjs struct {
	once  sync.Once
	objs  *Objects
	rd    *ringbuf.Reader
	flows map[FlowKey]uint64
	err   error
}

// fuzzSetup loads the programs once per fuzzing process and registers fuzzFlows.
func fuzzSetup(t testing.TB) (*Objects, *ringbuf.Reader, map[FlowKey]uint64) {
	t.Helper()
	o := &fuzzObjs
	o.once.Do(func() {
		if o.objs, o.err = LoadObjects(); o.err != nil {
			return
		}
		if o.rd, o.err = ringbuf.NewReader(o.objs.Events); o.err != nil {
			return
		}
		o.flows = map[FlowKey]uint64{}
		for _, f := range fuzzFlows {
			k, err := Key(f.proto, f.local, f.remote)
			if err == nil {
				err = o.objs.Flows.Put(k, f.token)
			}
			if err != nil {
				o.err = err
				return
			}
			o.flows[k] = f.token
			// The IPv6 TCP flow's payload is watched; the IPv4 one's gate slot is open
			// with no watch behind it (another flow's ports colliding), which must cost a
			// lookup and emit nothing.
			if f.proto == ProtoTCP {
				if f.local.Addr().Is6() {
					w := tcWirePayloadWatch{Token: f.token, MaxTx: 1 << 31, MaxRx: 1 << 31}
					if o.err = o.objs.PayloadFlows.Put(&k, &w); o.err != nil {
						return
					}
					modelPayload[k] = true
				}
				fuzzGate[k.Lport^k.Rport] = 1
			}
		}
		if o.err = o.objs.PayloadGate.Set(fuzzGate); o.err == nil {
			o.err = o.objs.PayloadAny.Set(uint8(1))
		}
	})
	if o.err != nil {
		if os.Geteuid() != 0 && os.Getenv("CI") != "true" {
			t.Skipf("needs CAP_BPF and CAP_NET_ADMIN: %v", o.err)
		}
		t.Fatal(o.err)
	}
	return o.objs, o.rd, o.flows
}

// runNow feeds pkt to prog and returns the events it emitted, without waiting: the
// program has written them to the ring by the time Run returns. ok is false when the kernel
// refused the input before running the program (BPF_PROG_TEST_RUN wants the IP header of
// an IP ethertype whole).
func runNow(t *testing.T, prog *ebpf.Program, rd *ringbuf.Reader, pkt []byte) (evs []Event, ok bool) {
	ret, err := prog.Run(&ebpf.RunOptions{Data: pkt})
	if errors.Is(err, unix.EINVAL) {
		return nil, false
	}
	if err != nil {
		t.Fatalf("prog.Run (%d bytes): %v", len(pkt), err)
	}
	if int32(ret) != -1 {
		t.Fatalf("program returned %d, want -1 (TC_ACT_UNSPEC)", int32(ret))
	}
	rd.SetDeadline(time.Now())
	for {
		rec, err := rd.Read()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return evs, true
		}
		if err != nil {
			t.Fatal(err)
		}
		var e Event
		if err := binary.Read(bytes.NewReader(rec.RawSample), binary.NativeEndian, &e); err != nil {
			t.Fatal(err)
		}
		evs = append(evs, e)
	}
}

// FuzzTCParser runs the TC programs (through BPF_PROG_TEST_RUN) and their Go model on the
// same frame, both directions, for devices with and without an Ethernet header: the same
// event, or none from either.
func FuzzTCParser(f *testing.F) {
	syn := func(v6 bool) []byte {
		if v6 {
			return append(eth(0x86dd), ipv6(cli6, srv6, 6, tcp(40001, 443, flagSYN, 7, 0))...)
		}
		return append(eth(0x0800), ipv4(cli4, srv4, 6, tcp(40000, 80, flagSYN, 7, 0), nil, 0)...)
	}
	f.Add(syn(false))
	f.Add(syn(true))
	// Payload segments of the watched IPv6 flow, both ways, and of the unwatched IPv4 one.
	f.Add(append(eth(0x86dd), ipv6(cli6, srv6, 6, append(tcp(40001, 443, flagACK|0x08, 8, 10), []byte("GET / HTTP/1.1\r\n")...))...))
	f.Add(append(eth(0x86dd), ipv6(srv6, cli6, 6, append(tcp(443, 40001, flagACK, 10, 24), []byte("HTTP/1.1 200 OK")...), extHdr(60, 0))...))
	f.Add(append(eth(0x0800), ipv4(cli4, srv4, 6, append(tcp(40000, 80, flagACK, 8, 10), []byte("GET")...), nil, 0)...))
	f.Add(append(eth(0x0800, 100), ipv4(srv4, cli4, 6, tcp(80, 40000, flagSYN|flagACK, 9, 8), nil, 0)...))
	f.Add(append(eth(0x0800), ipv4(cli4, srv4, 17, udp(40003, 53, []byte("q")), []byte{1, 1, 1, 0}, 0x2000)...))
	f.Add(append(eth(0x86dd), ipv6(srv6, cli6, 17, udp(53, 40004, []byte("a")), fragHdr(0, true))...))
	f.Add(append(eth(0x0800), ipv4(cli4, srv4, 1, echo(8, 4242, 3), nil, 0)...))
	f.Add(append(eth(0x86dd), ipv6(srv6, cli6, 58, echo(129, 4243, 4), extHdr(60, 0))...))
	f.Add(append(eth(0x0800), ipv4(rtr4, cli4, 1, icmpMsg(3, 13, nil, ipv4(cli4, srv4, 6, tcp(40000, 80, flagSYN, 1, 0), nil, 0)[:28]), nil, 0)...))
	f.Add(append(eth(0x0800), ipv4(rtr4, cli4, 1, icmpMsg(11, 0, nil, ipv4(cli4, srv4, 1, echo(8, 4242, 5), nil, 0)[:28]), nil, 0)...))
	f.Add(append(eth(0x86dd), ipv6(rtr6, cli6, 58, icmpMsg(1, 3, nil, ipv6(cli6, srv6, 17, udp(40004, 53, nil), extHdr(0, 0))))...))
	f.Add(append(eth(0x86dd), ipv6(rtr6, cli6, 58, icmpMsg(2, 0, []byte{0, 0, 5, 0}, ipv6(cli6, srv6, 58, echo(128, 4243, 6))))...))
	// For the L3 programs: an IPv6 packet whose bytes 12-13 (in its source address) read
	// 0x86dd, the type BPF_PROG_TEST_RUN then gives it.
	l3src := netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 0x86, 0xdd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2})
	f.Add(ipv6(l3src, srv6, 6, tcp(40001, 443, flagSYN, 7, 0)))
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) < 14 || len(frame) > 1500 {
			return // BPF_PROG_TEST_RUN wants a whole Ethernet header; a frame fits an MTU
		}
		objs, rd, flows := fuzzSetup(t)
		for _, dir := range []struct {
			prog   *ebpf.Program
			egress bool
			model  func([]byte, bool, map[FlowKey]uint64) (modelEvent, bool)
		}{
			{objs.ReachdTcIngress, false, modelTC}, {objs.ReachdTcEgress, true, modelTC},
			{objs.ReachdTcIngressL3, false, modelTCL3}, {objs.ReachdTcEgressL3, true, modelTCL3},
		} {
			got, ran := runNow(t, dir.prog, rd, frame)
			if !ran {
				continue
			}
			want, ok := dir.model(frame, dir.egress, flows)
			switch {
			case !ok && len(got) == 0:
			case ok != (len(got) == 1) || len(got) > 1:
				t.Fatalf("egress=%v: the program emitted %d event(s), the model %v\n%x", dir.egress, len(got), ok, frame)
			default:
				if diff := compareEvent(got[0], want); diff != "" {
					t.Fatalf("egress=%v: %s\n%x", dir.egress, diff, frame)
				}
			}
		}
	})
}

func compareEvent(e Event, m modelEvent) string {
	var from netip.Addr
	if m.kind == EvICMPError {
		from = e.FromAddr()
	}
	switch {
	case EventKind(e.Kind) != m.kind || e.Token != m.token:
		return fmt.Sprintf("kind %d token %d, the model's %d %d", e.Kind, e.Token, m.kind, m.token)
	case (e.Egress == 1) != m.egress || e.Seq != m.seq || e.Key.Family != m.keyFamily:
		return fmt.Sprintf("egress %d seq %d family %d, the model's %v %d %d", e.Egress, e.Seq, e.Key.Family, m.egress, m.seq, m.keyFamily)
	case m.kind == EvSYN || m.kind == EvSYNACK || m.kind == EvRST || m.kind == EvDataTx || m.kind == EvDataRx:
		if e.Ack != m.ack || e.Len != m.length {
			return fmt.Sprintf("TCP ack %d len %d, the model's %d %d", e.Ack, e.Len, m.ack, m.length)
		}
	case e.IcmpType != m.itype || e.IcmpCode != m.icode:
		return "ICMP type/code differ from the model's"
	case m.kind == EvICMPError && from != m.from:
		return fmt.Sprintf("the error's sender %s, the model's %s", from, m.from)
	}
	return ""
}

package wire

import (
	"fmt"
	"net/netip"
	"os"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
)

// requireBPF loads the objects, skipping without privileges except under CI=true, where a
// skip would hide that the programs never went through the verifier.
func requireBPF(t *testing.T) (*Objects, *ringbuf.Reader) {
	t.Helper()
	objs, err := LoadObjects()
	if err != nil {
		if os.Geteuid() != 0 && os.Getenv("CI") != "true" {
			t.Skipf("needs CAP_BPF and CAP_NET_ADMIN: %v", err)
		}
		t.Fatal(err)
	}
	rd, err := ringbuf.NewReader(objs.Events)
	if err != nil {
		objs.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { rd.Close(); objs.Close() })
	return objs, rd
}

func register(t *testing.T, objs *Objects, proto uint8, local, remote netip.AddrPort, token uint64) {
	t.Helper()
	k, err := Key(proto, local, remote)
	if err != nil {
		t.Fatal(err)
	}
	if err := objs.Flows.Put(k, token); err != nil {
		t.Fatal(err)
	}
}

// run feeds pkt to prog and returns the events it emitted.
func run(t *testing.T, prog *ebpf.Program, rd *ringbuf.Reader, pkt []byte) []Event {
	t.Helper()
	evs, ran := runNow(t, prog, rd, pkt)
	if !ran {
		t.Fatalf("prog.Run (%d bytes): the kernel refused the input", len(pkt))
	}
	return evs
}

func one(t *testing.T, evs []Event, kind EventKind, token uint64) Event {
	t.Helper()
	if len(evs) != 1 {
		t.Fatalf("%d events, want 1", len(evs))
	}
	e := evs[0]
	if EventKind(e.Kind) != kind || e.Token != token || e.TsNs == 0 {
		t.Fatalf("event kind %d token %d ts %d, want kind %d token %d", e.Kind, e.Token, e.TsNs, kind, token)
	}
	return e
}

func ap(a netip.Addr, p uint16) netip.AddrPort { return netip.AddrPortFrom(a, p) }

func TestTCPHandshakeEvents(t *testing.T) {
	objs, rd := requireBPF(t)
	in, out := objs.ReachdTcIngress, objs.ReachdTcEgress
	register(t, objs, ProtoTCP, ap(cli4, 40000), ap(srv4, 80), 7)
	register(t, objs, ProtoTCP, ap(cli6, 40001), ap(srv6, 443), 8)

	e := one(t, run(t, out, rd, append(eth(0x0800), ipv4(cli4, srv4, 6, tcp(40000, 80, flagSYN, 1000, 0), nil, 0)...)), EvSYN, 7)
	if e.Seq != 1000 || e.Egress != 1 {
		t.Errorf("SYN seq %d egress %d", e.Seq, e.Egress)
	}
	e = one(t, run(t, in, rd, append(eth(0x0800), ipv4(srv4, cli4, 6, tcp(80, 40000, flagSYN|flagACK, 5000, 1001), nil, 0)...)), EvSYNACK, 7)
	if e.Ack != 1001 || e.Egress != 0 {
		t.Errorf("SYN-ACK ack %d egress %d", e.Ack, e.Egress)
	}
	one(t, run(t, in, rd, append(eth(0x0800), ipv4(srv4, cli4, 6, tcp(80, 40000, flagRST|flagACK, 0, 1001), nil, 0)...)), EvRST, 7)
	// IPv4 options are skipped by the header length.
	one(t, run(t, out, rd, append(eth(0x0800), ipv4(cli4, srv4, 6, tcp(40000, 80, flagSYN, 1, 0), []byte{1, 1, 1, 0}, 0)...)), EvSYN, 7)
	// IPv6, plain and behind hop-by-hop + destination options + routing headers.
	one(t, run(t, out, rd, append(eth(0x86dd), ipv6(cli6, srv6, 6, tcp(40001, 443, flagSYN, 1, 0))...)), EvSYN, 8)
	one(t, run(t, in, rd, append(eth(0x86dd), ipv6(srv6, cli6, 6, tcp(443, 40001, flagSYN|flagACK, 1, 2), extHdr(0, 0), extHdr(60, 1), extHdr(43, 0))...)), EvSYNACK, 8)
	// 802.1Q and 802.1ad + 802.1Q tags.
	one(t, run(t, out, rd, append(eth(0x0800, 0x8100), ipv4(cli4, srv4, 6, tcp(40000, 80, flagSYN, 1, 0), nil, 0)...)), EvSYN, 7)
	one(t, run(t, in, rd, append(eth(0x86dd, 0x88a8, 0x8100), ipv6(srv6, cli6, 6, tcp(443, 40001, flagRST, 0, 0))...)), EvRST, 8)
}

func TestUnrelatedTrafficEmitsNothing(t *testing.T) {
	objs, rd := requireBPF(t)
	in, out := objs.ReachdTcIngress, objs.ReachdTcEgress
	register(t, objs, ProtoTCP, ap(cli4, 40000), ap(srv4, 80), 7)
	other := netip.MustParseAddr("203.0.113.99")
	pkts := map[string]struct {
		prog *ebpf.Program
		pkt  []byte
	}{
		"unregistered SYN":        {out, append(eth(0x0800), ipv4(cli4, other, 6, tcp(40000, 80, flagSYN, 1, 0), nil, 0)...)},
		"other port":              {out, append(eth(0x0800), ipv4(cli4, srv4, 6, tcp(40002, 80, flagSYN, 1, 0), nil, 0)...)},
		"SYN seen on ingress":     {in, append(eth(0x0800), ipv4(srv4, cli4, 6, tcp(80, 40000, flagSYN, 1, 0), nil, 0)...)},
		"data segment":            {in, append(eth(0x0800), ipv4(srv4, cli4, 6, tcp(80, 40000, flagACK, 1, 0), nil, 0)...)},
		"ARP":                     {in, append(eth(0x0806), make([]byte, 28)...)},
		"unregistered echo":       {out, append(eth(0x0800), ipv4(cli4, srv4, 1, echo(8, 99, 1), nil, 0)...)},
		"unregistered ICMP error": {in, append(eth(0x0800), ipv4(rtr4, cli4, 1, icmpMsg(3, 1, nil, ipv4(cli4, other, 6, tcp(1, 2, flagSYN, 0, 0), nil, 0)[:28]), nil, 0)...)},
	}
	for name, p := range pkts {
		if evs := run(t, p.prog, rd, p.pkt); len(evs) != 0 {
			t.Errorf("%s: %d events", name, len(evs))
		}
	}
}

func TestEchoEvents(t *testing.T) {
	objs, rd := requireBPF(t)
	in, out := objs.ReachdTcIngress, objs.ReachdTcEgress
	register(t, objs, ProtoICMP, ap(cli4, 4242), ap(srv4, 0), 11)
	register(t, objs, ProtoICMPv6, ap(cli6, 4243), ap(srv6, 0), 12)
	e := one(t, run(t, out, rd, append(eth(0x0800), ipv4(cli4, srv4, 1, echo(8, 4242, 17), nil, 0)...)), EvEchoRequest, 11)
	if e.Seq != 17 {
		t.Errorf("echo seq %d", e.Seq)
	}
	one(t, run(t, in, rd, append(eth(0x0800), ipv4(srv4, cli4, 1, echo(0, 4242, 17), nil, 0)...)), EvEchoReply, 11)
	one(t, run(t, out, rd, append(eth(0x86dd), ipv6(cli6, srv6, 58, echo(128, 4243, 1))...)), EvEchoRequest, 12)
	one(t, run(t, in, rd, append(eth(0x86dd), ipv6(srv6, cli6, 58, echo(129, 4243, 1), extHdr(60, 0))...)), EvEchoReply, 12)
}

func TestICMPErrorsMatchQuotedHeader(t *testing.T) {
	objs, rd := requireBPF(t)
	in := objs.ReachdTcIngress
	register(t, objs, ProtoTCP, ap(cli4, 40000), ap(srv4, 80), 21)
	register(t, objs, ProtoUDP, ap(cli4, 40003), ap(srv4, 53), 22)
	register(t, objs, ProtoICMP, ap(cli4, 4242), ap(srv4, 0), 23)
	register(t, objs, ProtoTCP, ap(cli6, 40001), ap(srv6, 443), 24)
	register(t, objs, ProtoICMPv6, ap(cli6, 4243), ap(srv6, 0), 25)

	syn4 := ipv4(cli4, srv4, 6, tcp(40000, 80, flagSYN, 1, 0), nil, 0)[:28] // IP header + 8 bytes, as RFC 792 quotes
	cases := []struct {
		name      string
		pkt       []byte
		token     uint64
		typ, code uint8
		from      netip.Addr
	}{
		{"v4 admin prohibited", append(eth(0x0800), ipv4(rtr4, cli4, 1, icmpMsg(3, 13, nil, syn4), nil, 0)...), 21, 3, 13, rtr4},
		{"v4 host unreachable", append(eth(0x0800), ipv4(rtr4, cli4, 1, icmpMsg(3, 1, nil, syn4), nil, 0)...), 21, 3, 1, rtr4},
		{"v4 frag needed", append(eth(0x0800), ipv4(rtr4, cli4, 1, icmpMsg(3, 4, nil, syn4), nil, 0)...), 21, 3, 4, rtr4},
		{"v4 time exceeded", append(eth(0x0800), ipv4(rtr4, cli4, 1, icmpMsg(11, 0, nil, syn4), nil, 0)...), 21, 11, 0, rtr4},
		{"v4 port unreachable (UDP)", append(eth(0x0800), ipv4(srv4, cli4, 1, icmpMsg(3, 3, nil, ipv4(cli4, srv4, 17, udp(40003, 53, nil), nil, 0)), nil, 0)...), 22, 3, 3, srv4},
		{"v4 unreachable quoting an echo", append(eth(0x0800), ipv4(rtr4, cli4, 1, icmpMsg(3, 0, nil, ipv4(cli4, srv4, 1, echo(8, 4242, 77), nil, 0)[:28]), nil, 0)...), 23, 3, 0, rtr4},
		{"v6 admin prohibited", append(eth(0x86dd), ipv6(rtr6, cli6, 58, icmpMsg(1, 1, nil, ipv6(cli6, srv6, 6, tcp(40001, 443, flagSYN, 1, 0))))...), 24, 1, 1, rtr6},
		{"v6 address unreachable", append(eth(0x86dd), ipv6(rtr6, cli6, 58, icmpMsg(1, 3, nil, ipv6(cli6, srv6, 6, tcp(40001, 443, flagSYN, 1, 0))))...), 24, 1, 3, rtr6},
		{"v6 packet too big", append(eth(0x86dd), ipv6(rtr6, cli6, 58, icmpMsg(2, 0, []byte{0, 0, 5, 0}, ipv6(cli6, srv6, 6, tcp(40001, 443, flagSYN, 1, 0))))...), 24, 2, 0, rtr6},
		{"v6 hop limit exceeded", append(eth(0x86dd), ipv6(rtr6, cli6, 58, icmpMsg(3, 0, nil, ipv6(cli6, srv6, 6, tcp(40001, 443, flagSYN, 1, 0))))...), 24, 3, 0, rtr6},
		{"v6 error quoting an echo", append(eth(0x86dd), ipv6(rtr6, cli6, 58, icmpMsg(1, 0, nil, ipv6(cli6, srv6, 58, echo(128, 4243, 78))))...), 25, 1, 0, rtr6},
		{"v6 quote with ext header", append(eth(0x86dd), ipv6(rtr6, cli6, 58, icmpMsg(1, 1, nil, ipv6(cli6, srv6, 6, tcp(40001, 443, flagSYN, 1, 0), extHdr(60, 0))))...), 24, 1, 1, rtr6},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := one(t, run(t, in, rd, c.pkt), EvICMPError, c.token)
			if e.IcmpType != c.typ || e.IcmpCode != c.code || e.FromAddr() != c.from {
				t.Errorf("type %d code %d from %s, want %d %d %s", e.IcmpType, e.IcmpCode, e.FromAddr(), c.typ, c.code, c.from)
			}
			// The quoted packet's sequence tells apart the errors of concurrent attempts
			// that share a flow (echoes to one destination).
			wantSeq := map[uint64]uint32{21: 1, 22: 0, 23: 77, 24: 1, 25: 78}[c.token]
			if e.Seq != wantSeq {
				t.Errorf("seq %d, want the quoted packet's %d", e.Seq, wantSeq)
			}
		})
	}
}

func TestMalformedPacketsEmitNothing(t *testing.T) {
	objs, rd := requireBPF(t)
	in, out := objs.ReachdTcIngress, objs.ReachdTcEgress
	register(t, objs, ProtoTCP, ap(cli4, 40000), ap(srv4, 80), 31)
	register(t, objs, ProtoTCP, ap(cli6, 40001), ap(srv6, 443), 32)
	syn4 := append(eth(0x0800), ipv4(cli4, srv4, 6, tcp(40000, 80, flagSYN, 1, 0), nil, 0)...)
	syn6 := append(eth(0x86dd), ipv6(cli6, srv6, 6, tcp(40001, 443, flagSYN, 1, 0))...)
	badIHL := append([]byte{}, syn4...)
	badIHL[14] = 0x44 // IHL 4 < 5
	longIHL := append([]byte{}, syn4...)
	longIHL[14] = 0x4f // claims 60 bytes of header
	cases := map[string][]byte{
		"v4 later fragment":       append(eth(0x0800), ipv4(cli4, srv4, 6, tcp(40000, 80, flagSYN, 1, 0), nil, 0x0010)...),
		"v4 last fragment":        append(eth(0x0800), ipv4(cli4, srv4, 6, tcp(40000, 80, flagSYN, 1, 0), nil, 0x2010)...),
		"v6 later fragment":       append(eth(0x86dd), ipv6(cli6, srv6, 6, tcp(40001, 443, flagSYN, 1, 0), fragHdr(8, false))...),
		"v6 middle fragment":      append(eth(0x86dd), ipv6(cli6, srv6, 6, tcp(40001, 443, flagSYN, 1, 0), fragHdr(8, true))...),
		"v4 IHL < 5":              badIHL,
		"v4 IHL past the end":     longIHL[:14+24],
		"v6 too many ext headers": append(eth(0x86dd), ipv6(cli6, srv6, 6, tcp(40001, 443, flagSYN, 1, 0), extHdr(0, 0), extHdr(60, 0), extHdr(60, 0), extHdr(60, 0), extHdr(60, 0), extHdr(60, 0), extHdr(60, 0))...),
		"v6 ext header past end":  append(eth(0x86dd), ipv6(cli6, srv6, 6, tcp(40001, 443, flagSYN, 1, 0), extHdr(60, 30))...)[:14+40+16],
	}
	// BPF_PROG_TEST_RUN itself rejects packets shorter than their IP header, so the cuts
	// start there and walk through the L4 header.
	for cut := 14 + 20; cut < len(syn4); cut += 3 {
		cases[fmt.Sprintf("v4 SYN cut at %d", cut)] = syn4[:cut]
	}
	for cut := 14 + 40; cut < len(syn6); cut += 3 {
		cases[fmt.Sprintf("v6 SYN cut at %d", cut)] = syn6[:cut]
	}
	for name, pkt := range cases {
		if evs := run(t, out, rd, pkt); len(evs) != 0 {
			t.Errorf("%s: %d events", name, len(evs))
		}
		if evs := run(t, in, rd, pkt); len(evs) != 0 {
			t.Errorf("%s (ingress): %d events", name, len(evs))
		}
	}
	// The untouched packets do produce events: the cases above fail for their defect only.
	one(t, run(t, out, rd, syn4), EvSYN, 31)
	one(t, run(t, out, rd, syn6), EvSYN, 32)
}

// TestFirstFragmentsEmit: a first fragment carries the ports, so a large datagram (or its
// reply) is seen by its first fragment; an ICMP error may quote a first fragment too.
func TestFirstFragmentsEmit(t *testing.T) {
	objs, rd := requireBPF(t)
	in, out := objs.ReachdTcIngress, objs.ReachdTcEgress
	register(t, objs, ProtoUDP, ap(cli4, 40003), ap(srv4, 53), 41)
	register(t, objs, ProtoUDP, ap(cli6, 40004), ap(srv6, 53), 42)
	big := make([]byte, 1200)
	first4 := ipv4(cli4, srv4, 17, udp(40003, 53, big), nil, 0x2000) // MF, offset 0
	one(t, run(t, out, rd, append(eth(0x0800), first4...)), EvUDPTx, 41)
	one(t, run(t, in, rd, append(eth(0x0800), ipv4(srv4, cli4, 17, udp(53, 40003, big), nil, 0x2000)...)), EvUDPRx, 41)
	one(t, run(t, out, rd, append(eth(0x86dd), ipv6(cli6, srv6, 17, udp(40004, 53, big), fragHdr(0, true))...)), EvUDPTx, 42)
	one(t, run(t, in, rd, append(eth(0x86dd), ipv6(srv6, cli6, 17, udp(53, 40004, big), fragHdr(0, true))...)), EvUDPRx, 42)
	// An error quoting the first fragment (IP header and 8 bytes of it, as RFC 792 asks).
	e := one(t, run(t, in, rd, append(eth(0x0800), ipv4(rtr4, cli4, 1, icmpMsg(3, 4, []byte{0, 0, 5, 0}, first4[:28]), nil, 0)...)), EvICMPError, 41)
	if e.IcmpType != 3 || e.IcmpCode != 4 {
		t.Errorf("type %d code %d, want frag needed", e.IcmpType, e.IcmpCode)
	}
}

// TestLostEventsCounted fills the ring buffer with nobody reading it: every event that did
// not fit is counted, none silently vanishes.
func TestLostEventsCounted(t *testing.T) {
	objs, _ := requireBPF(t)
	register(t, objs, ProtoTCP, ap(cli4, 40000), ap(srv4, 80), 9)
	syn := append(eth(0x0800), ipv4(cli4, srv4, 6, tcp(40000, 80, flagSYN, 1, 0), nil, 0)...)
	const runs = 20000 // 1 MiB ring, 96-byte events (+8 bytes header): about 10,000 fit
	if _, err := objs.ReachdTcEgress.Run(&ebpf.RunOptions{Data: syn, Repeat: runs}); err != nil {
		t.Fatal(err)
	}
	var perCPU []uint64
	if err := objs.LostEvents.Lookup(uint32(0), &perCPU); err != nil {
		t.Fatal(err)
	}
	var lost uint64
	for _, n := range perCPU {
		lost += n
	}
	ringCap := uint64(1<<20) / uint64(unsafe.Sizeof(Event{})+8)
	if lost == 0 || lost > runs || runs-lost > ringCap {
		t.Fatalf("%d of %d events counted lost; the ring holds about %d", lost, runs, ringCap)
	}
	t.Logf("%d of %d events lost to a full ring (it holds %d)", lost, runs, runs-lost)
}

// TestPayloadEvents: a watched flow's segments with payload are reported, each way up to
// its budget, with the payload length its headers give (an Ethernet frame's padding is
// not payload); its bare ACKs are not, nor are another flow's segments whose ports open
// the same gate slot.
func TestPayloadEvents(t *testing.T) {
	objs, rd := requireBPF(t)
	in, out := objs.ReachdTcIngress, objs.ReachdTcEgress
	register(t, objs, ProtoTCP, ap(cli4, 40000), ap(srv4, 80), 31)
	k, _ := Key(ProtoTCP, ap(cli4, 40000), ap(srv4, 80))
	if err := objs.PayloadFlows.Put(&k, &tcWirePayloadWatch{Token: 31, MaxTx: 1, MaxRx: 2}); err != nil {
		t.Fatal(err)
	}
	var gate [65536]byte
	gate[k.Lport^k.Rport] = 1
	if err := objs.PayloadGate.Set(gate); err != nil {
		t.Fatal(err)
	}
	if err := objs.PayloadAny.Set(uint8(1)); err != nil {
		t.Fatal(err)
	}
	seg := func(egress bool, seq uint32, payload []byte) []byte {
		if egress {
			return append(eth(0x0800), ipv4(cli4, srv4, 6, append(tcp(40000, 80, flagACK, seq, 1), payload...), nil, 0)...)
		}
		return append(eth(0x0800), ipv4(srv4, cli4, 6, append(tcp(80, 40000, flagACK, seq, 1), payload...), nil, 0)...)
	}
	e := one(t, run(t, out, rd, seg(true, 1001, []byte("GET / HTTP/1.1\r\n\r\n"))), EvDataTx, 31)
	if e.Seq != 1001 || e.Len != 18 || e.Egress != 1 {
		t.Errorf("request segment: seq %d len %d egress %d", e.Seq, e.Len, e.Egress)
	}
	if evs := run(t, out, rd, seg(true, 1019, []byte("more"))); len(evs) != 0 {
		t.Errorf("past the egress budget of 1: %d events", len(evs))
	}
	if evs := run(t, in, rd, seg(false, 5001, nil)); len(evs) != 0 {
		t.Errorf("a bare ACK: %d events", len(evs))
	}
	padded := append(seg(false, 5001, []byte("HTTP")), make([]byte, 6)...) // a short frame, padded
	if e := one(t, run(t, in, rd, padded), EvDataRx, 31); e.Len != 4 || e.Seq != 5001 {
		t.Errorf("response segment: seq %d len %d, want 5001 4", e.Seq, e.Len)
	}
	one(t, run(t, in, rd, seg(false, 5005, []byte("/1.1"))), EvDataRx, 31)
	if evs := run(t, in, rd, seg(false, 5009, []byte(" 200"))); len(evs) != 0 {
		t.Errorf("past the ingress budget of 2: %d events", len(evs))
	}
	// Same ports, another server: the gate is open for them, the watch is not.
	other := append(eth(0x0800), ipv4(netip.MustParseAddr("203.0.113.99"), cli4, 6, append(tcp(80, 40000, flagACK, 1, 1), []byte("x")...), nil, 0)...)
	if evs := run(t, in, rd, other); len(evs) != 0 {
		t.Errorf("an unwatched flow behind an open gate: %d events", len(evs))
	}
}

package probe

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/sys/unix"

	"reachd/pkg/verdict"
	"reachd/pkg/wire"
)

// udpKind: datagrams on a connected socket (--count an attempt, --interval apart), and what
// came back: a reply (ok, if it meets the expectation), an ICMP error read from the error
// queue (IP_RECVERR: port unreachable means closed), or silence, which is open_filtered and
// never "closed": routers and hosts rate-limit ICMP errors.
var udpKind = register(&Kind{
	Name:    "udp",
	Order:   3,
	Summary: "UDP datagram: reply, ICMP error (port unreachable = closed) or silence (open_filtered)",
	Example: "  reachd probe udp 198.51.100.53:53\n" +
		"  reachd probe udp --payload ntp '[2001:db8::123]:123'\n" +
		"  reachd probe udp --payload-hex 0d0a --expect '^OK' 198.51.100.7:7000\n" +
		"  reachd probe udp --expect-closed 198.51.100.10:161",
	Needs:      Needs{Timestamps: true},
	NewOptions: func() KindOptions { return newUDPOptions() },
	run:        runUDP,
})

// UDPOptions are the udp kind's options.
type UDPOptions struct {
	Packets
	Payload      []byte         // --payload-hex
	PayloadSet   bool           // --payload-hex was given (it may be empty: an empty datagram)
	Builtin      string         // --payload NAME: a built-in request, checked against its answer
	Expect       *regexp.Regexp // --expect: matched against the reply's bytes
	ExpectHex    []byte         // --expect-hex: the reply must contain these bytes
	ExpectClosed bool           // --expect-closed: ok on port unreachable

	flags struct{ payloadHex, expect, expectHex string }
	// build makes each datagram's request, for a kind that speaks its own protocol over
	// the UDP machinery (dns); nil: the payload options say.
	build func(id uint16) (request, error)
}

func newUDPOptions() *UDPOptions {
	return &UDPOptions{Packets: Packets{Count: 1, Interval: time.Second}}
}

// MaxDatagram is the most a UDP datagram carries (IPv4).
const MaxDatagram = 65507

func (o *UDPOptions) AddFlags(fs *pflag.FlagSet) {
	o.Packets.AddFlags(fs)
	fs.StringVar(&o.flags.payloadHex, "payload-hex", "", "datagram payload, in hex (\"\" for an empty datagram)")
	fs.StringVar(&o.Builtin, "payload", "", "built-in request, whose answer must match it: "+strings.Join(Payloads(), ", ")+
		"\n(default: the request of the protocol the port is known for, else the text \"reachd\\n\")")
	fs.StringVar(&o.flags.expect, "expect", "", "regular expression the reply must match")
	fs.StringVar(&o.flags.expectHex, "expect-hex", "", "bytes (hex) the reply must contain")
	fs.BoolVar(&o.ExpectClosed, "expect-closed", false, "the port must be closed: ok on ICMP port unreachable")
}

// Check validates the options and turns the flags' text into bytes and a pattern.
func (o *UDPOptions) Check(set func(string) bool) error {
	if err := o.Packets.Check(); err != nil {
		return err
	}
	if o.Builtin != "" && !IsPayload(o.Builtin) {
		return fmt.Errorf("--payload %q: want one of %s (or --payload-hex for your own bytes)", o.Builtin, strings.Join(Payloads(), ", "))
	}
	o.PayloadSet = o.PayloadSet || set("payload-hex")
	if o.Builtin != "" && o.PayloadSet {
		return fmt.Errorf("--payload and --payload-hex exclude each other")
	}
	var err error
	if o.flags.payloadHex != "" {
		if o.Payload, err = ParseHex("--payload-hex", o.flags.payloadHex); err != nil {
			return err
		}
	}
	if len(o.Payload) > MaxDatagram {
		return fmt.Errorf("--payload-hex is %d bytes; a UDP datagram carries at most %d", len(o.Payload), MaxDatagram)
	}
	if o.flags.expectHex != "" {
		if o.ExpectHex, err = ParseHex("--expect-hex", o.flags.expectHex); err != nil {
			return err
		}
	}
	if o.flags.expect != "" {
		if o.Expect, err = regexp.Compile(o.flags.expect); err != nil {
			return fmt.Errorf("--expect %q is not a regular expression: %v", o.flags.expect, err)
		}
	}
	if o.ExpectClosed && (o.Expect != nil || len(o.ExpectHex) > 0) {
		return fmt.Errorf("--expect-closed wants no reply at all; it excludes --expect and --expect-hex")
	}
	return nil
}

// ParseHex accepts hex digits, optionally after 0x and separated by spaces or colons
// (0d0a, 0x0d0a, 0d:0a); flag names the option in the error.
func ParseHex(flag, s string) ([]byte, error) {
	clean := strings.NewReplacer(" ", "", ":", "").Replace(strings.TrimPrefix(s, "0x"))
	b, err := hex.DecodeString(clean)
	if err != nil {
		return nil, fmt.Errorf("%s %q is not hex: %v", flag, s, err)
	}
	return b, nil
}

// udpEvidence is what a UDP attempt tells beyond the common result.
type udpEvidence struct {
	stats  *verdict.Stats
	tx, rx time.Time // the first answered datagram (else the first sent) and its reply
	udp    *verdict.UDP
}

func (r *udpEvidence) fill(v *verdict.Verdict, since func(time.Time) *verdict.Millis) {
	w := wireOf(v)
	w.UDPTx, w.UDPRx = since(r.tx), since(r.rx)
	v.Stats, v.UDP = r.stats, r.udp
}

func runUDP(ctx context.Context, a Attempt) Result {
	o, _ := a.Opts.(*UDPOptions)
	if o == nil {
		o = newUDPOptions()
	}
	res, _ := udpExchange(ctx, a, o)
	return res
}

// udpExchange sends o's datagrams and classifies what came back; the connection holds the
// replies, for a kind that reads them further (dns). It is nil when nothing was sent.
func udpExchange(ctx context.Context, a Attempt, o *UDPOptions) (Result, *udpConn) {
	timeout, deadline := attemptTimes(ctx, a)
	f, fd, sa, res, ok := probeSocket(a, unix.SOCK_DGRAM, unix.IPPROTO_UDP)
	if !ok {
		return res, nil
	}
	defer f.Close()
	if res, ok := setupSocket(fd, a, sockDgramStamps); !ok {
		return res, nil
	}
	var flow *wire.Flow
	var note string
	if a.Wire != nil && a.Wire.HasTC() {
		if flow, note = registerFlow(fd, a, wire.ProtoUDP); flow != nil {
			defer flow.Close()
			defer flow.Reserve(2 * o.Count)()
		}
	}
	if err := unix.Connect(fd, sa); err != nil {
		return sendError("connect", err, a), nil
	}
	idBase, err := random(2)
	if err != nil {
		return fail(verdict.LocalError, err.Error()), nil
	}
	u := &udpConn{f: f, fd: fd, opts: o, dst: a.Addr, timeout: timeout, deadline: deadline,
		idBase: binary.BigEndian.Uint16(idBase)}
	sent, sendErr, early := sendAll(ctx, u, a, o.Packets, "datagram")
	if early != nil {
		return *early, u
	}
	var evs []wire.Event
	if flow != nil {
		evs = flow.Sync()
		slices.SortFunc(evs, func(x, y wire.Event) int { return int(int64(x.TsNs) - int64(y.TsNs)) })
	}
	res = u.result(evs, a, timeout)
	if sn, err := unix.Getsockname(fd); err == nil {
		res.Local, res.proto = addrPortOf(sn), unix.IPPROTO_UDP
	}
	if len(u.dgrams) > 0 {
		res.payload = append([]byte{}, u.dgrams[0].req.data...)
	}
	if sendErr != nil {
		res.Detail += fmt.Sprintf("; sending stopped after %d of %d datagrams: %v", sent, o.Count, sendErr)
	}
	if note != "" {
		res.Detail += "; " + note
	}
	return res, u
}

// result classifies the attempt: a reply, else the last ICMP error, else a reply that did
// not answer, else silence.
func (u *udpConn) result(evs []wire.Event, a Attempt, timeout time.Duration) Result {
	ev := &udpEvidence{stats: &verdict.Stats{Count: len(u.dgrams), Duplicates: u.extra, Late: u.late}}
	res := Result{sent: len(u.dgrams) > 0, Kind: ev}
	var replies []packetTiming
	var first, lastErr *dgram
	var errTiming packetTiming
	mismatch := ""
	for i, d := range u.dgrams {
		switch {
		case d.replied:
			t := u.clock(i).timing(evs)
			if first == nil {
				first, ev.tx, ev.rx = d, t.tx, t.rx
			}
			replies = append(replies, t)
		case d.err != nil:
			lastErr, errTiming = d, u.clock(i).timing(evs)
		case d.mismatch != "":
			mismatch = d.mismatch
		}
	}
	if len(u.dgrams) > 0 {
		// What went, also when nothing answered: a silent port may want another payload.
		ev.tx = u.dgrams[0].sentWall
		ev.udp = &verdict.UDP{Payload: u.dgrams[0].req.name, Sent: len(u.dgrams[0].req.data)}
	}
	res.RTT, res.TimingSource = summarise(ev.stats, replies)
	switch {
	case first != nil:
		t := replies[0]
		ev.tx, ev.rx = t.tx, t.rx
		ev.udp = &verdict.UDP{Payload: first.req.name, Sent: len(first.req.data), Received: len(first.reply), Reply: quoteBytes(first.reply, 64)}
		res.HasRTT = true
		res.Reason, res.Detail = u.replyVerdict(first, t.rtt, ev.stats)
	case lastErr != nil:
		res = u.errorResult(res, lastErr, errTiming, a)
	case mismatch != "":
		res.Reason, res.Detail = verdict.ProtocolMismatch, mismatch
	case len(u.dgrams) > 0:
		res.Reason, res.waited = verdict.OpenFiltered, timeout
		res.Detail = fmt.Sprintf("no reply or ICMP error within %s of %d datagram(s): open (and silent to this payload) or filtered; silence is never taken for closed",
			timeout.Round(time.Millisecond), len(u.dgrams))
		if n, ok := unresolvedNeighbor(a); ok {
			res.Reason, res.Layer = verdict.HostUnreachable, verdict.LayerLink
			res.Detail = fmt.Sprintf("%s; %d datagram(s) never left the link", n, len(u.dgrams))
		}
		if allSeenLeaving(evs, len(u.dgrams), func(ev wire.Event) bool { return wire.EventKind(ev.Kind) == wire.EvUDPTx }) {
			res.TimingSource = verdict.SourceWire
			res.Detail += " (all seen leaving on the wire)"
		}
	}
	return res
}

// replyVerdict judges the first reply against the expectations.
func (u *udpConn) replyVerdict(first *dgram, rtt time.Duration, st *verdict.Stats) (verdict.Reason, string) {
	o := u.opts
	what, unmet := first.req.describeReply(first.reply), o.expectation(first.reply)
	switch {
	case o.ExpectClosed:
		return verdict.ProtocolMismatch, fmt.Sprintf("--expect-closed, but the port answered: %s in %s", what, fmtRTT(rtt))
	case unmet != "":
		return verdict.BodyMismatch, unmet
	case len(u.dgrams) > 1:
		return verdict.OK, statsDetail(st, "datagrams answered")
	}
	return verdict.OK, fmt.Sprintf("%s in %s", what, fmtRTT(rtt))
}

// errorResult classifies the last ICMP error that answered a datagram.
func (u *udpConn) errorResult(res Result, d *dgram, t packetTiming, a Attempt) Result {
	q := d.err
	// Only the errno was known (errnoAsICMP): it is named in ICMP's terms.
	asV6 := a.Addr.Addr().Is6() && q.Origin != eeOriginICMP
	res.Reason, res.ICMP, res.Detail = icmpAnswer(asV6, q.Type, q.Code, q.Offender)
	if t.source != verdict.SourceUserspace {
		res.TimingSource = t.source
	}
	res.ICMPAt = t.rx
	res = fromThisHost(res, a, q.Offender, fmt.Sprintf("%d datagram(s)", len(u.dgrams)))
	if res.Reason == verdict.PortUnreachable && u.opts.ExpectClosed {
		res.Reason = verdict.OK
		res.Detail = "port closed, as --expect-closed wants: " + res.Detail
	}
	return res
}

package netctx

import (
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/ti-mo/conntrack"

	"reachd/pkg/verdict"
)

// Flow is a probe's flow as it left this host: what conntrack keys its entry by.
type Flow struct {
	Proto         uint8 // IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP or IPPROTO_ICMPV6
	Local, Remote netip.AddrPort
	ICMPID        uint16 // echo flows: the identifier (their ports are not used)
}

// Valid says whether f names a flow to look up.
func (f Flow) Valid() bool { return f.Proto != 0 && f.Local.IsValid() && f.Remote.IsValid() }

// ctSeen remembers the tracker's counters at the last snapshot, so that a snapshot says
// what happened since.
var ctSeen = struct {
	sync.Mutex
	at                                  time.Time
	invalid, insertFailed, drop, eDrops uint64
}{}

// conntrackOf reads the flow's entry and the table's health. It returns nil when this
// network namespace tracks nothing (no ct rule: there is no table to blame).
func conntrackOf(f Flow) (*verdict.Conntrack, error) {
	c, err := conntrack.Dial(nil)
	if err != nil {
		return nil, fmt.Errorf("conntrack: %w", err)
	}
	defer c.Close()
	g, err := c.StatsGlobal()
	if err != nil {
		return nil, fmt.Errorf("conntrack table: %w", err)
	}
	out := &verdict.Conntrack{Count: g.Entries, Max: g.MaxEntries}
	// Read and recorded under the lock: concurrent snapshots each take their own window.
	ctSeen.Lock()
	if stats, err := c.Stats(); err == nil {
		out.Invalid, out.InsertFailed, out.Drop, out.EarlyDrop, out.SinceMs = ctChange(stats, time.Now())
	}
	ctSeen.Unlock()
	if f.Valid() {
		if e, err := c.Get(query(f)); err == nil {
			out.Entry = entryOf(e)
		}
	}
	return out, nil
}

// Baseline records the connection tracker's counters now, so that the first snapshot of
// the process (a one-shot run's) says what happened since it started rather than nothing.
func Baseline() {
	c, err := conntrack.Dial(nil)
	if err != nil {
		return
	}
	defer c.Close()
	ctSeen.Lock()
	defer ctSeen.Unlock()
	if stats, err := c.Stats(); err == nil {
		ctChange(stats, time.Now())
	}
}

// ctChange sums the per-CPU counters and returns how they moved since the last reading
// (zero the first time), and over how long. The caller holds ctSeen's lock.
func ctChange(stats []conntrack.Stats, now time.Time) (invalid, insertFailed, drop, earlyDrop uint64, over verdict.Millis) {
	var inv, ins, dr, ed uint64
	for _, s := range stats {
		inv, ins, dr, ed = inv+uint64(s.Invalid), ins+uint64(s.InsertFailed), dr+uint64(s.Drop), ed+uint64(s.EarlyDrop)
	}
	if !ctSeen.at.IsZero() && inv >= ctSeen.invalid && ins >= ctSeen.insertFailed && dr >= ctSeen.drop && ed >= ctSeen.eDrops {
		invalid, insertFailed, drop, earlyDrop = inv-ctSeen.invalid, ins-ctSeen.insertFailed, dr-ctSeen.drop, ed-ctSeen.eDrops
		over = verdict.Ms(now.Sub(ctSeen.at))
	}
	ctSeen.at, ctSeen.invalid, ctSeen.insertFailed, ctSeen.drop, ctSeen.eDrops = now, inv, ins, dr, ed
	return
}

func query(f Flow) conntrack.Flow {
	var q conntrack.Flow
	q.TupleOrig.IP.SourceAddress = f.Local.Addr().WithZone("")
	q.TupleOrig.IP.DestinationAddress = f.Remote.Addr().WithZone("")
	q.TupleOrig.Proto.Protocol = f.Proto
	switch f.Proto {
	case protoICMP, protoICMPv6:
		q.TupleOrig.Proto.ICMPID = f.ICMPID
		q.TupleOrig.Proto.ICMPv4 = f.Proto == protoICMP
		q.TupleOrig.Proto.ICMPv6 = f.Proto == protoICMPv6
		q.TupleOrig.Proto.ICMPType = 8
		if f.Proto == protoICMPv6 {
			q.TupleOrig.Proto.ICMPType = 128
		}
	default:
		q.TupleOrig.Proto.SourcePort = f.Local.Port()
		q.TupleOrig.Proto.DestinationPort = f.Remote.Port()
	}
	return q
}

const (
	protoICMP   = 1
	protoTCP    = 6
	protoUDP    = 17
	protoICMPv6 = 58
)

// tcpStates are conntrack's TCP states (TCP_CONNTRACK_*), by number.
var tcpStates = []string{"NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK", "TIME_WAIT", "CLOSE", "SYN_SENT2"}

func entryOf(e conntrack.Flow) *verdict.ConntrackEntry {
	out := &verdict.ConntrackEntry{Proto: protoName(e.TupleOrig.Proto.Protocol), SeenReply: e.Status.SeenReply(),
		Mark: e.Mark, Zone: e.Zone, TimeoutS: e.Timeout, Orig: tupleText(e.TupleOrig), Reply: tupleText(e.TupleReply)}
	if st := e.Status.String(); st != "" {
		out.Status = strings.Split(st, "|")
	}
	if e.ProtoInfo.TCP != nil && int(e.ProtoInfo.TCP.State) < len(tcpStates) {
		out.State = tcpStates[e.ProtoInfo.TCP.State]
	}
	// The reply is the original turned round unless NAT rewrote one of its ends.
	o, r := e.TupleOrig, e.TupleReply
	if r.IP.SourceAddress != o.IP.DestinationAddress || r.Proto.SourcePort != o.Proto.DestinationPort {
		out.NAT = fmt.Sprintf("destination %s rewritten to %s", endText(o.IP.DestinationAddress, o.Proto.DestinationPort), endText(r.IP.SourceAddress, r.Proto.SourcePort))
	}
	if r.IP.DestinationAddress != o.IP.SourceAddress || r.Proto.DestinationPort != o.Proto.SourcePort {
		if out.NAT != "" {
			out.NAT += "; "
		}
		out.NAT += fmt.Sprintf("source %s rewritten to %s", endText(o.IP.SourceAddress, o.Proto.SourcePort), endText(r.IP.DestinationAddress, r.Proto.DestinationPort))
	}
	return out
}

func tupleText(t conntrack.Tuple) string {
	if t.Proto.ICMPv4 || t.Proto.ICMPv6 {
		return fmt.Sprintf("%s -> %s id %d", t.IP.SourceAddress, t.IP.DestinationAddress, t.Proto.ICMPID)
	}
	return endText(t.IP.SourceAddress, t.Proto.SourcePort) + " -> " + endText(t.IP.DestinationAddress, t.Proto.DestinationPort)
}

func endText(a netip.Addr, port uint16) string {
	if port == 0 {
		return a.String()
	}
	return netip.AddrPortFrom(a, port).String()
}

func protoName(p uint8) string {
	switch p {
	case protoTCP:
		return "tcp"
	case protoUDP:
		return "udp"
	case protoICMP:
		return "icmp"
	case protoICMPv6:
		return "icmpv6"
	}
	return fmt.Sprint(p)
}

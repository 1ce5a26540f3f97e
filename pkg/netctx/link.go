package netctx

import (
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"

	"reachd/pkg/verdict"
)

// linkSeen remembers each interface's counters at its last snapshot, so that the next one
// says how they moved. Bounded by the host's interfaces.
var linkSeen = struct {
	sync.Mutex
	m map[int]linkCounters
}{m: map[int]linkCounters{}}

type linkCounters struct {
	at                                       time.Time
	rxErrors, txErrors, rxDropped, txDropped uint64
}

// linkState reads the interface's state, counters and addresses.
func linkState(index int) (*verdict.Link, []string, bool, error) {
	var l netlink.Link
	var err error
	var readAt time.Time
	withHandle(func(h *netlink.Handle) { l, err = h.LinkByIndex(index); readAt = time.Now() })
	if err != nil {
		return nil, nil, false, fmt.Errorf("link %d: %w", index, err)
	}
	a := l.Attrs()
	out := &verdict.Link{Name: a.Name, Index: a.Index, OperState: a.OperState.String(), MTU: a.MTU,
		Carrier: a.RawFlags&unixIFFLowerUp != 0}
	if s := a.Statistics; s != nil {
		out.RxErrors, out.TxErrors, out.RxDropped, out.TxDropped = s.RxErrors, s.TxErrors, s.RxDropped, s.TxDropped
	}
	out.Change = linkChange(out, readAt)
	var addrs []netlink.Addr
	withHandle(func(h *netlink.Handle) { addrs, err = h.AddrList(l, netlink.FAMILY_ALL) })
	var list []string
	for _, ad := range addrs {
		if p, ok := netip.AddrFromSlice(ad.IP); ok && ad.IPNet != nil && len(list) < maxAddresses {
			ones, _ := ad.Mask.Size()
			list = append(list, netip.PrefixFrom(p.Unmap(), ones).String())
		}
	}
	return out, list, a.RawFlags&unixIFFNoARP != 0, nil
}

// maxAddresses bounds the addresses a snapshot lists (a host may have hundreds on a link).
const maxAddresses = 16

// IFF_LOWER_UP (the link has carrier) and IFF_NOARP (no neighbor table: tun, wireguard).
const (
	unixIFFLowerUp = 1 << 16
	unixIFFNoARP   = 0x80
)

// linkChange records l's counters and returns how they moved since the last snapshot of
// its interface (nil the first time, or after a counter went back: a new link).
func linkChange(l *verdict.Link, now time.Time) *verdict.LinkChange {
	cur := linkCounters{now, l.RxErrors, l.TxErrors, l.RxDropped, l.TxDropped}
	linkSeen.Lock()
	prev, ok := linkSeen.m[l.Index]
	if ok && now.Before(prev.at) { // a concurrent snapshot read later and recorded first
		linkSeen.Unlock()
		return nil
	}
	linkSeen.m[l.Index] = cur
	linkSeen.Unlock()
	if !ok || cur.rxErrors < prev.rxErrors || cur.txErrors < prev.txErrors || cur.rxDropped < prev.rxDropped || cur.txDropped < prev.txDropped {
		return nil
	}
	return &verdict.LinkChange{SinceMs: verdict.Ms(now.Sub(prev.at)), RxErrors: cur.rxErrors - prev.rxErrors,
		TxErrors: cur.txErrors - prev.txErrors, RxDropped: cur.rxDropped - prev.rxDropped, TxDropped: cur.txDropped - prev.txDropped}
}

// ticksAgo turns the neighbor table's "clock ticks ago" into milliseconds: the kernel
// reports them in USER_HZ, 100 a second on every Linux architecture.
func ticksAgo(t uint32) *verdict.Millis {
	return verdict.MsPtr(time.Duration(t) * 10 * time.Millisecond)
}

// neighbor reads ip's neighbor entry on the link (State NONE when there is none).
func neighbor(ip netip.Addr, index int) *verdict.Neighbor {
	out := &verdict.Neighbor{Addr: ip.WithZone("").String(), State: "NONE"}
	fam := netlink.FAMILY_V4
	if ip.Is6() {
		fam = netlink.FAMILY_V6
	}
	var neighs []netlink.Neigh
	var err error
	withHandle(func(h *netlink.Handle) { neighs, err = h.NeighList(index, fam) })
	if err != nil {
		return out
	}
	for _, n := range neighs {
		if a, ok := netip.AddrFromSlice(n.IP); ok && a.Unmap() == ip.WithZone("") {
			out.State = StateString(n.State)
			if len(n.HardwareAddr) > 0 {
				out.LLAddr = n.HardwareAddr.String()
			}
			out.UpdatedMs, out.ConfirmedMs = ticksAgo(n.Updated), ticksAgo(n.Confirmed)
			break
		}
	}
	return out
}

package probe

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"time"

	"reachd/pkg/target"
	"reachd/pkg/verdict"
	"reachd/pkg/wire"
)

// Attempt is what a kind's run gets for one attempt: the part every kind shares, and the
// kind's own options.
type Attempt struct {
	Target    target.Target  // as parsed: the name (for SNI and Host) and, for URLs, the URL
	Addr      netip.AddrPort // the address to probe; link-local ones carry their zone
	Interface string         // SO_BINDTODEVICE; "" for none
	Mark      uint32         // SO_MARK; 0 for none
	Source    netip.Addr
	Wire      *wire.Observer
	Timeout   time.Duration // how long one packet's answer is awaited
	Opts      KindOptions   // the kind's own; nil means its defaults
	Log       *slog.Logger  // debug lines (why an attempt is not wire-timed); nil: none
	// Resolver and Family resolve another host the attempt must reach (a redirect's) as
	// the runner resolved the target (see resolve).
	Resolver Resolver
	Family   Family
}

// resolve resolves host as the attempt's target was: a failure is a Result with a reason.
func (a Attempt) resolve(ctx context.Context, host string) (netip.Addr, Result) {
	t, err := target.ParseHost(host)
	if err != nil {
		return netip.Addr{}, fail(verdict.DNSNXDomain, fmt.Sprintf("%s is not a host name or address", host))
	}
	addr, _, res := resolveAddr(ctx, t, leg{fam: a.Family, iface: a.Interface}, &Options{Resolver: a.Resolver})
	return addr, res
}

func (a Attempt) log() *slog.Logger {
	if a.Log == nil {
		return discard
	}
	return a.Log
}

var discard = slog.New(slog.DiscardHandler)

// Result is one attempt's outcome, as a kind's run reports it: the part every kind shares,
// and the kind's own evidence (Kind).
type Result struct {
	Reason       verdict.Reason
	Layer        verdict.Layer // empty: the reason's usual layer
	Detail       string
	RTT          time.Duration // valid when HasRTT
	HasRTT       bool
	ICMP         *verdict.ICMP
	ICMPAt       time.Time // when the ICMP error arrived, as observed (zero: not observed)
	Local        netip.AddrPort
	TimingSource string        // "" means userspace
	Connect      time.Duration // connect() (or the first SYN) until the answer; 0: use RTT
	Kind         kindResult    // nil: nothing of the kind's own to tell

	sent     bool          // a packet left (not a local error before sending)
	proto    uint8         // the flow's protocol (with Local: its conntrack key); 0: none
	payload  []byte        // a path trace sends it again: the first datagram (udp), echo request (icmp)
	waited   time.Duration // how long a timeout waited
	icmpAt   time.Time     // when the kernel received the ICMP error (socket timestamp)
	neighbor string        // the next hop that never resolved, when that is the verdict
}

// kindResult is a kind's own evidence; it writes itself into the verdict. since turns an
// instant into milliseconds after the verdict's time (nil for a zero instant).
type kindResult interface {
	fill(v *verdict.Verdict, since func(time.Time) *verdict.Millis)
}

// wireOf returns the verdict's wire object, adding it if it has none.
func wireOf(v *verdict.Verdict) *verdict.Wire {
	if v.Wire == nil {
		v.Wire = &verdict.Wire{}
	}
	return v.Wire
}

// fail is a Result for an attempt that failed before anything was sent.
func fail(reason verdict.Reason, detail string) Result {
	return Result{Reason: reason, Detail: detail}
}

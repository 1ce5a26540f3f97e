// Package probe runs probes: one file per kind behind one function type, and a runner that
// resolves the target, schedules attempts with retries and turns results into verdicts.
package probe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"reachd/pkg/netctx"
	"reachd/pkg/schedule"
	"reachd/pkg/target"
	"reachd/pkg/verdict"
	"reachd/pkg/wire"
)

// Family selects the address family of the probed addresses.
type Family string

const (
	FamilyAny  Family = "any"
	FamilyV4   Family = "ipv4"
	FamilyV6   Family = "ipv6"
	FamilyBoth Family = "both"
)

// ParseFamily accepts the --family values of CONTRACT.md.
func ParseFamily(s string) (Family, error) {
	switch f := Family(s); f {
	case FamilyAny, FamilyV4, FamilyV6, FamilyBoth:
		return f, nil
	}
	return "", fmt.Errorf("invalid family %q (want any, ipv4, ipv6 or both)", s)
}

// Resolver is the part of *net.Resolver the runner uses; tests pass a fake one so that no
// test ever asks the machine's real resolvers.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Options apply to every target of one run.
type Options struct {
	Probe     string // probe name for the verdict; "cli" for one-shot
	Family    Family
	Interface string     // SO_BINDTODEVICE, and the zone of link-local targets without one
	Source    netip.Addr // source address to bind; invalid for the kernel's choice
	Timeout   time.Duration
	Policy    schedule.Policy
	Sleep     schedule.Sleeper // nil: real sleeping
	Resolver  Resolver         // nil: net.DefaultResolver
	Wire      *wire.Observer   // nil: no eBPF; timings from the kernel or userspace
	Count     int              // icmp/udp: packets per attempt (0 means 1)
	Interval  time.Duration    // icmp/udp: between the packets of an attempt
	UDP       UDPOptions
}

// Attempt is what a kind's function gets for one attempt.
type Attempt struct {
	Addr      netip.AddrPort // the address to probe; link-local ones carry their zone
	Interface string
	Source    netip.Addr
	Wire      *wire.Observer
	Timeout   time.Duration // how long one packet's answer is awaited
	Count     int           // packets per attempt (icmp, udp); at least 1
	Interval  time.Duration
	UDP       *UDPOptions
}

// Result is one attempt's outcome, as a kind's function reports it.
type Result struct {
	Reason         verdict.Reason
	Layer          verdict.Layer // empty: the reason's usual layer
	Detail         string
	RTT            time.Duration // valid when HasRTT
	HasRTT         bool
	ICMP           *verdict.ICMP
	SYNRetransmits *int
	Local          netip.AddrPort
	TimingSource   string // "" means userspace
	WireTimes      *WireTimes
	sent           bool          // a packet left (not a local error before sending)
	waited         time.Duration // how long a timeout waited
	icmpAt         time.Time     // when the kernel received the ICMP error (socket timestamp)
	neighbor       string        // the next hop that never resolved, when that is the verdict
	Connect        time.Duration // connect() (or the first SYN) until the answer; 0: use RTT
	Stats          *verdict.Stats
	EchoID         *int
	ReplyTTL       *int
	UDP            *verdict.UDP
}

// Error lets a Result travel as an error from helpers that fail before probing.
func (r Result) Error() string { return r.Detail }

// WireTimes are wall-clock instants of the probe's packets, as eBPF saw them (at TC, or at
// the TCP tracepoints).
type WireTimes struct {
	SYNs   []time.Time // every SYN sent, first one first
	SYNACK time.Time
	RST    time.Time
	ICMP   time.Time
	// Echo and UDP probes: the request or datagram that left, and its answer.
	EchoTx, EchoReply time.Time
	UDPTx, UDPRx      time.Time
}

// Func runs one attempt; ctx's deadline is the attempt's deadline.
type Func func(ctx context.Context, a Attempt) Result

var registry = map[string]Func{
	"tcp":  TCP,
	"icmp": ICMP,
	"udp":  UDP,
}

// Kinds returns the registered kinds.
func Kinds() []string {
	out := make([]string, 0, len(registry))
	for k := range registry {
		out = append(out, k)
	}
	return out
}

// Run probes t with the named kind and returns one verdict per probed family (two with
// --family both, else one).
func Run(ctx context.Context, kind string, t target.Target, o *Options) []*verdict.Verdict {
	fn, ok := registry[kind]
	if !ok {
		v := newVerdict(kind, t, o)
		v.SetReason(verdict.LocalError, fmt.Sprintf("unknown probe kind %q", kind))
		return []*verdict.Verdict{v}
	}
	fams := []Family{o.Family}
	if o.Family == FamilyBoth {
		fams = []Family{FamilyV4, FamilyV6}
		if t.IsLiteral() { // a literal has one family only
			fams = []Family{familyOf(t.Addr)}
		}
	}
	out := make([]*verdict.Verdict, len(fams))
	var wg sync.WaitGroup
	for i, f := range fams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i] = runFamily(ctx, fn, kind, t, f, o)
		}()
	}
	wg.Wait()
	return out
}

func familyOf(a netip.Addr) Family {
	if a.Is4() {
		return FamilyV4
	}
	return FamilyV6
}

func newVerdict(kind string, t target.Target, o *Options) *verdict.Verdict {
	return &verdict.Verdict{
		Time:         verdict.Time(time.Now()),
		Probe:        o.Probe,
		Kind:         kind,
		Target:       t.Raw,
		TimingSource: verdict.SourceUserspace,
	}
}

func runFamily(ctx context.Context, fn Func, kind string, t target.Target, fam Family, o *Options) *verdict.Verdict {
	v := newVerdict(kind, t, o)
	if fam == FamilyV4 || fam == FamilyV6 {
		v.Family = string(fam)
	}
	sleep := o.Sleep
	if sleep == nil {
		sleep = schedule.RealSleep
	}
	var (
		last    Result
		addr    netip.Addr
		resolve time.Duration
		total   time.Duration
	)
	attempts, delays := o.Policy.Do(ctx, sleep, func(ctx context.Context, n int) bool {
		start := time.Now()
		// One deadline bounds resolution and the handshake together (seed 2.1): a slow
		// resolver eats into the attempt's budget rather than extending it. A multi-packet
		// attempt spends its intervals too, and waits the timeout for its last packet.
		actx, cancel := context.WithDeadline(ctx, start.Add(attemptBudget(o)))
		defer cancel()
		var res Result
		addr, res = resolveAddr(actx, t, fam, o)
		resolve = time.Since(start)
		if res.Reason == "" {
			res = fn(actx, Attempt{
				Addr:      netip.AddrPortFrom(addr, t.Port),
				Interface: o.Interface,
				Source:    o.Source,
				Wire:      o.Wire,
				Timeout:   o.Timeout,
				Count:     max(o.Count, 1),
				Interval:  o.Interval,
				UDP:       &o.UDP,
			})
		}
		total = time.Since(start)
		last = res
		v.Tries = append(v.Tries, verdict.Try{N: n, Reason: res.Reason, Detail: res.Detail, RTTMs: rttPtr(res)})
		return schedule.Retryable(res.Reason)
	})
	for i, d := range delays {
		v.Tries[i].BackoffMs = verdict.MsPtr(d)
	}
	v.Attempts = attempts
	if addr.IsValid() {
		v.Addr = addr.String()
		v.Family = string(familyOf(addr))
	}
	v.SetReason(last.Reason, last.Detail)
	if last.Layer != "" {
		v.Layer = last.Layer
	}
	v.RTTMs = rttPtr(last)
	v.Timings = &verdict.Timings{Resolve: verdict.MsPtr(resolve), Total: verdict.MsPtr(total)}
	switch {
	case last.Stats != nil: // echoes and datagrams have no connect phase
	case last.Connect > 0:
		v.Timings.Connect = verdict.MsPtr(last.Connect)
	case last.HasRTT:
		v.Timings.Connect = verdict.MsPtr(last.RTT)
	}
	if last.ICMP != nil || last.SYNRetransmits != nil || last.WireTimes != nil || last.EchoID != nil || last.ReplyTTL != nil {
		v.Wire = &verdict.Wire{ICMP: last.ICMP, SYNRetransmits: last.SYNRetransmits, EchoID: last.EchoID, ReplyTTL: last.ReplyTTL}
		if wt := last.WireTimes; wt != nil {
			since := func(t time.Time) *verdict.Millis {
				if t.IsZero() {
					return nil
				}
				return verdict.MsPtr(t.Sub(time.Time(v.Time)))
			}
			if len(wt.SYNs) > 0 {
				v.Wire.SYNTx = since(wt.SYNs[0])
				for _, s := range wt.SYNs[1:] {
					v.Wire.SYNRetransmitTx = append(v.Wire.SYNRetransmitTx, *since(s))
				}
			}
			v.Wire.SYNACK, v.Wire.RST, v.Wire.ICMPAt = since(wt.SYNACK), since(wt.RST), since(wt.ICMP)
			v.Wire.EchoTx, v.Wire.EchoReply = since(wt.EchoTx), since(wt.EchoReply)
			v.Wire.UDPTx, v.Wire.UDPRx = since(wt.UDPTx), since(wt.UDPRx)
		}
	}
	v.Stats, v.UDP = last.Stats, last.UDP
	if last.TimingSource != "" {
		v.TimingSource = last.TimingSource
	}
	if last.Local.IsValid() {
		v.Local = last.Local.String()
	}
	if !v.OK && addr.IsValid() && last.sent {
		v.Route = routeEvidence(addr, o.Source, o.Interface)
	}
	if ctx.Err() != nil && !v.OK && attempts < o.Policy.Retries+1 && schedule.Retryable(last.Reason) {
		v.Detail += " (probe cancelled before its retries)"
	}
	return v
}

// attemptBudget is how long one attempt may take.
func attemptBudget(o *Options) time.Duration {
	if o.Count > 1 {
		return o.Timeout + time.Duration(o.Count-1)*o.Interval
	}
	return o.Timeout
}

func rttPtr(r Result) *verdict.Millis {
	if !r.HasRTT {
		return nil
	}
	return verdict.MsPtr(r.RTT)
}

// resolveAddr picks the address to probe. A non-empty Result.Reason means it failed.
func resolveAddr(ctx context.Context, t target.Target, fam Family, o *Options) (netip.Addr, Result) {
	if t.IsLiteral() {
		a := t.Addr
		if a.Is6() && a.Zone() == "" && a.IsLinkLocalUnicast() && o.Interface != "" {
			a = a.WithZone(o.Interface)
		}
		return a, Result{}
	}
	r := o.Resolver
	if r == nil {
		r = net.DefaultResolver
	}
	network := "ip"
	switch fam {
	case FamilyV4:
		network = "ip4"
	case FamilyV6:
		network = "ip6"
	}
	addrs, err := r.LookupNetIP(ctx, network, t.Name)
	if err == nil && len(addrs) > 0 {
		return addrs[0].Unmap(), Result{}
	}
	if err == nil {
		return netip.Addr{}, Result{Reason: verdict.DNSNoAnswer, Detail: fmt.Sprintf("%s has no %s address", t.Name, familyWord(fam))}
	}
	res := classifyResolveError(ctx, err, t.Name)
	if res.Reason == verdict.DNSNXDomain && network != "ip" {
		// Go reports "no such host" both for NXDOMAIN and for a name that only lacks this
		// family's records; ask for any family to tell the two apart.
		if other, oerr := r.LookupNetIP(ctx, "ip", t.Name); oerr == nil && len(other) > 0 {
			return netip.Addr{}, Result{Reason: verdict.DNSNoAnswer,
				Detail: fmt.Sprintf("%s has no %s address (it has %s)", t.Name, familyWord(fam), other[0].Unmap())}
		}
	}
	return netip.Addr{}, res
}

func familyWord(f Family) string {
	switch f {
	case FamilyV4:
		return "IPv4"
	case FamilyV6:
		return "IPv6"
	}
	return "IP"
}

func classifyResolveError(ctx context.Context, err error, name string) Result {
	var de *net.DNSError
	switch {
	case errors.As(err, &de) && de.IsNotFound:
		return Result{Reason: verdict.DNSNXDomain, Detail: fmt.Sprintf("resolving %s: no such host", name)}
	case errors.As(err, &de) && de.IsTimeout, ctx.Err() != nil:
		return Result{Reason: verdict.DNSTimeout, Detail: fmt.Sprintf("resolving %s: no answer before the attempt deadline", name)}
	case errors.As(err, &de) && de.Err == "server misbehaving":
		return Result{Reason: verdict.DNSServfail, Detail: fmt.Sprintf("resolving %s: resolver answered SERVFAIL or REFUSED", name)}
	case errors.As(err, &de):
		return Result{Reason: verdict.DNSServfail, Detail: fmt.Sprintf("resolving %s: %s", name, de.Err)}
	}
	return Result{Reason: verdict.DNSServfail, Detail: fmt.Sprintf("resolving %s: %v", name, err)}
}

// routeEvidence records the route a failed probe took, so a verdict says which way it went.
func routeEvidence(dst, src netip.Addr, ifname string) *verdict.Route {
	r, err := netctx.RouteTo(dst.WithZone(""), src, routeOif(dst, ifname))
	if err != nil {
		return nil
	}
	out := &verdict.Route{Dev: r.Dev, Table: r.Table, Type: r.Type}
	if r.Gateway.IsValid() {
		out.Gateway = r.Gateway.String()
	}
	if r.Src.IsValid() {
		out.Src = r.Src.String()
	}
	return out
}

// scopeID turns a zone (interface name or index) into an interface index.
func scopeID(zone string) (int, error) {
	if zone == "" {
		return 0, nil
	}
	if n, err := strconv.Atoi(zone); err == nil {
		return n, nil
	}
	ifc, err := net.InterfaceByName(zone)
	if err != nil {
		return 0, fmt.Errorf("interface %s does not exist", zone)
	}
	return ifc.Index, nil
}

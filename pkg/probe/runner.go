package probe

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"reachd/pkg/netctx"
	"reachd/pkg/schedule"
	"reachd/pkg/target"
	"reachd/pkg/verdict"

	"golang.org/x/sys/unix"
)

// Run probes t with kind k and returns one verdict per leg: per probed family (two with
// --family both) and per interface (one each when several are given), in that order.
func Run(ctx context.Context, k *Kind, t target.Target, o *Options) []*verdict.Verdict {
	o = withKindDefaults(k, o)
	legs := legsOf(t, o)
	out := make([]*verdict.Verdict, len(legs))
	if len(legs) == 1 { // on the caller's goroutine: a new one would grow a stack per probe
		out[0] = runLeg(ctx, k, t, legs[0], o)
		return out
	}
	var wg sync.WaitGroup
	for i, l := range legs {
		wg.Go(func() { out[i] = runLeg(ctx, k, t, l, o) })
	}
	wg.Wait()
	return out
}

// Overloaded returns the verdicts of a probe of t that the prober started too late to be
// fair to the target (its scheduler was overloaded): self_overload for each leg, with
// detail saying why, and nothing sent.
func Overloaded(k *Kind, t target.Target, o *Options, detail string) []*verdict.Verdict {
	o = withKindDefaults(k, o)
	legs := legsOf(t, o)
	out := make([]*verdict.Verdict, len(legs))
	for i, l := range legs {
		v := newVerdict(k.Name, t, o)
		if l.fam == FamilyV4 || l.fam == FamilyV6 {
			v.Family = string(l.fam)
		} else if t.IsLiteral() {
			v.Family = string(familyOf(t.Addr))
		}
		if t.IsLiteral() {
			v.Addr = t.Addr.String()
		}
		if l.server.IsValid() {
			v.Addr, v.Family, v.Server = l.server.Addr().String(), string(familyOf(l.server.Addr())), l.server.String()
		}
		v.Interface = l.iface
		v.SetReason(verdict.SelfOverload, detail)
		out[i] = v
	}
	return out
}

// withKindDefaults is o with k's default options when it has none of the kind's own.
func withKindDefaults(k *Kind, o *Options) *Options {
	if o.Kind != nil || k.NewOptions == nil {
		return o
	}
	c := *o
	c.Kind = k.NewOptions()
	return &c
}

// Verdicts is how many verdicts a round of targets gives with o: one per leg.
func Verdicts(targets []target.Target, o *Options) int {
	n := 0
	for _, t := range targets {
		n += len(legsOf(t, o))
	}
	return n
}

// leg is one way a target is probed: an address family and an interface, and for a kind
// whose targets are asked of servers (dns), the server.
type leg struct {
	fam    Family
	iface  string
	server netip.AddrPort
	// noServer says why a server leg has no server (none of the family asked for).
	noServer string
}

// serverLister is a kind whose targets are names asked of servers rather than hosts
// probed (dns): each server is a leg of its own, so that one that fails is named.
type serverLister interface {
	// servers are the servers to ask now, and where they come from ("--server",
	// "/etc/resolv.conf").
	servers() ([]netip.AddrPort, string)
}

func legsOf(t target.Target, o *Options) []leg {
	ifaces := o.Interfaces
	if len(ifaces) == 0 {
		ifaces = []string{""}
	}
	if sl, ok := o.Kind.(serverLister); ok {
		return serverLegs(sl, o.Family, ifaces)
	}
	t = pinned(t, o.Kind)
	fams := []Family{o.Family}
	if o.Family == FamilyBoth {
		fams = []Family{FamilyV4, FamilyV6}
		if t.IsLiteral() { // a literal has one family only
			fams = []Family{familyOf(t.Addr)}
		}
	}
	legs := make([]leg, 0, len(fams)*len(ifaces))
	for _, f := range fams {
		for _, ifc := range ifaces {
			legs = append(legs, leg{fam: f, iface: ifc})
		}
	}
	return legs
}

// Servers are the servers a job of o asks now when its kind asks servers (dns); nil for
// the other kinds.
func Servers(o *Options) []netip.AddrPort {
	if sl, ok := o.Kind.(serverLister); ok {
		s, _ := sl.servers()
		return s
	}
	return nil
}

// serverLegs are a leg per server of the family asked for (any and both: every server)
// and interface; with no such server, one leg per interface that says so.
func serverLegs(sl serverLister, fam Family, ifaces []string) []leg {
	all, from := sl.servers()
	var legs []leg
	for _, s := range all {
		if (fam == FamilyV4 || fam == FamilyV6) && familyOf(s.Addr()) != fam {
			continue
		}
		for _, ifc := range ifaces {
			srv := s
			if a := s.Addr(); a.Is6() && a.IsLinkLocalUnicast() && a.Zone() == "" && ifc != "" {
				srv = netip.AddrPortFrom(a.WithZone(ifc), s.Port())
			}
			legs = append(legs, leg{fam: familyOf(s.Addr()), iface: ifc, server: srv})
		}
	}
	if len(legs) == 0 {
		why := fmt.Sprintf("no %s server in %s (it lists %s)", familyWord(fam), from, addrList(all))
		for _, ifc := range ifaces {
			legs = append(legs, leg{fam: fam, iface: ifc, noServer: why})
		}
	}
	return legs
}

func addrList(as []netip.AddrPort) string {
	if len(as) == 0 {
		return "none"
	}
	s := make([]string, len(as))
	for i, a := range as {
		s[i] = a.String()
	}
	return strings.Join(s, ", ")
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

// outcome is what a family's attempts came to: the last attempt's result, and what the
// runner measured around it.
type outcome struct {
	last     Result
	attempt  Attempt // the last one
	addr     netip.Addr
	resolver string // which resolver answered (or failed to)
	resolve  time.Duration
	total    time.Duration
	attempts int
	stopped  bool // the daemon stopped during a backoff: the retries left were not run
}

func runLeg(ctx context.Context, k *Kind, t target.Target, l leg, o *Options) *verdict.Verdict {
	v := newVerdict(k.Name, t, o)
	if l.fam == FamilyV4 || l.fam == FamilyV6 {
		v.Family = string(l.fam)
	}
	v.Interface = l.iface
	if l.server.IsValid() {
		v.Server = l.server.String()
	}
	out := attempts(ctx, k, t, l, o, v)
	describe(v, out)
	if o.PMTU != "" && pmtuWanted(ctx, o.PMTU, out) {
		pmtu(ctx, v, out)
	}
	if o.Trace && traceable(v, out.last) {
		trace(ctx, v, out)
	}
	if cut := out.attempts < o.Policy.Retries+1 && !v.OK && schedule.Retryable(out.last.Reason); cut && out.stopped {
		v.Detail += " (reachd stopped before its retries)"
	} else if cut && ctx.Err() != nil {
		v.Detail += " (probe cancelled before its retries)"
	}
	return v
}

// attempts runs the attempts of one leg with retries, recording each try in v.
func attempts(ctx context.Context, k *Kind, t target.Target, l leg, o *Options, v *verdict.Verdict) outcome {
	sleep := o.Sleep
	if sleep == nil {
		sleep = schedule.RealSleep
	}
	kopts := k.options(o.Kind)
	var out outcome
	noted := func(ctx context.Context, d time.Duration) error {
		err := sleep(ctx, d)
		out.stopped = errors.Is(err, schedule.ErrStopping)
		return err
	}
	n, delays := o.Policy.Do(ctx, noted, func(ctx context.Context, n int) bool {
		start := time.Now()
		// One deadline bounds resolution and the handshake together (seed 2.1): a slow
		// resolver eats into the attempt's budget rather than extending it. A multi-packet
		// attempt spends its intervals too, and waits the timeout for its last packet.
		actx, cancel := context.WithDeadline(ctx, start.Add(attemptBudget(o.Timeout, kopts)))
		defer cancel()
		var res Result
		port := t.Port
		switch {
		case l.server.IsValid(): // a name asked of a server: the server is what is probed
			out.addr, port = l.server.Addr(), l.server.Port()
		case l.noServer != "":
			res = fail(verdict.LocalError, l.noServer)
		default:
			out.addr, out.resolver, res = resolveAddr(actx, pinned(t, kopts), l, o)
		}
		out.resolve = time.Since(start)
		out.attempt = Attempt{
			Target:    t,
			Addr:      netip.AddrPortFrom(out.addr, port),
			Interface: l.iface,
			Mark:      o.Mark,
			Source:    o.Source,
			Wire:      o.Wire,
			Timeout:   o.Timeout,
			Opts:      kopts,
			Log:       o.Log,
			Resolver:  o.Resolver,
			Family:    l.fam,
		}
		if res.Reason == "" {
			res = k.run(actx, out.attempt)
		}
		out.total = time.Since(start)
		out.last = res
		v.Tries = append(v.Tries, verdict.Try{N: n, Reason: res.Reason, Detail: res.Detail, RTTMs: rttPtr(res)})
		return schedule.Retryable(res.Reason)
	})
	for i, d := range delays {
		v.Tries[i].BackoffMs = verdict.MsPtr(d)
	}
	out.attempts = n
	return out
}

// pinner is a kind's options that name the address to probe instead of the target's host
// (http's --connect-to, curl's --resolve habit): the host still names the server for SNI,
// Host and the certificate.
type pinner interface{ pinnedAddr() netip.Addr }

// pinned returns t with its host's address when kopts pins one, so that nothing resolves it.
func pinned(t target.Target, kopts KindOptions) target.Target {
	if p, ok := kopts.(pinner); ok && p.pinnedAddr().IsValid() {
		t.Addr = p.pinnedAddr()
	}
	return t
}

// traceable says whether a failed verdict's path is worth a trace: its probe got no
// answer, or a router's ICMP error (not this host's), through a router (a target on a
// connected route has no path to trace).
func traceable(v *verdict.Verdict, last Result) bool {
	if v.OK || last.proto == 0 || !last.sent || v.Route == nil || v.Route.Gateway == "" {
		return false
	}
	if last.Layer != "" && last.Layer != verdict.LayerTransport && last.Layer != verdict.LayerNetwork {
		return false // the handshake completed: TLS or the application failed
	}
	if silent(last) {
		return true
	}
	return last.ICMP != nil && !last.ICMP.Local && last.ICMP.From != "" && last.ICMP.From != v.Addr
}

// silent says whether an attempt got no answer at all: what a path MTU black hole looks like.
func silent(last Result) bool {
	switch last.Reason {
	case verdict.Timeout, verdict.OpenFiltered:
		return true
	case verdict.DNSTimeout: // a silent server, over UDP; over TCP it took the connection
		return last.proto == unix.IPPROTO_UDP
	}
	return false
}

// trace traces a failed verdict's flow and says where it was lost, within the rate cap.
func trace(ctx context.Context, v *verdict.Verdict, out outcome) {
	if !traceTokens.Take(time.Now()) {
		v.Detail += fmt.Sprintf("; path not traced: over %d traces a second", TraceRate)
		return
	}
	var known netip.Addr
	if ic := out.last.ICMP; ic != nil {
		known, _ = netip.ParseAddr(ic.From)
	}
	hp, err := newHopper(out.attempt, out.last)
	var p *verdict.Path
	if err == nil {
		defer hp.close()
		p, err = tracePath(ctx, hp, min(out.attempt.Timeout, time.Second), known)
	}
	if err != nil {
		v.Detail += "; path not traced: " + err.Error()
		return
	}
	v.Path = p
	v.Detail += "; " + pathDetail(p)
	if out.last.Reason == verdict.OpenFiltered && p.FirstSilent > 0 {
		v.Detail += ", or it reached a target silent to this payload" // UDP cannot tell
	}
}

// describe writes the final attempt's result into v.
func describe(v *verdict.Verdict, out outcome) {
	last := out.last
	v.Attempts = out.attempts
	if out.addr.IsValid() {
		v.Addr = out.addr.String()
		v.Family = string(familyOf(out.addr))
	}
	v.Resolver = out.resolver
	v.SetReason(last.Reason, last.Detail)
	if last.Layer != "" {
		v.Layer = last.Layer
	}
	v.RTTMs = rttPtr(last)
	v.Timings = &verdict.Timings{Resolve: verdict.MsPtr(out.resolve), Total: verdict.MsPtr(out.total)}
	if last.Connect > 0 { // echoes and datagrams have no connect phase
		v.Timings.Connect = verdict.MsPtr(last.Connect)
	}
	since := func(t time.Time) *verdict.Millis {
		if t.IsZero() {
			return nil
		}
		return verdict.MsPtr(t.Sub(time.Time(v.Time)))
	}
	if last.ICMP != nil {
		wireOf(v).ICMP = last.ICMP
	}
	if !last.ICMPAt.IsZero() {
		wireOf(v).ICMPAt = since(last.ICMPAt)
	}
	if last.Kind != nil {
		last.Kind.fill(v, since)
	}
	if last.TimingSource != "" {
		v.TimingSource = last.TimingSource
	}
	if last.Local.IsValid() {
		v.Local = last.Local.String()
	}
	failureEvidence(v, out)
}

// failureEvidence adds a failed verdict's route and its host's state (the failure
// snapshot), once.
func failureEvidence(v *verdict.Verdict, out outcome) {
	if !v.OK && out.addr.IsValid() && out.last.sent && v.Context == nil {
		var rt netctx.Route
		v.Route, rt = routeEvidence(out.attempt)
		v.Context = snapshot(v, out.attempt, rt, out.last)
	}
}

// AttemptBudget is how long one attempt of k with o may take (a schedule's interval must
// leave room for it).
func AttemptBudget(k *Kind, o *Options) time.Duration {
	return attemptBudget(o.Timeout, k.options(o.Kind))
}

// AfterBudget is how long a chain of o may take after its last attempt: its path MTU
// search and its path trace, when o asks for them.
func AfterBudget(o *Options) time.Duration {
	var d time.Duration
	if o.PMTU != "" {
		d += PMTUBudget
	}
	if o.Trace {
		d += TraceBudget
	}
	return d
}

// attemptBudget is how long one attempt may take: the timeout, and for several packets
// the intervals between them too.
func attemptBudget(timeout time.Duration, o KindOptions) time.Duration {
	if po, ok := o.(packetOptions); ok {
		if p := po.packets(); p.Count > 1 {
			return timeout + time.Duration(p.Count-1)*p.Interval
		}
	}
	return timeout
}

func rttPtr(r Result) *verdict.Millis {
	if !r.HasRTT {
		return nil
	}
	return verdict.MsPtr(r.RTT)
}

package probe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/miekg/dns"

	"reachd/pkg/resolv"
	"reachd/pkg/target"
	"reachd/pkg/verdict"
)

// answerer is a Resolver that says who answered, and how a failure failed (resolv.Stub).
type answerer interface {
	Lookup(ctx context.Context, network, host string) (resolv.Answer, error)
}

// resolver is o's resolver: the one given, else the system's (resolv.System).
func (o *Options) resolver() Resolver {
	if o.Resolver == nil {
		return resolv.System()
	}
	return o.Resolver
}

// resolveAddr picks the address to probe, and says which resolver answered ("" for a
// literal). A non-empty Result.Reason means it failed.
func resolveAddr(ctx context.Context, t target.Target, l leg, o *Options) (netip.Addr, string, Result) {
	fam := l.fam
	if t.IsLiteral() {
		a := t.Addr
		if a.Is6() && a.Zone() == "" && a.IsLinkLocalUnicast() && l.iface != "" {
			a = a.WithZone(l.iface)
		}
		return a, "", Result{}
	}
	network := "ip"
	switch fam {
	case FamilyV4:
		network = "ip4"
	case FamilyV6:
		network = "ip6"
	}
	r := o.resolver()
	if ar, ok := r.(answerer); ok {
		ans, err := ar.Lookup(ctx, network, t.Name)
		if err == nil && len(ans.Addrs) > 0 {
			return ans.Addrs[0].Unmap(), ans.From, Result{}
		}
		var re *resolv.Error
		if errors.As(err, &re) {
			return netip.Addr{}, re.From, resolveFailure(ctx, re, fam)
		}
		return netip.Addr{}, "", classifyResolveError(ctx, err, t.Name)
	}
	addrs, err := r.LookupNetIP(ctx, network, t.Name)
	if err == nil && len(addrs) > 0 {
		return addrs[0].Unmap(), "", Result{}
	}
	if err == nil {
		return netip.Addr{}, "", Result{Reason: verdict.DNSNoAnswer, Detail: fmt.Sprintf("%s has no %s address", t.Name, familyWord(fam))}
	}
	res := classifyResolveError(ctx, err, t.Name)
	if res.Reason == verdict.DNSNXDomain && network != "ip" {
		// Go reports "no such host" both for NXDOMAIN and for a name that only lacks this
		// family's records; ask for any family to tell the two apart.
		if other, oerr := r.LookupNetIP(ctx, "ip", t.Name); oerr == nil && len(other) > 0 {
			return netip.Addr{}, "", Result{Reason: verdict.DNSNoAnswer,
				Detail: fmt.Sprintf("%s has no %s address (it has %s)", t.Name, familyWord(fam), other[0].Unmap())}
		}
	}
	return netip.Addr{}, "", res
}

// resolveFailure words a failed resolution with the reason its answer gives: the rcode
// of the server that decided, or the silence of all of them.
func resolveFailure(ctx context.Context, e *resolv.Error, fam Family) Result {
	tried := strings.Join(e.Tried, "; ")
	switch {
	case e.NoData:
		return fail(verdict.DNSNoAnswer, fmt.Sprintf("resolving %s: the name has no %s address (%s)", e.Name, familyWord(fam), tried))
	case e.Rcode < 0 && e.Local:
		return fail(verdict.LocalError, fmt.Sprintf("resolving %s: no resolver could be asked from this host (%s)", e.Name, tried))
	case e.Rcode < 0 && (e.Silent || ctx.Err() != nil):
		return fail(verdict.DNSTimeout, fmt.Sprintf("resolving %s: no resolver answered in time (%s)", e.Name, tried))
	case e.Rcode < 0:
		return fail(verdict.DNSServfail, fmt.Sprintf("resolving %s: no resolver took the query (%s)", e.Name, tried))
	}
	return fail(rcodeReason(e.Rcode), fmt.Sprintf("resolving %s: %s", e.Name, tried))
}

// rcodeReason is the reason of a DNS answer's rcode (other than NOERROR): those the
// contract names, and dns_servfail for the rest (FORMERR, NOTIMP: the resolver failed us),
// alike for the dns kind and for every other kind's resolution.
func rcodeReason(rcode int) verdict.Reason {
	switch rcode {
	case dns.RcodeNameError:
		return verdict.DNSNXDomain
	case dns.RcodeRefused:
		return verdict.DNSRefused
	}
	return verdict.DNSServfail
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

// classifyResolveError classifies the error of a resolver that does not say how it
// failed (Go's).
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

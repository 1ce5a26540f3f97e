package probe

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"reachd/pkg/target"
	"reachd/pkg/verdict"
)

// resolveAddr picks the address to probe. A non-empty Result.Reason means it failed.
func resolveAddr(ctx context.Context, t target.Target, l leg, o *Options) (netip.Addr, Result) {
	fam := l.fam
	if t.IsLiteral() {
		a := t.Addr
		if a.Is6() && a.Zone() == "" && a.IsLinkLocalUnicast() && l.iface != "" {
			a = a.WithZone(l.iface)
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

// Package probe runs probes: one file per kind, each declaring its Kind, and a runner that
// resolves the target, schedules attempts with retries and turns results into verdicts.
// Mechanisms the kinds share sit in files named for them: socket setup (socket.go), the
// classifier of errno and ICMP errors (classify.go), wire-timing glue (wiretime.go), the
// multi-packet request/response engine (multipacket.go) and the wire-timed TCP dialer that
// TLS, HTTP and line probes run over (dialer.go).
package probe

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"time"

	"reachd/pkg/resolv"
	"reachd/pkg/schedule"
	"reachd/pkg/target"
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

// ParseFamily accepts the --family values: any, ipv4, ipv6, both.
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

// Options apply to every target of one job: the part every kind shares, and the kind's own.
type Options struct {
	Probe  string // probe name for the verdict; "cli" for one-shot
	Family Family
	// Interfaces: SO_BINDTODEVICE, and the zone of link-local targets without one; each
	// target is probed through each (a multi-uplink gateway). None: the route decides.
	Interfaces []string
	Mark       uint32     // SO_MARK, for policy routing; 0 for none
	Source     netip.Addr // source address to bind; invalid for the kernel's choice
	Timeout    time.Duration
	Policy     schedule.Policy
	Sleep      schedule.Sleeper // nil: real sleeping
	Resolver   Resolver         // nil: the system's (resolv.System)
	Wire       *wire.Observer   // nil: no eBPF; timings from the kernel or userspace
	Kind       KindOptions      // the kind's own options; nil: its defaults
	Trace      bool             // trace the flow's path when it fails (--trace)
	PMTU       string           // search the path MTU after the attempts: PMTUAlways, PMTUOnFailure; "": never
	Log        *slog.Logger     // debug lines; nil: none
}

// MaxRetries bounds Policy.Retries.
const MaxRetries = 20

// Check validates the options every kind shares, without asking the host (a config file
// is checked on another machine, and a gateway's interfaces come and go: see CheckHost). A
// source address decides the family of names when none was asked for.
func (o *Options) Check() error {
	if o.Timeout <= 0 {
		return fmt.Errorf("--timeout must be positive, got %s", o.Timeout)
	}
	if o.Policy.Retries < 0 || o.Policy.Retries > MaxRetries {
		return fmt.Errorf("--retries must be between 0 and %d, got %d", MaxRetries, o.Policy.Retries)
	}
	seen := map[string]bool{}
	for _, ifc := range o.Interfaces {
		if err := checkIfName(ifc); err != nil {
			return fmt.Errorf("--interface %q: %w", ifc, err)
		}
		if seen[ifc] {
			return fmt.Errorf("--interface %s is given twice", ifc)
		}
		seen[ifc] = true
	}
	if !o.Source.IsValid() {
		return nil
	}
	sf := familyOf(o.Source)
	switch o.Family {
	case FamilyAny:
		o.Family = sf
	case FamilyBoth:
		return fmt.Errorf("--source %s has one family; it cannot be used with --family both", o.Source)
	case sf:
	default:
		return fmt.Errorf("--source %s is %s but the family asked for is %s", o.Source, sf, o.Family)
	}
	return nil
}

// CheckHost says whether this host has the interfaces the options name: a one-shot run
// refuses a typo at once, where a daemon reports a missing interface in its verdicts.
func (o *Options) CheckHost() error {
	for _, ifc := range o.Interfaces {
		if _, err := net.InterfaceByName(ifc); err != nil {
			return fmt.Errorf("--interface %s: no such interface", ifc)
		}
	}
	return nil
}

// checkIfName says whether s can be an interface name (the kernel's dev_valid_name).
func checkIfName(s string) error {
	switch {
	case s == "":
		return fmt.Errorf("empty interface name")
	case len(s) > 15:
		return fmt.Errorf("an interface name has at most 15 characters")
	case s == "." || s == "..", strings.ContainsAny(s, "/: \t\n"):
		return fmt.Errorf("not an interface name")
	}
	return nil
}

// CheckTarget says whether t can be probed with o: its family, a link-local address's zone.
func CheckTarget(t target.Target, o *Options) error {
	if sl, asked := o.Kind.(serverLister); asked { // a name asked of servers: nothing to reach
		if _, fixed := o.Resolver.(*resolv.Stub); fixed {
			return fmt.Errorf("--resolver does not apply to the dns kind: name the resolvers to ask with --server")
		}
		return checkServers(sl, o)
	}
	what := fmt.Sprintf("target %q", t.Raw)
	if p := pinned(t, o.Kind); p.Addr != t.Addr {
		t, what = p, "--connect-to "+p.Addr.String()
	}
	if !t.IsLiteral() {
		return nil
	}
	tf := familyOf(t.Addr)
	if o.Family != FamilyAny && o.Family != FamilyBoth && o.Family != tf {
		return fmt.Errorf("%s is %s but the family asked for is %s", what, tf, o.Family)
	}
	if t.Addr.Is6() && t.Addr.IsLinkLocalUnicast() && t.Addr.Zone() == "" && len(o.Interfaces) == 0 {
		example := "[fe80::1%eth0]:80"
		if t.Port == 0 {
			example = "fe80::1%eth0"
		}
		return fmt.Errorf("target %q is link-local: give its zone (%s) or --interface", t.Raw, example)
	}
	return nil
}

// checkServers says whether the servers a user named can be asked with o: their family,
// a link-local one's zone. Those of resolv.conf are the host's: a verdict tells of them.
func checkServers(sl serverLister, o *Options) error {
	servers, from := sl.servers()
	if from != "--server" {
		return nil
	}
	for _, s := range servers {
		a := s.Addr()
		if f := familyOf(a); (o.Family == FamilyV4 || o.Family == FamilyV6) && f != o.Family {
			return fmt.Errorf("--server %s is %s but the family asked for is %s", s, f, o.Family)
		}
		if a.Is6() && a.IsLinkLocalUnicast() && a.Zone() == "" && len(o.Interfaces) == 0 {
			return fmt.Errorf("--server %s is link-local: give its zone (fe80::53%%eth0) or --interface", s)
		}
	}
	return nil
}

// CheckServerZones says whether the zones of the servers a user named (dns --server) are
// interfaces on this host.
func CheckServerZones(o *Options) error {
	sl, ok := o.Kind.(serverLister)
	if !ok {
		return nil
	}
	servers, from := sl.servers()
	for _, s := range servers {
		if z := s.Addr().Zone(); from == "--server" && z != "" {
			if _, err := net.InterfaceByName(z); err != nil && !isNumber(z) {
				return fmt.Errorf("--server %s: zone %s is not an interface on this host", s, z)
			}
		}
	}
	return nil
}

// CheckZone says whether the zone of t, if any, is an interface on this host.
func CheckZone(t target.Target) error {
	if z := t.Addr.Zone(); t.IsLiteral() && z != "" {
		if _, err := net.InterfaceByName(z); err != nil && !isNumber(z) {
			return fmt.Errorf("target %q: zone %s is not an interface on this host", t.Raw, z)
		}
	}
	return nil
}

// ParseTarget parses a target of kind k: a host, a host and port, or a URL.
func (k *Kind) ParseTarget(s string) (target.Target, error) {
	switch {
	case k.HostOnly:
		return target.ParseHost(s)
	case k.URL:
		return target.ParseURL(s)
	case k.NameTarget:
		return target.ParseName(s)
	}
	return target.ParseHostPort(s)
}

// Families says which address families targets of o may need: those of literal addresses,
// and for names those the family option asks for.
func Families(targets []target.Target, o *Options) (v4, v6 bool) {
	for _, t := range targets {
		switch {
		case t.IsLiteral():
			v4, v6 = v4 || t.Addr.Is4(), v6 || t.Addr.Is6()
		case o.Family == FamilyV6:
			v6 = true
		case o.Family == FamilyBoth:
			v4, v6 = true, true
		default:
			v4 = true
		}
	}
	return v4, v6
}

func familyOf(a netip.Addr) Family {
	if a.Is4() {
		return FamilyV4
	}
	return FamilyV6
}

func isNumber(s string) bool {
	return s != "" && strings.Trim(s, "0123456789") == ""
}

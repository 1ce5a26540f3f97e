package probe

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/spf13/pflag"

	"reachd/pkg/resolv"
	"reachd/pkg/schedule"
)

// Flags are the options every kind shares, as flags. The CLI binds them to its command line
// and a config file sets the same flags by name (key expect_closed is flag --expect-closed),
// so the two are one vocabulary, checked by one code.
type Flags struct {
	Timeout    time.Duration
	Retries    int
	Family     string
	Interfaces []string
	Source     string
	Mark       uint32
	Resolver   string
	Trace      string
	PMTU       string
}

// Values of --trace.
const (
	TraceOnFailure = "on-failure"
	TraceNever     = "never"
)

// Values of --pmtu.
const (
	PMTUAlways    = "always"
	PMTUOnFailure = "on-failure"
	PMTUNever     = "never"
)

// Defaults of the shared flags (seed 2.1: 3 s per attempt, 3 retries).
const (
	DefaultTimeout = 3 * time.Second
	DefaultRetries = 3
)

// AddFlags binds the shared flags.
func (f *Flags) AddFlags(fs *pflag.FlagSet) {
	fs.DurationVar(&f.Timeout, "timeout", DefaultTimeout, "deadline of each attempt, resolution included")
	fs.IntVar(&f.Retries, "retries", DefaultRetries, "retries after the first attempt, for retryable reasons only")
	fs.StringVar(&f.Family, "family", string(FamilyAny), "address family: any, ipv4, ipv6 or both")
	fs.StringArrayVar(&f.Interfaces, "interface", nil, "send through this interface (SO_BINDTODEVICE); repeat it for one verdict per interface")
	fs.StringVar(&f.Source, "source", "", "source address to bind")
	fs.Uint32Var(&f.Mark, "mark", 0, "SO_MARK of the probe's sockets, for policy routing (needs CAP_NET_ADMIN)")
	fs.StringVar(&f.Trace, "trace", TraceNever, "on silence or a router's ICMP error, trace the probe's own flow hop by hop: on-failure or never (--trace alone: on-failure)")
	fs.Lookup("trace").NoOptDefVal = TraceOnFailure
	fs.StringVar(&f.PMTU, "pmtu", PMTUNever, "search the path MTU with DF packets of falling sizes (TCP segments to a TCP probe's port, else echo requests): mtu_blackhole when full-size ones are lost and no router says why; always (after an answer or silence), on-failure (after silence) or never (--pmtu alone: always)")
	fs.Lookup("pmtu").NoOptDefVal = PMTUAlways
	fs.StringVar(&f.Resolver, "resolver", "system", "who resolves target names: system (/etc/hosts, then each nameserver of /etc/resolv.conf) or a resolver's ADDR[:PORT]")
}

// Options returns the options the flags give, checked in the order the flags are listed
// (of several bad ones, the first is named), without asking the host (Options.CheckHost).
func (f *Flags) Options(probeName string) (*Options, error) {
	o := &Options{Probe: probeName, Timeout: f.Timeout, Interfaces: f.Interfaces, Mark: f.Mark}
	o.Policy = schedule.DefaultPolicy()
	o.Policy.Retries = f.Retries
	fam, err := ParseFamily(f.Family)
	if err != nil {
		return nil, fmt.Errorf("--family %q: want any, ipv4, ipv6 or both", f.Family)
	}
	o.Family = fam
	if err := o.Check(); err != nil { // --timeout, --retries, --interface
		return nil, err
	}
	if f.Source != "" {
		src, err := netip.ParseAddr(f.Source)
		if err != nil {
			return nil, fmt.Errorf("--source %q is not an IP address", f.Source)
		}
		o.Source = src.Unmap()
	}
	if err := o.Check(); err != nil { // --source against the family
		return nil, err
	}
	switch f.Trace {
	case TraceNever, "":
	case TraceOnFailure:
		o.Trace = true
	default:
		return nil, fmt.Errorf("--trace %q: want on-failure or never", f.Trace)
	}
	switch f.PMTU {
	case PMTUNever, "", "false":
	case PMTUAlways, "true":
		o.PMTU = PMTUAlways
	case PMTUOnFailure:
		o.PMTU = PMTUOnFailure
	default:
		return nil, fmt.Errorf("--pmtu %q: want always, on-failure or never", f.PMTU)
	}
	if f.Resolver != "" && f.Resolver != "system" {
		ap, err := parseServer(f.Resolver, 53)
		if err != nil {
			return nil, fmt.Errorf("--resolver %q: want system or a resolver's ADDR[:PORT]", f.Resolver)
		}
		if a := ap.Addr(); a.Is6() && a.IsLinkLocalUnicast() && a.Zone() == "" {
			return nil, fmt.Errorf("--resolver %s is link-local: give its zone ([fe80::53%%eth0]:53)", ap)
		}
		o.Resolver = resolv.Fixed(ap)
	}
	return o, nil
}

package config

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
)

// ResolvConf is where the gateway profile reads the host's nameservers.
const ResolvConf = "/etc/resolv.conf"

// ProfileName is the File of a gateway profile's Config.
const ProfileName = "gateway profile"

// Gateway is a default route's next hop.
type Gateway struct {
	Addr netip.Addr
	Dev  string // the route's interface: the zone of a link-local gateway
}

// Profile is the zero-config gateway profile, as config text ("" when there is nothing
// to probe): this host's default
// gateways (icmp, each family) and the nameservers of resolv.conf (udp, a DNS query),
// with the daemon's defaults. The daemon runs it when there is no config file, and re-reads
// it when the routes or the file change.
func Profile(gateways []Gateway, nameservers []netip.Addr) string {
	var b strings.Builder
	b.WriteString("# reachd's gateway profile: no config file, so this host's default gateways and nameservers.\n")
	b.WriteString("defaults: {interval: 10s, timeout: 2s, retries: 1}\nprobes:\n")
	var gw []string
	seen := map[string]bool{}
	for _, g := range gateways {
		t := g.Addr.String()
		if g.Addr.Is6() && g.Addr.IsLinkLocalUnicast() {
			t = g.Addr.WithZone(g.Dev).String()
		}
		if !seen[t] {
			seen[t] = true
			gw = append(gw, fmt.Sprintf("%q", t))
		}
	}
	if len(gw) > 0 {
		fmt.Fprintf(&b, "  - name: gateway\n    kind: icmp\n    count: 3\n    icmp: {interval: 200ms}\n    targets: [%s]\n", strings.Join(gw, ", "))
	}
	var ns []string
	for _, a := range nameservers {
		ns = append(ns, fmt.Sprintf("%q", netip.AddrPortFrom(a, 53).String()))
	}
	if len(ns) > 0 {
		fmt.Fprintf(&b, "  - name: nameserver\n    kind: udp\n    udp: {payload: dns}\n    targets: [%s]\n", strings.Join(ns, ", "))
	}
	if len(gw) == 0 && len(ns) == 0 {
		return ""
	}
	return b.String()
}

// Nameservers are the addresses of resolv.conf's nameserver lines.
func Nameservers(resolvConf []byte) []netip.Addr {
	var out []netip.Addr
	sc := bufio.NewScanner(bytes.NewReader(resolvConf))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || f[0] != "nameserver" {
			continue
		}
		if a, err := netip.ParseAddr(f[1]); err == nil {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// DefaultGateways reads the next hops of the main table's default routes, both families.
func DefaultGateways() ([]Gateway, error) {
	var out []Gateway
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlink.RouteListFiltered(fam, &netlink.Route{Table: 254}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return nil, fmt.Errorf("list routes: %w", err)
		}
		for _, r := range routes {
			if r.Dst != nil && !isDefault(r.Dst) {
				continue
			}
			hops := []netlink.NexthopInfo{{LinkIndex: r.LinkIndex, Gw: r.Gw}}
			for _, nh := range r.MultiPath {
				hops = append(hops, *nh)
			}
			for _, h := range hops {
				a, ok := netip.AddrFromSlice(h.Gw)
				if !ok {
					continue
				}
				g := Gateway{Addr: a.Unmap()}
				if ifc, err := net.InterfaceByIndex(h.LinkIndex); err == nil {
					g.Dev = ifc.Name
				}
				out = append(out, g)
			}
		}
	}
	return out, nil
}

func isDefault(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}

// ProfileMemory is what a gateway profile has seen. A gateway or nameserver that goes
// away (a withdrawn default route, a rewritten resolv.conf) stays probed: a default route
// is withdrawn when its gateway fails, and forgetting the gateway then would hide the
// failure. A new memory (a SIGHUP) forgets them.
type ProfileMemory struct {
	gateways    []Gateway
	nameservers []netip.Addr
}

// Clone is a copy of m, to try a profile without remembering what it sees.
func (m *ProfileMemory) Clone() *ProfileMemory {
	if m == nil {
		return &ProfileMemory{}
	}
	return &ProfileMemory{gateways: slices.Clone(m.gateways), nameservers: slices.Clone(m.nameservers)}
}

// LoadProfile builds and checks the gateway profile of this host: its default gateways and
// nameservers now, and those mem has seen before (mem may be nil). It returns its text.
func LoadProfile(resolvConf string, mem *ProfileMemory) (*Config, string, error) {
	if mem == nil {
		mem = &ProfileMemory{}
	}
	gws, err := DefaultGateways()
	if err != nil {
		return nil, "", err
	}
	rc, err := os.ReadFile(resolvConf)
	if err != nil && !os.IsNotExist(err) {
		return nil, "", fmt.Errorf("read %s: %w", resolvConf, err)
	}
	for _, g := range gws {
		if !slices.Contains(mem.gateways, g) {
			mem.gateways = append(mem.gateways, g)
		}
	}
	for _, a := range Nameservers(rc) {
		if !slices.Contains(mem.nameservers, a) {
			mem.nameservers = append(mem.nameservers, a)
		}
	}
	text := Profile(mem.gateways, mem.nameservers)
	if text == "" {
		return empty(ProfileName), "", nil
	}
	c, err := Parse(ProfileName, []byte(text))
	return c, text, err
}

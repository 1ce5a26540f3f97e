package resolv

import (
	"bufio"
	"bytes"
	"net/netip"
	"strings"
)

// HostsPath is the system's hosts file.
const HostsPath = "/etc/hosts"

// hosts maps lower-case names (without a trailing dot) to their addresses, in file order.
type hosts map[string][]netip.Addr

// parseHosts reads a hosts file (hosts(5)).
func parseHosts(b []byte) any {
	h := hosts{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		a, err := netip.ParseAddr(f[0])
		if err != nil {
			continue
		}
		a = a.Unmap()
		for _, name := range f[1:] {
			k := strings.ToLower(strings.TrimSuffix(name, "."))
			h[k] = append(h[k], a)
		}
	}
	return h
}

// HostsFile follows a hosts file.
type HostsFile struct{ f file }

// NewHostsFile follows the hosts file at path.
func NewHostsFile(path string) *HostsFile {
	return &HostsFile{file{path: path, recheck: recheck, parse: parseHosts}}
}

// Lookup returns the addresses the file gives name, of the family network asks for ("ip",
// "ip4", "ip6").
func (h *HostsFile) Lookup(network, name string) []netip.Addr {
	var out []netip.Addr
	for _, a := range h.f.get().(hosts)[strings.ToLower(strings.TrimSuffix(name, "."))] {
		if wants(network, a) {
			out = append(out, a)
		}
	}
	return out
}

func wants(network string, a netip.Addr) bool {
	switch network {
	case "ip4":
		return a.Is4()
	case "ip6":
		return a.Is6()
	}
	return true
}

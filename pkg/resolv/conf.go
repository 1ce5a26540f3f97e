// Package resolv is reachd's own stub resolver: the system's resolvers as resolv.conf and
// /etc/hosts name them (followed as the files change), or one resolver the user names. It
// says which resolver answered, and how a resolution failed (the rcode, and from whom),
// which Go's resolver keeps to itself.
package resolv

import (
	"bufio"
	"bytes"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/miekg/dns"
)

// Conf is what resolv.conf says, as far as a stub resolver needs.
type Conf struct {
	Servers []netip.AddrPort // each once, in the file's order
	Search  []string         // search domains, without their trailing dot
	Ndots   int
	Timeout time.Duration // per server
	UseTCP  bool          // options use-vc (or tcp): queries over TCP
	// Defaulted: the file named no usable nameserver, so Servers are the local host's (as
	// glibc and Go do).
	Defaulted bool
	searchSet bool // a search or domain line was there
}

// ConfPath is the system's resolv.conf.
const ConfPath = "/etc/resolv.conf"

// defaultServers are asked when resolv.conf names none (glibc's and Go's default).
var defaultServers = []netip.AddrPort{
	netip.MustParseAddrPort("127.0.0.1:53"),
	netip.MustParseAddrPort("[::1]:53"),
}

// ParseConf reads a resolv.conf (resolv.conf(5)); what it does not understand is passed
// over, as the C library does. A file that names no nameserver means the local host.
func ParseConf(b []byte) Conf {
	c := Conf{Ndots: 1, Timeout: 5 * time.Second}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 || strings.HasPrefix(f[0], "#") || strings.HasPrefix(f[0], ";") {
			continue
		}
		switch f[0] {
		case "nameserver":
			if len(f) < 2 {
				continue
			}
			// A link-local server carries its zone (fe80::1%eth0), as glibc takes it. A
			// server listed twice (DHCP clients write such files) is one server.
			a, err := netip.ParseAddr(f[1])
			if ap := netip.AddrPortFrom(a.Unmap(), 53); err == nil && len(c.Servers) < maxServers && !slices.Contains(c.Servers, ap) {
				c.Servers = append(c.Servers, ap)
			}
		case "search", "domain": // the last of them wins
			c.Search, c.searchSet = nil, true
			for _, d := range f[1:] {
				if d = strings.TrimSuffix(d, "."); isName(d) {
					c.Search = append(c.Search, d)
				}
			}
		case "options":
			c.option(f[1:])
		}
	}
	if len(c.Servers) == 0 {
		c.Servers, c.Defaulted = defaultServers, true
	}
	return c
}

// isName says whether d can be a search domain: a name whose labels fit (a domain that
// cannot be asked would end every search that reaches it).
func isName(d string) bool {
	_, ok := dns.IsDomainName(d)
	return ok && d != "" && len(d) <= 253
}

// withHostDomain is c with the host name's domain as its search list when the file named
// none, as glibc and Go take it.
func (c Conf) withHostDomain(hostname string) Conf {
	if c.searchSet {
		return c
	}
	if _, d, ok := strings.Cut(strings.TrimSuffix(hostname, "."), "."); ok && isName(d) {
		c.Search = []string{d}
	}
	return c
}

// hostname is the host's name, for the default search domain (a variable: tests set it).
var hostname = os.Hostname

// maxServers: the dns kind probes each nameserver listed, bounded so that a mistaken file
// does not become a flood; resolution asks the first three, as glibc (MAXNS) and Go do.
const (
	maxServers  = 16
	stubServers = 3
)

func (c *Conf) option(opts []string) {
	for _, o := range opts {
		k, v, _ := strings.Cut(o, ":")
		if k == "use-vc" || k == "tcp" {
			c.UseTCP = true
			continue
		}
		n, err := strconv.Atoi(v)
		switch {
		case err != nil:
		case k == "ndots":
			c.Ndots = min(max(n, 0), 15)
		case k == "timeout":
			c.Timeout = time.Duration(min(max(n, 1), 30)) * time.Second
		}
	}
}

// file is a file re-read when it changes: its identity (device, inode), size and time
// of change are compared at most every recheck, as the C library does, so that a daemon
// follows an edited or replaced file without reading it each query.
type file struct {
	path    string
	recheck time.Duration
	parse   func([]byte) any

	mu      sync.Mutex
	checked time.Time
	stamp   stamp
	val     any
}

type stamp struct {
	dev, ino uint64
	size     int64
	mtime    syscall.Timespec
	ctime    syscall.Timespec
	missing  bool
}

// recheck is how long a file read is trusted before it is looked at again.
const recheck = time.Second

func (f *file) get() any {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	if f.val != nil && now.Sub(f.checked) < f.recheck {
		return f.val
	}
	f.checked = now
	var st syscall.Stat_t
	var s stamp
	if err := syscall.Stat(f.path, &st); err != nil {
		s.missing = true
	} else {
		s = stamp{dev: st.Dev, ino: st.Ino, size: st.Size, mtime: st.Mtim, ctime: st.Ctim}
	}
	if f.val != nil && s == f.stamp {
		return f.val
	}
	b, _ := os.ReadFile(f.path) // a missing or unreadable file is an empty one
	f.val, f.stamp = f.parse(b), s
	return f.val
}

// ConfFile follows a resolv.conf.
type ConfFile struct{ f file }

// NewConfFile follows the resolv.conf at path.
func NewConfFile(path string) *ConfFile {
	return &ConfFile{file{path: path, recheck: recheck, parse: func(b []byte) any {
		h, _ := hostname()
		return ParseConf(b).withHostDomain(h)
	}}}
}

// Path is the file followed.
func (c *ConfFile) Path() string { return c.f.path }

// Conf is the file as it is now (read again if it changed).
func (c *ConfFile) Conf() Conf { return c.f.get().(Conf) }

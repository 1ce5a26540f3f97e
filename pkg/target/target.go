// Package target parses probe targets as users write them: HOST, HOST:PORT, [V6]:PORT,
// link-local addresses with their zone, and http(s) URLs.
package target

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// Target is a parsed HOST[:PORT] or URL. Exactly one of Name and Addr is set.
type Target struct {
	Raw  string     // as the user wrote it
	Name string     // a host name to resolve, without trailing dot handling
	Addr netip.Addr // an address literal, zone included (fe80::1%eth0)
	Port uint16     // 0 when the kind takes no port
	URL  *url.URL   // the whole URL, for kinds whose targets are URLs; else nil
}

// IsLiteral reports whether the host is an address literal (no resolution needed).
func (t Target) IsLiteral() bool { return t.Addr.IsValid() }

// Host returns the host part as written, without brackets.
func (t Target) Host() string {
	if t.IsLiteral() {
		return t.Addr.String()
	}
	return t.Name
}

// ParseHostPort parses HOST:PORT, [V6]:PORT or [fe80::1%eth0]:PORT.
func ParseHostPort(s string) (Target, error) {
	t := Target{Raw: s}
	if s == "" {
		return t, errors.New("empty target (want HOST:PORT)")
	}
	if scheme, rest, ok := strings.Cut(s, "://"); ok {
		host := strings.SplitN(rest, "/", 2)[0]
		if _, _, err := net.SplitHostPort(host); err != nil {
			host = net.JoinHostPort(strings.Trim(host, "[]"), map[string]string{"http": "80"}[scheme]+map[string]string{"https": "443"}[scheme])
		}
		return t, fmt.Errorf("target %q is a URL; this kind takes HOST:PORT (e.g. %s), and URLs are for the http kind", s, host)
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		var ae *net.AddrError
		switch {
		case errors.As(err, &ae) && ae.Err == "missing port in address":
			return t, fmt.Errorf("target %q has no port (want HOST:PORT, e.g. %s:443)", s, hintHost(s))
		case errors.As(err, &ae) && ae.Err == "too many colons in address":
			return t, fmt.Errorf("target %q is not HOST:PORT (write IPv6 addresses in brackets: [2001:db8::1]:443)", s)
		default:
			return t, fmt.Errorf("target %q is not HOST:PORT: %s", s, strings.TrimPrefix(err.Error(), "address "+s+": "))
		}
	}
	p, err := parsePort(port)
	if err != nil {
		return t, fmt.Errorf("target %q: %w", s, err)
	}
	t.Port = p
	bracketed := strings.HasPrefix(s, "[")
	if err := t.setHost(host, bracketed); err != nil {
		return t, fmt.Errorf("target %q: %w", s, err)
	}
	return t, nil
}

// ParseHost parses a bare HOST, V6 or fe80::1%eth0 (kinds without a port).
func ParseHost(s string) (Target, error) {
	t := Target{Raw: s}
	if s == "" {
		return t, errors.New("empty target (want HOST)")
	}
	host := s
	if h, _, err := net.SplitHostPort(s); err == nil {
		return t, fmt.Errorf("target %q has a port, but this kind takes a host only (e.g. %s)", s, h)
	}
	bracketed := strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]")
	if bracketed {
		host = s[1 : len(s)-1]
	}
	if err := t.setHost(host, bracketed); err != nil {
		return t, fmt.Errorf("target %q: %w", s, err)
	}
	return t, nil
}

// ParseName parses a name to look up (the dns kind): a host name, the root ".", or an
// address (whose reverse name is looked up).
func ParseName(s string) (Target, error) {
	if s == "." {
		return Target{Raw: s, Name: s}, nil
	}
	t, err := ParseHost(s)
	if err != nil && strings.Contains(err.Error(), "has a port") {
		return t, fmt.Errorf("target %q has a port, but this kind takes a name (give the resolver with --server ADDR:PORT)", s)
	}
	return t, err
}

func hintHost(s string) string {
	if strings.Contains(s, ":") {
		return "[" + s + "]"
	}
	return s
}

func parsePort(p string) (uint16, error) {
	if p == "" {
		return 0, errors.New("empty port")
	}
	n, err := strconv.ParseUint(p, 10, 32)
	if err != nil {
		if strings.IndexFunc(p, func(r rune) bool { return r < '0' || r > '9' }) < 0 {
			return 0, fmt.Errorf("port %s is out of range 1-65535", p)
		}
		// Service names come from /etc/services only: no network is asked.
		// LookupPort also takes signed numbers ("+" is port 0): a service name starts
		// with a letter.
		sp, lerr := net.LookupPort("tcp", p)
		if lerr != nil || sp < 1 || sp > 65535 || !isLetter(p[0]) {
			return 0, fmt.Errorf("unknown port or service %q", p)
		}
		return uint16(sp), nil
	}
	if n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %d is out of range 1-65535", n)
	}
	return uint16(n), nil
}

func (t *Target) setHost(host string, bracketed bool) error {
	if host == "" {
		return errors.New("empty host")
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Is4() && bracketed {
			return errors.New("brackets are for IPv6 addresses only")
		}
		if a.Is4In6() && a.Zone() == "" {
			a = a.Unmap()
		}
		if z := a.Zone(); z != "" && !validZone(z) {
			return fmt.Errorf("zone %q is not an interface name or index", z)
		}
		t.Addr = a
		return nil
	} else if bracketed || strings.Contains(host, ":") {
		return fmt.Errorf("invalid IPv6 address %q", host)
	}
	if err := checkName(host); err != nil {
		return err
	}
	t.Name = host
	return nil
}

// checkName accepts DNS names (RFC 1123 labels, plus '_' which real zones use).
func checkName(name string) error {
	n := strings.TrimSuffix(name, ".")
	if len(n) == 0 || len(n) > 253 {
		return fmt.Errorf("invalid host name %q", name)
	}
	for _, label := range strings.Split(n, ".") {
		if len(label) == 0 || len(label) > 63 {
			return fmt.Errorf("invalid host name %q: empty or over-long label", name)
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("invalid host name %q: label %q starts or ends with '-'", name, label)
		}
		for _, c := range label {
			ok := c == '-' || c == '_' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
			if !ok {
				return fmt.Errorf("invalid host name %q: character %q", name, c)
			}
		}
	}
	if _, err := strconv.Atoi(strings.ReplaceAll(n, ".", "")); err == nil {
		return fmt.Errorf("invalid IPv4 address %q", name)
	}
	return nil
}

func isLetter(c byte) bool { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') }

// validZone accepts what can name a Linux interface (at most 15 bytes, printable, no
// space, '/' or ':') or an interface index.
func validZone(z string) bool {
	if len(z) > 15 {
		return false
	}
	for i := 0; i < len(z); i++ {
		if c := z[i]; c <= ' ' || c > '~' || c == '/' || c == ':' {
			return false
		}
	}
	return true
}

package resolv

import (
	"testing"
	"time"
)

// FuzzParseConf: any resolv.conf parses without a panic into a usable configuration.
func FuzzParseConf(f *testing.F) {
	f.Add([]byte("search a.example b.example\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\noptions ndots:3 timeout:2 attempts:4\n"))
	f.Add([]byte("nameserver\noptions ndots:-1 timeout:99999999999999999999\ndomain .\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		c := ParseConf(b)
		if len(c.Servers) == 0 || len(c.Servers) > maxServers || c.Ndots < 0 || c.Ndots > 15 ||
			c.Timeout < time.Second || c.Timeout > 30*time.Second {
			t.Fatalf("%q parsed to %+v", b, c)
		}
		for _, s := range c.Servers {
			if !s.IsValid() || s.Port() == 0 {
				t.Fatalf("%q: server %v", b, s)
			}
		}
	})
}

// FuzzParseHosts: any hosts file parses without a panic; every name maps to addresses.
func FuzzParseHosts(f *testing.F) {
	f.Add([]byte("127.0.0.1 localhost\n::1 localhost ip6-localhost # comment\n192.0.2.7 www.example.net. WWW\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		for name, addrs := range parseHosts(b).(hosts) {
			if len(addrs) == 0 {
				t.Fatalf("%q: %q has no address", b, name)
			}
		}
	})
}

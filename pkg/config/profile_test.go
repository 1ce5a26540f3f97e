package config

import (
	"net/netip"
	"strings"
	"testing"
)

// TestProfile: the default gateways (a link-local one with its interface as zone) and the
// nameservers become a valid config; duplicates and junk lines are left out.
func TestProfile(t *testing.T) {
	gws := []Gateway{
		{Addr: netip.MustParseAddr("198.51.100.1"), Dev: "wan0"},
		{Addr: netip.MustParseAddr("fe80::1"), Dev: "wan0"},
		{Addr: netip.MustParseAddr("198.51.100.1"), Dev: "wan0"}, // a second default route via the same hop
	}
	rc := []byte("# comment\nsearch example.net\nnameserver 198.51.100.53\nnameserver 2001:db8::53\nnameserver bogus\noptions edns0\n")
	text := Profile(gws, Nameservers(rc))
	c, err := Parse(ProfileName, []byte(text))
	if err != nil {
		t.Fatalf("%v\n%s", err, text)
	}
	if len(c.Probes) != 2 {
		t.Fatalf("%d probes:\n%s", len(c.Probes), text)
	}
	var got []string
	for _, p := range c.Probes {
		for _, tg := range p.Targets {
			got = append(got, p.Name+" "+tg.Raw)
		}
	}
	want := "gateway 198.51.100.1,gateway fe80::1%wan0,nameserver 198.51.100.53:53,nameserver [2001:db8::53]:53"
	if strings.Join(got, ",") != want {
		t.Errorf("targets %q, want %q", strings.Join(got, ","), want)
	}
	if Profile(nil, nil) != "" {
		t.Error("nothing to probe gives a profile")
	}
}

// TestProfileMemoryCloneNil: a daemon forgets its profile memory on SIGHUP (nil until the
// profile is loaded again); following the profile meanwhile clones it.
func TestProfileMemoryCloneNil(t *testing.T) {
	var m *ProfileMemory
	if c := m.Clone(); c == nil {
		t.Fatal("Clone of nil memory: want an empty memory")
	}
}

package target

import (
	"strings"
	"testing"
)

func TestParseHostPort(t *testing.T) {
	good := []struct {
		in, host string
		port     uint16
		literal  bool
		zone     string
	}{
		{"198.51.100.7:80", "198.51.100.7", 80, true, ""},
		{"[2001:db8::1]:443", "2001:db8::1", 443, true, ""},
		{"[fe80::1%eth0]:22", "fe80::1", 22, true, "eth0"},
		{"[fe80::1%3]:22", "fe80::1", 22, true, "3"},
		{"example.net:8080", "example.net", 8080, false, ""},
		{"example.net.:1", "example.net.", 1, false, ""},
		{"_srv.example.net:65535", "_srv.example.net", 65535, false, ""},
		{"[::ffff:198.51.100.7]:80", "198.51.100.7", 80, true, ""},
		{"localhost:https", "localhost", 443, false, ""},
	}
	for _, g := range good {
		tg, err := ParseHostPort(g.in)
		if err != nil {
			t.Errorf("%q: %v", g.in, err)
			continue
		}
		if tg.Port != g.port || tg.IsLiteral() != g.literal || tg.Raw != g.in {
			t.Errorf("%q: got %+v", g.in, tg)
		}
		if h := tg.Host(); g.literal && tg.Addr.WithZone("").String() != g.host || !g.literal && h != g.host {
			t.Errorf("%q: host %q want %q", g.in, h, g.host)
		}
		if g.literal && tg.Addr.Zone() != g.zone {
			t.Errorf("%q: zone %q want %q", g.in, tg.Addr.Zone(), g.zone)
		}
	}
}

func TestParseHostPortErrors(t *testing.T) {
	bad := map[string]string{
		"bad::target":      "brackets",
		"host":             "no port",
		"x:99999":          "out of range",
		"x:0":              "out of range",
		"x:-1":             "unknown port",
		"x:nosuchservice":  "unknown port",
		"":                 "empty",
		":80":              "empty host",
		"[198.51.100.1]:1": "IPv6 addresses only",
		"[not-v6]:1":       "invalid IPv6",
		"a..b:1":           "label",
		"-a.b:1":           "starts or ends",
		"a b:1":            "character",
		"999.1.1.1:1":      "invalid IPv4",
		"host:":            "empty port",
		"2001:db8::1:80":   "brackets",
	}
	for in, want := range bad {
		_, err := ParseHostPort(in)
		if err == nil {
			t.Errorf("%q: no error", in)
			continue
		}
		if !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%q: error %q, want one line mentioning %q", in, err, want)
		}
	}
}

func TestParseHost(t *testing.T) {
	for _, in := range []string{"198.51.100.7", "2001:db8::1", "[2001:db8::1]", "fe80::1%eth0", "example.net"} {
		if _, err := ParseHost(in); err != nil {
			t.Errorf("%q: %v", in, err)
		}
	}
	for _, in := range []string{"", "[198.51.100.7]", "a b", "2001:db8::zz", "198.51.100.7:80", "[2001:db8::1]:80", "fe80::1%eth0\x01", "fe80::1%a/b"} {
		if _, err := ParseHost(in); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
}

func FuzzParseHostPort(f *testing.F) {
	for _, s := range []string{"198.51.100.7:80", "[fe80::1%eth0]:22", "bad::target", "x:99999", "a.b:http"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tg, err := ParseHostPort(s)
		if err != nil {
			return
		}
		if tg.Port == 0 || (tg.Name == "") == !tg.IsLiteral() {
			t.Fatalf("%q parsed to inconsistent %+v", s, tg)
		}
	})
}

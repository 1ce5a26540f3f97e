package target

import (
	"strings"
	"testing"
)

func TestParseURL(t *testing.T) {
	for _, c := range []struct {
		in, host, addr string
		port           uint16
		path           string
	}{
		{"https://example.net", "example.net", "", 443, "/"},
		{"http://example.net/health?x=1", "example.net", "", 80, "/health"},
		{"HTTPS://Example.net:8443/a", "Example.net", "", 8443, "/a"},
		{"http://198.51.100.7:8080/", "", "198.51.100.7", 8080, "/"},
		{"https://[2001:db8::1]/", "", "2001:db8::1", 443, "/"},
		{"http://[fe80::1%25eth0]:80/", "", "fe80::1%eth0", 80, "/"},
	} {
		tg, err := ParseURL(c.in)
		if err != nil {
			t.Errorf("%s: %v", c.in, err)
			continue
		}
		addr := ""
		if tg.IsLiteral() {
			addr = tg.Addr.String()
		}
		if tg.Name != c.host || addr != c.addr || tg.Port != c.port || tg.URL.Path != c.path || tg.Raw != c.in {
			t.Errorf("%s: got %+v (path %q)", c.in, tg, tg.URL.Path)
		}
	}
	for _, c := range []struct{ in, want string }{
		{"example.net/health", "has no scheme"},
		{"https:///x", "has no host"},
		{"ftp://example.net/", `scheme "ftp" is not http or https`},
		{"https://user:pw@example.net/", "carries credentials"},
		{"http://example.net:0/", "out of range"},
		{"http://example.net:/", "empty port"},
		{"http://exa mple.net/", "not a URL"},
		{"", "empty target"},
	} {
		if _, err := ParseURL(c.in); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: got %v, want ~%q", c.in, err, c.want)
		}
	}
	if _, err := ParseHostPort("https://example.net/"); err == nil || !strings.Contains(err.Error(), "is a URL") {
		t.Errorf("a URL as HOST:PORT: %v", err)
	}
}

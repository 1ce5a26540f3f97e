package config

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"reachd/pkg/probe"
)

func TestContractExample(t *testing.T) {
	c, err := Load("testdata/contract.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Probes) != 2 {
		t.Fatalf("%d probes, want 2", len(c.Probes))
	}
	up, ntp := c.Probes[0], c.Probes[1]
	if up.Name != "uplink" || up.Kind.Name != "icmp" || up.Interval != 5*time.Second || len(up.Targets) != 2 || up.Line != 8 {
		t.Errorf("uplink: %+v", up)
	}
	if up.Options.Timeout != 3*time.Second || up.Options.Policy.Retries != 1 || up.Labels["site"] != "fra1" {
		t.Errorf("uplink options: %+v labels %v", up.Options, up.Labels)
	}
	if !strings.Contains(up.Settings, "count=3") {
		t.Errorf("uplink settings %q: count not applied", up.Settings)
	}
	if ntp.Interval != DefaultInterval || ntp.Options.Mark != 0x10 || strings.Join(ntp.Options.Interfaces, ",") != "wan1,wan2" {
		t.Errorf("ntp: interval %s options %+v", ntp.Interval, ntp.Options)
	}
	if u, ok := ntp.Options.Kind.(*probe.UDPOptions); !ok || u.Builtin != "ntp" {
		t.Errorf("ntp kind options %#v", ntp.Options.Kind)
	}
	if c.Metrics.Listen != "127.0.0.1:9798" || c.Log.Verdicts != VerdictsChanges || c.Concurrency != DefaultConcurrency {
		t.Errorf("config %+v", c)
	}
}

const head = "probes:\n  - name: p\n"

// badConfigs are invalid files, each with the one error it must give (LINE:COL: message).
var badConfigs = []struct {
	name, src string
	want      string
}{
	{"syntax", "probes: [\n", "1:9: YAML: sequence end token ']' not found"},
	{"empty", "", "1:1: the file is empty: a config has probes (see docs/config.md)"},
	{"unknown top key", "probe:\n  - name: p\n", "1:1: unknown key \"probe\" (did you mean probes?)"},
	{"no probes", "log: {json: off}\n", "1:4: no probes: a config has a probes list (see docs/config.md)"},
	{"probes not a list", "probes: {name: p}\n", "1:9: probes: want a list, got a mapping"},
	{"probes with no value", "probes:\n", "1:1: probes: want a list of probes, got nothing"},
	{"probes null", "probes: ~\n", "1:1: probes: want a list of probes, got nothing"},
	{"kind with no value", head + "    kind:\n    targets: [198.51.100.1]\n", "3:5: kind: want one of tcp, icmp, udp, dns, http, tls, line, got nothing"},
	{"unknown probe key", head + "    kind: tcp\n    targets: [\"198.51.100.1:80\"]\n    intervall: 5s\n",
		"5:5: unknown key \"intervall\" in a probe (did you mean interval?)"},
	{"unknown key on line 7", head + "    kind: tcp\n    targets: [\"198.51.100.1:80\"]\n    interval: 5s\n    timeout: 1s\n    colour: red\n",
		"7:5: unknown key \"colour\" in a probe"},
	{"wrong type", head + "    kind: tcp\n    targets: [\"198.51.100.1:80\"]\n    retries: many\n",
		"5:14: retries: want an integer, got \"many\""},
	{"duration without unit", head + "    kind: tcp\n    targets: [\"198.51.100.1:80\"]\n    timeout: 5\n",
		"5:14: timeout: want a duration such as 500ms or 3s, got \"5\""},
	{"duplicate probe name", head + "    kind: tcp\n    targets: [\"198.51.100.1:80\"]\n  - name: p\n    kind: icmp\n    targets: [198.51.100.1]\n",
		"5:11: probe name \"p\" is used twice (first at line 2)"},
	{"duplicate key", head + "    kind: tcp\n    kind: icmp\n", "4:5: duplicate key \"kind\" (first at line 3)"},
	{"bad name", "probes:\n  - name: Uplink\n    kind: icmp\n    targets: [198.51.100.1]\n",
		"2:11: probe name \"Uplink\": want lower-case letters, digits and _ . -"},
	{"no name", "probes:\n  - kind: icmp\n    targets: [198.51.100.1]\n", "2:5: probes[0]: every probe needs a name"},
	{"unknown kind", head + "    kind: smtp\n    targets: [\"198.51.100.1:25\"]\n", "3:11: kind \"smtp\": want one of tcp, icmp, udp, dns, http, tls, line"},
	{"bad target", head + "    kind: tcp\n    targets: [198.51.100.1]\n",
		"4:15: target \"198.51.100.1\" has no port (want HOST:PORT, e.g. 198.51.100.1:443)"},
	{"target of the wrong family", head + "    kind: icmp\n    family: ipv6\n    targets: [198.51.100.1]\n",
		"5:15: target \"198.51.100.1\" is ipv4 but the family asked for is ipv6"},
	{"link-local without zone", head + "    kind: icmp\n    targets: [\"fe80::1\"]\n",
		"4:15: target \"fe80::1\" is link-local: give its zone (fe80::1%eth0) or interface"},
	{"no targets", head + "    kind: icmp\n", "2:5: probe \"p\" has no targets"},
	{"duplicate target", head + "    kind: icmp\n    targets: [198.51.100.1, 198.51.100.1]\n",
		"4:29: target \"198.51.100.1\" is listed twice"},
	{"timeout longer than interval", head + "    kind: tcp\n    targets: [\"198.51.100.1:80\"]\n    interval: 2s\n    timeout: 5s\n",
		"5:15: timeout 5s is longer than the interval 2s: an attempt must end before the next is due"},
	{"timeout from defaults longer than interval", "defaults: {timeout: 5s}\n" + head + "    kind: tcp\n    targets: [\"198.51.100.1:80\"]\n    interval: 2s\n",
		"6:15: timeout 5s is longer than the interval 2s: an attempt must end before the next is due"},
	{"packets longer than interval", head + "    kind: icmp\n    targets: [198.51.100.1]\n    interval: 3s\n    count: 3\n    icmp: {interval: 1s}\n",
		"5:15: an attempt takes up to 5s (timeout and the packets' intervals), longer than the interval 3s"},
	{"option the kind does not take", head + "    kind: tcp\n    targets: [\"198.51.100.1:80\"]\n    count: 3\n",
		"5:5: count: kind tcp sends one packet an attempt; count is for kinds that send several"},
	{"another kind's options", head + "    kind: icmp\n    targets: [198.51.100.1]\n    udp: {payload: ntp}\n",
		"5:5: udp options on probe \"p\" of kind icmp"},
	{"unknown kind option", head + "    kind: udp\n    targets: [\"198.51.100.1:123\"]\n    udp: {paylod: ntp}\n",
		"5:11: kind udp has no option \"paylod\" (did you mean payload?)"},
	{"dashed kind option", head + "    kind: udp\n    targets: [\"198.51.100.1:123\"]\n    udp: {expect-closed: true}\n",
		"5:11: kind udp has no option \"expect-closed\" (did you mean expect_closed?)"},
	{"kind check, words as keys", head + "    kind: udp\n    targets: [\"198.51.100.1:123\"]\n    udp: {payload: ntp, payload_hex: \"00\"}\n",
		"5:20: payload and payload_hex exclude each other"},
	{"bad family", head + "    kind: icmp\n    targets: [198.51.100.1]\n    family: ip4\n",
		"5:13: family \"ip4\": want any, ipv4, ipv6 or both"},
	{"source of the other family", head + "    kind: icmp\n    targets: [198.51.100.1]\n    family: ipv6\n    source: 198.51.100.2\n",
		"6:13: source 198.51.100.2 is ipv4 but the family asked for is ipv6"},
	{"bad interface name", head + "    kind: icmp\n    targets: [198.51.100.1]\n    interface: [wan1, \"a/b\"]\n",
		"5:16: interface \"a/b\": not an interface name"},
	{"a list for one value", head + "    kind: icmp\n    targets: [198.51.100.1]\n    timeout: [1s, 2s]\n",
		"5:14: timeout: want a duration such as 500ms or 3s, got a list"},
	{"mark out of range", head + "    kind: icmp\n    targets: [198.51.100.1]\n    mark: 0x100000000\n",
		"5:11: mark: want an integer from 0 to 4294967295 (0x10 is 16), got \"0x100000000\""},
	{"reserved label", head + "    kind: icmp\n    targets: [198.51.100.1]\n    labels: {target: x}\n",
		"5:14: label \"target\" is one of reachd's own metric labels (probe, kind, target, family, interface, dns_server, reason, le, quantile, job, instance)"},
	{"bad label key", head + "    kind: icmp\n    targets: [198.51.100.1]\n    labels: {Site: x}\n",
		"5:14: label \"Site\": want at most 32 lower-case letters, digits and _, starting with a letter"},
	{"defaults with a name", "defaults: {name: x}\n" + head + "    kind: icmp\n    targets: [198.51.100.1]\n",
		"1:12: defaults.name: each probe has its own name"},
	{"bad listen", "metrics: {listen: localhost}\n" + head + "    kind: icmp\n    targets: [198.51.100.1]\n",
		"1:19: metrics.listen \"localhost\": want host:port (\"\" turns the endpoint off)"},
	{"bad verdicts mode", "log: {verdicts: some}\n" + head + "    kind: icmp\n    targets: [198.51.100.1]\n",
		"1:17: log.verdicts \"some\": want changes, failures or all"},
	{"relative log file", "log: {json: reachd.log}\n" + head + "    kind: icmp\n    targets: [198.51.100.1]\n",
		"1:13: log.json \"reachd.log\": want stdout, off or an absolute file path"},
	{"concurrency zero", "concurrency: 0\n" + head + "    kind: icmp\n    targets: [198.51.100.1]\n",
		"1:14: concurrency: want an integer from 1 to 65536, got \"0\""},
	{"count twice", head + "    kind: icmp\n    targets: [198.51.100.1]\n    count: 2\n    icmp: {count: 3}\n",
		"6:12: count is set twice in this probe (also at line 5)"},
	{"a number quoted", head + "    kind: tcp\n    targets: [\"198.51.100.1:80\"]\n    retries: \"3\"\n",
		"5:14: retries: want an integer, got \"3\""},
	{"a switch that is not true or false", "no_ebpf: yes\n" + head + "    kind: icmp\n    targets: [198.51.100.1]\n",
		"1:10: no_ebpf: want true or false, got \"yes\""},
	{"timeout of the probe, interval inherited", "defaults: {interval: 5s}\n" + head + "    kind: tcp\n    targets: [\"198.51.100.1:80\"]\n    timeout: 10s\n",
		"6:14: timeout 10s is longer than the interval 5s: an attempt must end before the next is due"},
	{"a kind with no options", head + "    kind: tcp\n    targets: [\"198.51.100.1:80\"]\n    tcp: {nope: 1}\n",
		"5:11: kind tcp has no option \"nope\" (it takes no options of its own)"},
	{"nesting", "probes: " + strings.Repeat("[", 65) + "\n", "1:1: [ and { nested deeper than 64"},
	{"unknown alias", head + "    kind: icmp\n    targets: *t\n", "4:14: alias *t names no anchor defined before it"},
	{"merge key", "defaults: &d {timeout: 1s}\n" + head + "    <<: *d\n    kind: icmp\n    targets: [198.51.100.1]\n",
		"4:5: probes[0]: merge keys (<<) are not supported; shared settings go under defaults"},
}

// TestBadConfigs: every invalid file gives its exact message at its line and column, and
// nothing else.
func TestBadConfigs(t *testing.T) {
	cases := badConfigs
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("bad.yaml", []byte(c.src))
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("err %v (%T), want Errors", err, err)
			}
			if got := err.Error(); got != "bad.yaml:"+c.want {
				t.Errorf("got\n  %s\nwant\n  bad.yaml:%s\nsource:\n%s", got, c.want, c.src)
			}
		})
	}
}

// TestEveryErrorReported: several mistakes in one file are each reported, in line order.
func TestEveryErrorReported(t *testing.T) {
	src := "log: {verdicts: some}\nprobes:\n  - name: a\n    kind: tcp\n    targets: [x]\n  - name: b\n    kind: icmp\n    targets: [198.51.100.1]\n    colour: red\n"
	_, err := Parse("f.yaml", []byte(src))
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 3 {
		t.Fatalf("want 3 errors, got %v", err)
	}
	for i, line := range []int{1, 5, 9} {
		if errs[i].Line != line {
			t.Errorf("error %d at line %d, want %d: %v", i, errs[i].Line, line, errs[i])
		}
	}
}

// TestAnchors: an anchored list may be reused by alias.
func TestAnchors(t *testing.T) {
	src := "probes:\n  - name: a\n    kind: icmp\n    targets: &hosts [198.51.100.1, 198.51.100.2]\n  - name: b\n    kind: icmp\n    family: ipv4\n    targets: *hosts\n"
	c, err := Parse("a.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Probes[1].Targets) != 2 {
		t.Errorf("alias gave %v", c.Probes[1].Targets)
	}
}

// TestSettingsIdentity: the same probe written differently (a default, or in the kind's
// block) has the same settings, and so does one with other targets; a changed option does
// not.
func TestSettingsIdentity(t *testing.T) {
	parse := func(src string) *Probe {
		t.Helper()
		c, err := Parse("s.yaml", []byte(src))
		if err != nil {
			t.Fatal(err)
		}
		return c.Probes[0]
	}
	base := parse("probes:\n  - {name: a, kind: icmp, targets: [198.51.100.1], count: 3, timeout: 1s}\n")
	same := parse("defaults: {timeout: 1s}\nprobes:\n  - {name: a, kind: icmp, targets: [198.51.100.1], icmp: {count: 3}}\n")
	moved := parse("probes:\n  - {name: a, kind: icmp, targets: [198.51.100.2], count: 3, timeout: 1s}\n")
	other := parse("probes:\n  - {name: a, kind: icmp, targets: [198.51.100.1], count: 3, timeout: 2s}\n")
	if base.Settings != same.Settings || base.Settings != moved.Settings {
		t.Errorf("same probe, different settings:\n%s\n%s\n%s", base.Settings, same.Settings, moved.Settings)
	}
	if base.Settings == other.Settings {
		t.Errorf("another timeout, same settings: %s", base.Settings)
	}
}

// TestEveryErrorOfAProbe: a probe's errors are all reported: a bad value, a bad target,
// and its name used twice; a bad default once, not once per probe.
func TestEveryErrorOfAProbe(t *testing.T) {
	src := "defaults: {timeout: banana}\nprobes:\n  - {name: a, kind: icmp, targets: [198.51.100.1]}\n  - {name: a, kind: tcp, mark: -1, targets: [x]}\n"
	_, err := Parse("f.yaml", []byte(src))
	want := "f.yaml:1:21: timeout: want a duration such as 500ms or 3s, got \"banana\"\n" +
		"f.yaml:4:12: probe name \"a\" is used twice (first at line 3)\n" +
		"f.yaml:4:32: mark: want an integer from 0 to 4294967295 (0x10 is 16), got \"-1\"\n" +
		"f.yaml:4:46: target \"x\" has no port (want HOST:PORT, e.g. x:443)"
	if err == nil || err.Error() != want {
		t.Errorf("got\n%v\nwant\n%s", err, want)
	}
}

// TestLoadRefusesWhatIsNotAFile: a directory, a device or a huge file is refused with a
// message, before anything is read into memory.
func TestLoadRefusesWhatIsNotAFile(t *testing.T) {
	big := t.TempDir() + "/big.yaml"
	if err := os.WriteFile(big, make([]byte, MaxSize+1), 0o644); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		t.TempDir(): "is not a regular file",
		"/dev/zero": "is not a regular file",
		big:         "a config is at most",
	} {
		if _, err := Load(path); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", path, err, want)
		}
	}
}

// TestDNSProbeConfig: a dns probe lists its servers under dns; a resolver in defaults
// is for the other kinds (a dns probe asks its own servers), and one a dns probe sets
// itself is an error at its line.
func TestDNSProbeConfig(t *testing.T) {
	good := "defaults: {resolver: \"198.51.100.53\"}\nprobes:\n" +
		"  - {name: d, kind: dns, targets: [www.example.net], dns: {server: [\"198.51.100.53\", \"[2001:db8::53]:5353\"], type: AAAA}}\n" +
		"  - {name: w, kind: tcp, targets: [\"www.example.net:443\"]}\n"
	c, err := Parse("good.yaml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	d, w := c.Probes[0].Options, c.Probes[1].Options
	if o, ok := d.Kind.(*probe.DNSOptions); !ok || len(o.Servers) != 2 || d.Resolver != nil || w.Resolver == nil {
		t.Fatalf("dns options %+v, resolvers %v and %v", d.Kind, d.Resolver, w.Resolver)
	}
	bad := "probes:\n  - {name: d, kind: dns, resolver: \"198.51.100.53\", targets: [www.example.net]}\n"
	if _, err := Parse("bad.yaml", []byte(bad)); err == nil || !strings.Contains(err.Error(), "bad.yaml:2:") || !strings.Contains(err.Error(), "with server") {
		t.Fatalf("a dns probe's own resolver: %v", err)
	}
	dup := "probes:\n  - {name: d, kind: dns, targets: [www.example.net], dns: {server: [\"198.51.100.53\", \"198.51.100.53:53\"]}}\n"
	if _, err := Parse("dup.yaml", []byte(dup)); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Fatalf("a server given twice: %v", err)
	}
}

// TestTraceConfig: trace in defaults is for every kind, and a probe may turn it off; a bad
// value is an error at its line.
func TestTraceConfig(t *testing.T) {
	good := "defaults: {trace: on-failure}\nprobes:\n  - {name: w, kind: tcp, targets: [\"198.51.100.1:443\"]}\n  - {name: p, kind: icmp, targets: [198.51.100.1]}\n" +
		"  - {name: u, kind: udp, trace: never, targets: [\"198.51.100.1:53\"]}\n"
	c, err := Parse("good.yaml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if !c.Probes[0].Options.Trace || !c.Probes[1].Options.Trace || c.Probes[2].Options.Trace {
		t.Fatalf("trace: tcp %v, icmp %v, udp %v", c.Probes[0].Options.Trace, c.Probes[1].Options.Trace, c.Probes[2].Options.Trace)
	}
	if _, err := Parse("bad.yaml", []byte("probes:\n  - {name: w, kind: tcp, trace: sometimes, targets: [\"198.51.100.1:443\"]}\n")); err == nil || !strings.Contains(err.Error(), "bad.yaml:2:") {
		t.Fatalf("a bad trace value: %v", err)
	}
}

// TestPMTUConfig: pmtu takes always, on-failure or never; always searches after every
// answer, so the interval must leave room for the search too.
func TestPMTUConfig(t *testing.T) {
	good := "defaults: {pmtu: on-failure}\nprobes:\n  - {name: w, kind: http, targets: [\"http://198.51.100.1/\"]}\n  - {name: p, kind: icmp, pmtu: always, interval: 30s, targets: [198.51.100.1]}\n"
	c, err := Parse("good.yaml", []byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if c.Probes[0].Options.PMTU != "on-failure" || c.Probes[1].Options.PMTU != "always" {
		t.Fatalf("pmtu: %q %q", c.Probes[0].Options.PMTU, c.Probes[1].Options.PMTU)
	}
	for _, bad := range []string{
		"probes:\n  - {name: p, kind: icmp, pmtu: sometimes, targets: [198.51.100.1]}\n",
		"probes:\n  - {name: p, kind: icmp, pmtu: always, interval: 5s, targets: [198.51.100.1]}\n",
	} {
		if _, err := Parse("bad.yaml", []byte(bad)); err == nil || !strings.Contains(err.Error(), "bad.yaml:2:") {
			t.Errorf("%q: %v", bad, err)
		}
	}
}

package lab

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestDaemonGatewayProfile: with no config file, the daemon probes the host's default
// gateways (both families, a link-local one through its interface) and resolv.conf's
// nameservers, says so at start, and follows changes of the routes and of the file.
func TestDaemonGatewayProfile(t *testing.T) {
	l := requireLab(t)
	host, _, err := l.GatewayPair()
	if err != nil {
		t.Fatal(err)
	}
	d := startReady(t, l, "", DaemonOptions{NS: host, Profile: true, ResolvConf: "search lab.example\nnameserver " + ProfileGwV4b.String() + "\n"})
	for _, want := range []string{"no config file", `"` + ProfileGwV4.String() + `"`, `"fe80::1%h0"`, ProfileGwV4b.String() + ":53"} {
		if !strings.Contains(d.Stderr(), want) {
			t.Errorf("the start does not show %s:\n%s", want, d.Stderr())
		}
	}
	expect := func(probe, target, reason string, within time.Duration) {
		t.Helper()
		ln, ok := d.WaitLine(within, func(ln Line) bool {
			return ln.V != nil && ln.V["probe"] == probe && ln.V["target"] == target
		})
		if !ok {
			t.Errorf("no verdict for %s %s; stderr:\n%s", probe, target, d.Stderr())
			return
		}
		if ln.V["reason"] != reason {
			t.Errorf("%s %s: %v (%v), want %s", probe, target, ln.V["reason"], ln.V["detail"], reason)
		}
	}
	expect("gateway", ProfileGwV4.String(), "ok", 15*time.Second)
	expect("gateway", "fe80::1%h0", "ok", 15*time.Second)
	// Nothing serves DNS there: the gateway says port unreachable.
	expect("nameserver", ProfileGwV4b.String()+":53", "port_unreachable", 15*time.Second)

	if err := d.ResolvConf("nameserver " + ProfileGwV4.String() + "\n"); err != nil {
		t.Fatal(err)
	}
	expect("nameserver", ProfileGwV4.String()+":53", "port_unreachable", 20*time.Second)
	if err := host.Run("ip", "route", "replace", "default", "via", ProfileGwV4b.String(), "dev", "h0"); err != nil {
		t.Fatal(err)
	}
	expect("gateway", ProfileGwV4b.String(), "ok", 20*time.Second)
	d.Signal(syscall.SIGTERM)
	if code := d.Wait(10 * time.Second); code != 0 {
		t.Errorf("exit %d", code)
	}
}

package lab

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"testing"
	"time"

	"github.com/vishvananda/netlink"

	"reachd/pkg/verdict"
)

// TestLegacyReapSparesOtherPIDNamespaces: a reachd with legacy filters on c0 is probing
// when another reachd starts in a PID namespace of its own (a container sharing the network
// namespace), where the first one's PID is no process. The second must not take the first's
// filters for a dead process's: the first keeps seeing every echo (timing_source wire).
func TestLegacyReapSparesOtherPIDNamespaces(t *testing.T) {
	l := requireLab(t)
	first := l.Client.Command(reachdBin, "probe", "icmp", "--json", "--retries", "0", "--count", "100", "--interval", "50ms", ServerV4.String())
	first.Env = append(first.Environ(), "REACHD_TC=legacy")
	var out bytes.Buffer
	first.Stdout = &out
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = first.Process.Kill(); _ = first.Wait() }()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if _, legacy := reachdTC(t, l, ClientIf); legacy >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the first reachd's legacy filters never appeared")
		}
	}
	second := exec.Command("nsenter", "--net="+l.Client.Path(), "--", "unshare", "--pid", "--fork",
		reachdBin, "probe", "tcp", "--json", "--retries", "0", ap(ServerV4, PortOpen))
	second.Env = append(second.Environ(), "REACHD_TC=legacy")
	if b, err := second.CombinedOutput(); err != nil {
		t.Fatalf("second reachd: %v\n%s", err, b)
	}
	_, legacy := reachdTC(t, l, ClientIf)
	t.Logf("after the second reachd: %d legacy filters on %s", legacy, ClientIf)
	if legacy != 2 {
		t.Errorf("%d legacy filters, want the first reachd's 2", legacy)
	}
	if err := first.Wait(); err != nil {
		t.Fatalf("first reachd: %v", err)
	}
	var v map[string]any
	if err := json.Unmarshal(out.Bytes(), &v); err != nil {
		t.Fatalf("%v: %s", err, out.Bytes())
	}
	t.Logf("first: %s [%s]: %s", v["reason"], v["timing_source"], v["detail"])
	if v["reason"] != string(verdict.OK) || v["timing_source"] != verdict.SourceWire {
		t.Errorf("first reachd: %v timed by %v, want ok and wire (all 100 echoes seen by its filters)", v["reason"], v["timing_source"])
	}
	// The first added the clsact qdisc and, last out, removed it with its filters.
	err := l.Client.Do(func() error {
		lk, err := netlink.LinkByName(ClientIf)
		if err != nil {
			return err
		}
		qs, err := netlink.QdiscList(lk)
		for _, q := range qs {
			if q.Type() == "clsact" {
				t.Errorf("clsact qdisc left on %s", ClientIf)
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
}

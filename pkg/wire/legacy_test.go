package wire

import (
	"os"
	"os/exec"
	"testing"
)

// TestStaleOwners: a legacy filter is stale only when its owner is provably gone: in this
// PID namespace, and its PID no process, or another process than the one that started then.
func TestStaleOwners(t *testing.T) {
	me := self()
	if me.pidNS == 0 || me.start == 0 {
		t.Fatalf("cannot tell this process's PID namespace and start time: %+v", me)
	}
	// A child that exits: its PID is then free (until the kernel hands it out again,
	// which a start-time check tells apart anyway).
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := cmd.Process.Pid
	parent := os.Getppid()
	parentStart, err := startTime(parent)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		owner owner
		stale bool
	}{
		{"this process", me, false},
		{"a live process", owner{me.pidNS, parent, parentStart}, false},
		{"an exited process", owner{me.pidNS, dead, 1}, true},
		{"a reused PID", owner{me.pidNS, parent, parentStart + 1}, true},
		{"another PID namespace", owner{me.pidNS + 1, dead, 1}, false},
	} {
		if got := stale(c.owner.name()); got != c.stale {
			t.Errorf("%s (%s): stale %v, want %v", c.name, c.owner.name(), got, c.stale)
		}
	}
	for _, name := range []string{"reachd:" + "12345", "reachd:", "other:1:2:3", "reachd:x:1:2"} {
		if stale(name) {
			t.Errorf("%q taken for stale: nothing proves its owner gone", name)
		}
	}
}

package engine

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"reachd/internal/loopback"
	"reachd/pkg/probe"
	"reachd/pkg/schedule"
	"reachd/pkg/target"
	"reachd/pkg/verdict"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func kind(t *testing.T, name string) *probe.Kind {
	t.Helper()
	k, ok := probe.Lookup(name)
	if !ok {
		t.Fatalf("no kind %s", name)
	}
	return k
}

func options() *probe.Options {
	o := &probe.Options{Probe: "test", Family: probe.FamilyAny, Timeout: time.Second, Policy: schedule.DefaultPolicy()}
	o.Policy.Retries = 0
	return o
}

// Bad configuration is a plain error naming what is wrong, before anything is opened.
func TestOpenAndCheckErrors(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{TC: "bogus", Concurrency: 1}, "REACHD_TC"},
		{Config{Concurrency: 0}, "--concurrency"},
	} {
		if e, err := Open(context.Background(), c.cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			if e != nil {
				e.Close()
			}
			t.Errorf("%+v: err %v, want one naming %s", c.cfg, err, c.want)
		}
	}
	tcp := kind(t, "tcp")
	v6 := target.Target{}
	var err error
	if v6, err = tcp.ParseTarget("[2001:db8::1]:80"); err != nil {
		t.Fatal(err)
	}
	o := options()
	o.Family = probe.FamilyV4
	if err := Check(Job{Kind: tcp, Targets: []target.Target{v6}, Options: o}); err == nil || !strings.Contains(err.Error(), "family") {
		t.Errorf("an IPv6 target with --family ipv4: %v", err)
	}
	o = options()
	o.Timeout = 0
	if err := Check(Job{Kind: tcp, Targets: []target.Target{v6}, Options: o}); err == nil || !strings.Contains(err.Error(), "--timeout") {
		t.Errorf("zero timeout: %v", err)
	}
}

// A job runs its targets concurrently and hands each target's verdict back once; Close
// leaves nothing running (goleak).
func TestRunJob(t *testing.T) {
	open, closed := loopback.Open(t), loopback.Closed(t)
	tcp := kind(t, "tcp")
	e, err := Open(context.Background(), Config{Kinds: []*probe.Kind{tcp}, NoEBPF: true, Concurrency: 2})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	var targets []target.Target
	for _, s := range []string{open.String(), closed.String(), open.String()} {
		tg, err := tcp.ParseTarget(s)
		if err != nil {
			t.Fatal(err)
		}
		targets = append(targets, tg)
	}
	j := Job{Kind: tcp, Targets: targets, Options: options()}
	if err := Check(j); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	got := map[int]verdict.Reason{}
	e.Run(context.Background(), j, func(i int, vs []*verdict.Verdict) {
		mu.Lock()
		defer mu.Unlock()
		if _, dup := got[i]; dup || len(vs) != 1 {
			t.Errorf("target %d: handed back twice or with %d verdicts", i, len(vs))
		}
		got[i] = vs[0].Reason
	})
	want := map[int]verdict.Reason{0: verdict.OK, 1: verdict.Refused, 2: verdict.OK}
	for i, r := range want {
		if got[i] != r {
			t.Errorf("target %d: %s, want %s", i, got[i], r)
		}
	}
}

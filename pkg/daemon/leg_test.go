package daemon

import (
	"testing"
	"time"

	"reachd/pkg/config"
	"reachd/pkg/verdict"
)

func v(reason verdict.Reason) *verdict.Verdict {
	x := &verdict.Verdict{Attempts: 1}
	x.SetReason(reason, "")
	return x
}

// TestLoggingPolicy: what each mode logs of one target's sequence of verdicts, and at
// which journal priority.
func TestLoggingPolicy(t *testing.T) {
	seq := []verdict.Reason{verdict.OK, verdict.OK, verdict.Timeout, verdict.Timeout, verdict.Timeout, verdict.Refused, verdict.OK, verdict.OK}
	cases := []struct {
		mode string
		want []int // priority per verdict; 0: not logged
	}{
		// changes: the first, each change of reason, and a reminder (every 2 ticks here)
		// while not ok.
		{config.VerdictsChanges, []int{prioOK, 0, prioNotOK, 0, prioNotOK, prioNotOK, prioRecovery, 0}},
		{config.VerdictsFailures, []int{0, 0, prioNotOK, prioNotOK, prioNotOK, prioNotOK, prioRecovery, 0}},
		{config.VerdictsAll, []int{prioOK, prioOK, prioNotOK, prioNotOK, prioNotOK, prioNotOK, prioRecovery, prioOK}},
	}
	for _, c := range cases {
		var l leg
		now := time.Unix(1_800_000_000, 0)
		for i, r := range seq {
			log, prio := l.update(v(r), config.Log{Verdicts: c.mode, Reminder: 2 * time.Minute}, now)
			got := 0
			if log {
				got = prio
			}
			if got != c.want[i] {
				t.Errorf("%s: verdict %d (%s): priority %d, want %d", c.mode, i, r, got, c.want[i])
			}
			now = now.Add(time.Minute)
		}
		if l.verdicts[verdict.Timeout] != 3 || l.attempts != uint64(len(seq)) {
			t.Errorf("%s: counted %v, %d attempts", c.mode, l.verdicts, l.attempts)
		}
	}
}

func TestHistogramCumulative(t *testing.T) {
	var h histogram
	for _, s := range []float64{0.00005, 0.0003, 0.0003, 7} {
		h.observe(s)
	}
	c := h.cumulative()
	if c[.0001] != 1 || c[.0005] != 3 || c[5] != 3 || h.n != 4 {
		t.Errorf("cumulative %v n %d", c, h.n)
	}
}

// TestSelfOverloadLeavesTheTarget: a self_overload verdict is counted and logged, but the
// target stays up (no reachd_probe_success 0, no "recovery" after), and under changes it
// is not logged again before the reminder.
func TestSelfOverloadLeavesTheTarget(t *testing.T) {
	var l leg
	lg := config.Log{Verdicts: config.VerdictsChanges, Reminder: time.Hour}
	now := time.Unix(1_800_000_000, 0)
	l.update(v(verdict.OK), lg, now)
	for i, want := range []bool{true, false} {
		if log, _ := l.update(v(verdict.SelfOverload), lg, now.Add(time.Duration(i+1)*time.Minute)); log != want {
			t.Errorf("self_overload %d logged %v, want %v", i, log, want)
		}
	}
	if !l.ok || l.reason != verdict.OK || l.verdicts[verdict.SelfOverload] != 2 {
		t.Errorf("after self_overload: ok %v reason %s counts %v", l.ok, l.reason, l.verdicts)
	}
	if log, _ := l.update(v(verdict.OK), lg, now.Add(3*time.Minute)); log {
		t.Error("the next ok verdict was logged as a change (a recovery from reachd's own lateness)")
	}
}

// TestLogBudget: records beyond the burst come at the rate; the rest are suppressed and
// summed up once a minute.
func TestLogBudget(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	b := newLogBudget(10, 100, now)
	taken := 0
	for range 150 { // a burst at one instant: the burst passes
		if ok, _ := b.take(now); ok {
			taken++
		}
	}
	if taken != 100 {
		t.Errorf("%d of a burst of 150 taken, want 100", taken)
	}
	var summary uint64
	for i := range 600 { // 10 s at 60 a second: 10 a second pass
		ok, s := b.take(now.Add(time.Duration(i+1) * time.Second / 60))
		if ok {
			taken++
		}
		summary += s
	}
	if taken < 195 || taken > 205 {
		t.Errorf("%d taken after 10 s at 10 a second, want about 200", taken)
	}
	if _, s := b.take(now.Add(time.Minute + time.Second)); s+summary != 50+500 {
		t.Errorf("summaries counted %d suppressed, want 550", s+summary)
	}
	if ok, _ := newLogBudget(0, 0, now).take(now); !ok {
		t.Error("a rate of 0 must not limit")
	}
	// A reload reconfigures the budget: what was suppressed before it is still summarised.
	b = newLogBudget(1, 1, now)
	b.take(now)
	b.take(now) // suppressed
	b.configure(10, 100, now.Add(time.Second))
	if _, s := b.take(now.Add(time.Minute)); s != 1 {
		t.Errorf("after a reload the summary counts %d suppressed, want the 1 from before it", s)
	}
}

// TestMatchLegs: a dns probe's legs follow its servers when resolv.conf changes (each
// server keeps its series, a server taken out loses its own), others go by position.
func TestMatchLegs(t *testing.T) {
	vs := func(servers ...string) []*verdict.Verdict {
		out := make([]*verdict.Verdict, len(servers))
		for i, s := range servers {
			out[i] = &verdict.Verdict{Server: s}
		}
		return out
	}
	first := matchLegs(nil, vs("192.0.2.1:53", "192.0.2.2:53"))
	second := matchLegs(first, vs("192.0.2.2:53", "192.0.2.3:53"))
	if second[0] != first[1] || second[1] == first[0] || second[1].server != "192.0.2.3:53" {
		t.Fatalf("legs did not follow the servers: %+v then %+v", first, second)
	}
	plain := matchLegs(nil, vs("", ""))
	again := matchLegs(plain, vs("", ""))
	if again[0] != plain[0] || again[1] != plain[1] || plain[0] == plain[1] {
		t.Fatalf("legs without a server go by position: %+v then %+v", plain, again)
	}
}

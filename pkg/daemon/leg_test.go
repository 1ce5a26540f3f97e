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

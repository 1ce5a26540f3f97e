package probe

import (
	"strings"
	"testing"
	"time"

	"reachd/pkg/schedule"
	"reachd/pkg/verdict"
)

// TestConntrackCause: detail names the tracker when the flow died on this host: a full
// table without the flow's entry, INVALID packets while the probe heard nothing, an entry
// that never saw a reply; and nothing when the tracker saw the answer or the verdict is
// not silence.
func TestConntrackCause(t *testing.T) {
	noReply := &verdict.ConntrackEntry{Orig: "198.51.100.2:40000 -> 203.0.113.2:80", State: "SYN_SENT"}
	replied := &verdict.ConntrackEntry{Orig: "198.51.100.2:40000 -> 203.0.113.2:80", State: "ESTABLISHED", SeenReply: true}
	for _, c := range []struct {
		name   string
		ct     verdict.Conntrack
		reason verdict.Reason
		want   string
	}{
		{"full", verdict.Conntrack{Count: 65000, Max: 65536, InsertFailed: 3, SinceMs: 1500}, verdict.Timeout, "table is at its limit (65000 of 65536 entries; 3 insert failures, 0 drops host-wide in the last 1.5s)"},
		{"drops, far from full: a clash", verdict.Conntrack{Count: 10, Max: 65536, Drop: 7, InsertFailed: 7}, verdict.Timeout, ""},
		{"invalid", verdict.Conntrack{Count: 10, Max: 65536, Invalid: 2, SinceMs: 900}, verdict.Timeout, "found 2 packet(s) INVALID host-wide in the last 900ms"},
		{"invalid beside an entry that saw no reply", verdict.Conntrack{Entry: noReply, Count: 10, Max: 65536, Invalid: 2}, verdict.Timeout, "saw no reply"},
		{"no reply", verdict.Conntrack{Entry: noReply, Count: 1, Max: 65536}, verdict.Timeout, "saw no reply for the flow (198.51.100.2:40000 -> 203.0.113.2:80, SYN_SENT)"},
		{"udp no reply", verdict.Conntrack{Entry: &verdict.ConntrackEntry{Orig: "a -> b"}, Count: 1, Max: 65536}, verdict.OpenFiltered, "(a -> b, UNREPLIED)"},
		{"replied", verdict.Conntrack{Entry: replied, Count: 1, Max: 65536}, verdict.Timeout, ""},
		{"refused is not silence", verdict.Conntrack{Entry: noReply, Count: 1, Max: 65536, Invalid: 4}, verdict.Refused, ""},
	} {
		got := conntrackCause(&c.ct, c.reason)
		if c.want == "" && got != "" || !strings.Contains(got, c.want) {
			t.Errorf("%s: %q, want ~%q", c.name, got, c.want)
		}
	}
}

// TestTraceRateCap: a burst of traces passes, then TraceRate a second.
func TestTraceRateCap(t *testing.T) {
	traceTokens = schedule.NewSharedBucket(TraceRate, TraceBurst)
	now := time.Unix(2000, 0)
	n := 0
	for range 50 {
		if traceTokens.Take(now) {
			n++
		}
	}
	if n != TraceBurst {
		t.Fatalf("%d of 50 at once, want the burst %d", n, TraceBurst)
	}
	if !traceTokens.Take(now.Add(time.Second / TraceRate)) {
		t.Fatal("the cap does not refill at its rate")
	}
}

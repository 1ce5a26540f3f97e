package verdict_test

import (
	"bytes"
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"reachd/pkg/schedule"
	"reachd/pkg/verdict"
)

func loadSchema(t *testing.T) *verdict.Schema {
	t.Helper()
	md, err := os.ReadFile("../../docs/verdict.md")
	if err != nil {
		t.Fatal(err)
	}
	s, err := verdict.ParseSchema(md)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestDocInStepWithCode(t *testing.T) {
	s := loadSchema(t)
	for _, r := range verdict.Reasons() {
		layers, ok := s.Reasons[r]
		if !ok {
			t.Errorf("reason %s is not documented", r)
			continue
		}
		if !slices.Equal(layers, r.Layers()) {
			t.Errorf("reason %s: doc layers %v, code %v", r, layers, r.Layers())
		}
		if s.Retried[r] != schedule.Retryable(r) {
			t.Errorf("reason %s: doc says retried=%v, code %v", r, s.Retried[r], schedule.Retryable(r))
		}
		if _, ok := s.Examples[r]; !ok {
			t.Errorf("reason %s has no example", r)
		}
	}
	for r := range s.Reasons {
		if !r.Known() {
			t.Errorf("doc reason %s is unknown to the code", r)
		}
	}
}

func TestExamplesValidate(t *testing.T) {
	s := loadSchema(t)
	for r, ex := range s.Examples {
		if err := s.Validate([]byte(ex)); err != nil {
			t.Errorf("example for %s: %v", r, err)
		}
		var v struct{ Reason verdict.Reason }
		if err := json.Unmarshal([]byte(ex), &v); err != nil || v.Reason != r {
			t.Errorf("example under %s has reason %s", r, v.Reason)
		}
	}
}

func full() *verdict.Verdict {
	n := 1
	v := &verdict.Verdict{
		Time: verdict.Time(time.Date(2026, 11, 24, 10, 0, 0, 123456789, time.UTC)), Probe: "cli", Kind: "tcp",
		Target: "198.51.100.7:80", Addr: "198.51.100.7", Family: "ipv4", Attempts: 2,
		TimingSource: verdict.SourceUserspace,
		Timings:      &verdict.Timings{Resolve: verdict.MsPtr(3 * time.Microsecond), Total: verdict.MsPtr(time.Second)},
		Wire:         &verdict.Wire{SYNRetransmits: &n, ICMP: &verdict.ICMP{Type: 3, Code: 13, Name: "x", From: "198.51.100.1"}},
		Tries: []verdict.Try{{N: 1, Reason: verdict.AdminProhibited, BackoffMs: verdict.MsPtr(500 * time.Millisecond)},
			{N: 2, Reason: verdict.AdminProhibited}},
		Route: &verdict.Route{Dev: "c0", Gateway: "198.51.100.1", Table: 254, Type: "unicast"},
		Local: "198.51.100.2:1234",
	}
	v.SetReason(verdict.AdminProhibited, "ICMP admin prohibited")
	return v
}

func TestEncodedVerdictValidates(t *testing.T) {
	s := loadSchema(t)
	b, err := json.Marshal(full())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Validate(b); err != nil {
		t.Fatalf("%s: %v", b, err)
	}
	for _, want := range []string{`"time":"2026-11-24T10:00:00.123456Z"`, `"rtt_ms":null`, `"resolve":0.003`, `"backoff_ms":500`} {
		if !bytes.Contains(b, []byte(want)) {
			t.Errorf("%s lacks %s", b, want)
		}
	}
	// Required fields come first, in docs/verdict.md order.
	order := []string{"time", "probe", "kind", "target", "addr", "family", "ok", "reason", "layer", "detail", "attempts", "timing_source", "rtt_ms"}
	last := -1
	for _, k := range order {
		i := bytes.Index(b, []byte(`"`+k+`":`))
		if i < last {
			t.Errorf("field %s out of order", k)
		}
		last = i
	}
}

// The validator must be able to fail: each broken verdict is rejected with a reason.
func TestValidatorRejects(t *testing.T) {
	s := loadSchema(t)
	good, _ := json.Marshal(full())
	mutate := func(f func(m map[string]any)) []byte {
		var m map[string]any
		json.Unmarshal(good, &m)
		f(m)
		b, _ := json.Marshal(m)
		return b
	}
	cases := map[string][]byte{
		"not documented":  mutate(func(m map[string]any) { m["surprise"] = 1 }),
		"missing":         mutate(func(m map[string]any) { delete(m, "detail") }),
		"layer":           mutate(func(m map[string]any) { m["layer"] = "tls" }),
		"reason table":    mutate(func(m map[string]any) { m["reason"] = "bogus" }),
		"disagrees":       mutate(func(m map[string]any) { m["ok"] = true }),
		"microseconds":    mutate(func(m map[string]any) { m["time"] = "2026-11-24T10:00:00Z" }),
		"documented as":   mutate(func(m map[string]any) { m["attempts"] = "2" }),
		"wire.icmp.from":  mutate(func(m map[string]any) { delete(m["wire"].(map[string]any)["icmp"].(map[string]any), "from") }),
		"tries[].n":       mutate(func(m map[string]any) { delete(m["tries"].([]any)[0].(map[string]any), "n") }),
		"timing_source":   mutate(func(m map[string]any) { m["timing_source"] = "guess" }),
		"not a JSON":      []byte("{"),
		"rtt_ms is array": mutate(func(m map[string]any) { m["rtt_ms"] = []int{1} }),
	}
	for want, b := range cases {
		err := s.Validate(b)
		if err == nil {
			t.Errorf("%s: accepted %s", want, b)
			continue
		}
		if !strings.Contains(err.Error(), strings.Split(want, " is ")[0]) {
			t.Errorf("%s: error %v", want, err)
		}
	}
}

func TestMillisRounding(t *testing.T) {
	cases := map[time.Duration]string{
		1234567 * time.Nanosecond: "1.235",
		0:                         "0",
		2 * time.Second:           "2000",
		499 * time.Nanosecond:     "0",
	}
	for d, want := range cases {
		b, _ := json.Marshal(verdict.Ms(d))
		if string(b) != want {
			t.Errorf("%s: %s want %s", d, b, want)
		}
	}
}

func TestHumanLineAlignedAndShort(t *testing.T) {
	var buf bytes.Buffer
	h := verdict.HumanWriter{W: &buf, TargetWidth: len("203.0.113.200:443")}
	ok := &verdict.Verdict{Target: "198.51.100.7:80", Addr: "198.51.100.7", RTTMs: verdict.MsPtr(412 * time.Microsecond), Attempts: 1}
	ok.SetReason(verdict.OK, "handshake completed")
	bad := &verdict.Verdict{Target: "203.0.113.200:443", Addr: "203.0.113.200", Attempts: 4}
	bad.SetReason(verdict.Timeout, "no answer")
	h.Write(ok)
	h.Write(bad)
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("%q", buf.String())
	}
	// The rtt column is right-aligned and the reason column starts at the same place.
	if strings.Index(lines[0], "0.412 ms")+len("0.412 ms") != strings.Index(lines[1], "-  timeout")+1 ||
		strings.Index(lines[0], "  ok  ") != strings.Index(lines[1], "  timeout") {
		t.Errorf("columns do not align:\n%s", buf.String())
	}
	if strings.Index(lines[0], "handshake") != strings.Index(lines[1], "no answer") {
		t.Errorf("detail columns do not align:\n%s", buf.String())
	}
	if !strings.Contains(lines[1], "[4 attempts]") {
		t.Errorf("attempts not shown: %s", lines[1])
	}
}

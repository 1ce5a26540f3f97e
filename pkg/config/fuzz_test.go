package config

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

// FuzzParse: no input makes Parse panic (a panic in the daemon's reload would end the
// daemon, and exit 2 keeps systemd from restarting it); a bad one gives errors with
// positions; a good one gives probes the daemon can run as they are.
func FuzzParse(f *testing.F) {
	for _, c := range badConfigs {
		f.Add(c.src)
	}
	if b, err := os.ReadFile("testdata/contract.yaml"); err == nil {
		f.Add(string(b))
	}
	f.Add("probes:\n  - {name: a, kind: udp, targets: [\"198.51.100.1:53\"], udp: {payload: dns}}\n")
	f.Fuzz(func(t *testing.T, src string) {
		c, err := Parse("f.yaml", []byte(src))
		if err != nil {
			var errs Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("error without positions: %v", err)
			}
			for _, e := range errs {
				if e.Line < 1 || e.Col < 1 || strings.TrimSpace(e.Msg) == "" {
					t.Fatalf("error %+v: want a position and a message", e)
				}
			}
			return
		}
		for _, p := range c.Probes {
			if p.Kind == nil || p.Options == nil || p.Interval < 100*time.Millisecond || len(p.Targets) == 0 || p.Name == "" {
				t.Fatalf("probe %+v accepted but cannot run", p)
			}
		}
	})
}

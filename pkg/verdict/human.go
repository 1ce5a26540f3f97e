package verdict

import (
	"fmt"
	"io"
	"strconv"
	"strings"
)

// HumanWriter prints one aligned line per verdict. The target column is as wide as the
// widest target it was given up front, so lines align although they are printed as they come.
type HumanWriter struct {
	W           io.Writer
	TargetWidth int
}

// reasonWidth fits every reason in the table but the longest few, which then push the
// detail right by a column or two rather than widening every line.
const reasonWidth = 16

func (h *HumanWriter) Write(v *Verdict) error {
	status := "ok"
	if !v.OK {
		status = "FAIL"
	}
	rtt := "-"
	if v.RTTMs != nil {
		rtt = strconv.FormatFloat(float64(*v.RTTMs), 'f', 3, 64) + " ms"
	}
	target := v.Target
	if v.Server != "" { // a name asked of a server: which one
		target += " @ " + v.Server
	} else if v.Addr != "" && !strings.Contains(v.Target, v.Addr) {
		target += " (" + v.Addr + ")"
	}
	if v.Interface != "" {
		target += " via " + v.Interface
	}
	detail := v.Detail
	if v.Attempts > 1 {
		detail += fmt.Sprintf(" [%d attempts]", v.Attempts)
	}
	_, err := fmt.Fprintf(h.W, "%-4s  %-*s  %11s  %-*s  %s\n",
		status, h.TargetWidth, target, rtt, reasonWidth, v.Reason, detail)
	return err
}

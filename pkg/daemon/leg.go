package daemon

import (
	"time"

	"reachd/pkg/config"
	"reachd/pkg/verdict"
)

// leg is what one leg of a slot (a family and an interface of one target) said: the
// logging policy's memory and the metrics' series.
type leg struct {
	family, iface string // metric labels, fixed when the leg is first seen
	// server and nth say which verdict of a round is this leg's: the nth of those about
	// server (a dns probe asks each resolver; others have none, and go by position).
	server     string
	nth        int
	seen       bool
	ok         bool
	reason     verdict.Reason
	loggedAt   time.Time
	overloadAt time.Time // when a self_overload verdict was last logged
	lastAt     time.Time
	verdicts   map[verdict.Reason]uint64
	attempts   uint64
	rtt        histogram
	// sent, received: packets of multi-packet kinds (icmp, udp), for loss over time.
	sent, received uint64
	// certExpiry: when the earliest-expiring certificate of the last chain seen expires
	// (tls, https); zero before any handshake completed.
	certExpiry time.Time
}

// matchLegs returns the legs of a round's verdicts, in their order: the leg each verdict
// had before, or a new one. A leg with no verdict this round is gone with its series (a
// nameserver taken out of resolv.conf).
func matchLegs(old []*leg, vs []*verdict.Verdict) []*leg {
	out := make([]*leg, len(vs))
	nth := map[string]int{}
	for i, v := range vs {
		n := nth[v.Server]
		nth[v.Server]++
		for _, l := range old {
			if l.server == v.Server && l.nth == n {
				out[i] = l
				break
			}
		}
		if out[i] == nil {
			out[i] = &leg{server: v.Server, nth: n}
		}
	}
	return out
}

// journald priorities of verdict records (CONTRACT.md): ok, not ok, a recovery.
const (
	prioOK       = 6
	prioNotOK    = 4
	prioRecovery = 5
)

// update records v and says whether the logging policy logs it, and at which priority.
// changes: the first verdict, every change of reason, and while not ok a reminder every
// reminder; failures: every verdict not ok, and the recovery that ends them; all: every one.
func (l *leg) update(v *verdict.Verdict, lg config.Log, now time.Time) (log bool, prio int) {
	if v.Reason == verdict.SelfOverload {
		return l.overloaded(v, lg, now)
	}
	first, changed := !l.seen, l.seen && l.reason != v.Reason
	recovery := l.seen && !l.ok && v.OK
	l.seen, l.ok, l.reason, l.lastAt = true, v.OK, v.Reason, now
	if l.verdicts == nil {
		l.verdicts = map[verdict.Reason]uint64{}
	}
	l.verdicts[v.Reason]++
	l.attempts += uint64(v.Attempts)
	if v.RTTMs != nil {
		l.rtt.observe(float64(*v.RTTMs) / 1000)
	}
	if v.Stats != nil {
		l.sent += uint64(v.Stats.Count)
		l.received += uint64(v.Stats.Received)
	}
	if v.TLS != nil && v.TLS.Expiry != "" {
		if t, err := time.Parse(time.RFC3339, v.TLS.Expiry); err == nil {
			l.certExpiry = t
		}
	}
	prio = prioNotOK
	switch {
	case recovery:
		prio = prioRecovery
	case v.OK:
		prio = prioOK
	}
	switch lg.Verdicts {
	case config.VerdictsAll:
		log = true
	case config.VerdictsFailures:
		log = !v.OK || recovery
	default:
		log = first || changed || (!v.OK && now.Sub(l.loggedAt) >= lg.Reminder)
	}
	if log {
		l.loggedAt = now
	}
	return log, prio
}

// overloaded records a self_overload verdict: reachd was late, the target said nothing.
// It is counted, but the target's state (ok, its reason, its last verdict) and the logging
// policy's memory of it stay as they were, so that reachd's own trouble neither marks the
// target down nor makes a "recovery" of its next verdict. Logged (as a warning) at most
// once a reminder under changes.
func (l *leg) overloaded(v *verdict.Verdict, lg config.Log, now time.Time) (log bool, prio int) {
	if l.verdicts == nil {
		l.verdicts = map[verdict.Reason]uint64{}
	}
	l.verdicts[v.Reason]++
	log = lg.Verdicts != config.VerdictsChanges || l.overloadAt.IsZero() || now.Sub(l.overloadAt) >= lg.Reminder
	if log {
		l.overloadAt = now
	}
	return log, prioNotOK
}

// rttBuckets are the RTT histogram's upper bounds, in seconds: 100 µs (a LAN) to 5 s
// (a satellite link, a retransmitted SYN).
var rttBuckets = []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}

// histogram is a cumulative-at-scrape histogram of one leg's RTTs.
type histogram struct {
	counts []uint64 // per bucket, not cumulative; the last is +Inf
	sum    float64
	n      uint64
}

func (h *histogram) observe(s float64) {
	if h.counts == nil {
		h.counts = make([]uint64, len(rttBuckets)+1)
	}
	i := 0
	for i < len(rttBuckets) && s > rttBuckets[i] {
		i++
	}
	h.counts[i]++
	h.sum += s
	h.n++
}

// cumulative returns the bucket counts as Prometheus wants them: upper bound → count of
// observations at or below it.
func (h *histogram) cumulative() map[float64]uint64 {
	out := make(map[float64]uint64, len(rttBuckets))
	var c uint64
	for i, b := range rttBuckets {
		if h.counts != nil {
			c += h.counts[i]
		}
		out[b] = c
	}
	return out
}

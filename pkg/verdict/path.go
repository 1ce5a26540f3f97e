package verdict

// Path is a same-flow path trace: the failed probe's own flow sent again with TTL (hop
// limit) 1, 2, ..., and who answered each.
type Path struct {
	Hops []Hop `json:"hops"`
	// Reached: the target itself answered (a SYN-ACK or RST, or its own ICMP error).
	Reached bool `json:"reached"`
	// LastAnswered is the last hop that answered (0: none); FirstSilent the first of the
	// silent hops that ended the trace (0: it did not end in silence).
	LastAnswered int `json:"last_answered"`
	FirstSilent  int `json:"first_silent,omitempty"`
	// Loop: a router answered again further on (a routing loop); Incomplete: the trace
	// was cut short (its time budget, reachd stopping) before its end.
	Loop       bool `json:"loop,omitempty"`
	Incomplete bool `json:"incomplete,omitempty"`
	// TimingSource says how the hops' round trips were timed: wire when TC saw every
	// answered hop's probe leave and its answer arrive, else userspace (sent as the
	// socket was handed the probe, answered as the kernel received the answer). Absent
	// when no hop answered.
	TimingSource string `json:"timing_source,omitempty"`
}

// Hop is one TTL's probe and its answer.
type Hop struct {
	N     int     `json:"n"`
	Addr  string  `json:"addr,omitempty"` // who answered; absent: silence
	RTTMs *Millis `json:"rtt_ms,omitempty"`
	// ICMP names the answer when it was an ICMP error ("TTL exceeded in transit", "port
	// unreachable"); absent for the target's own TCP answer.
	ICMP string `json:"icmp,omitempty"`
	// RateLimited: silent, but a later hop answered: ICMP rate limiting at that hop, not
	// loss.
	RateLimited bool `json:"rate_limited,omitempty"`
}

package verdict

// DNS is what a dns probe asked and what came back.
type DNS struct {
	Server string `json:"server"` // the resolver asked, ADDR:PORT
	// Stub names a local stub resolver the server is (systemd-resolved on 127.0.0.53):
	// its answer is its upstreams', relayed.
	Stub      string `json:"stub,omitempty"`
	Transport string `json:"transport"` // udp, tcp or dot: the one that answered
	// Truncated: the UDP answer came truncated, and the question went again over TCP.
	Truncated bool   `json:"truncated,omitempty"`
	Question  string `json:"question"` // "example.com. IN A"
	// Rcode of the answer ("NOERROR", "NXDOMAIN", ...); "" when none came.
	Rcode string   `json:"rcode,omitempty"`
	Flags []string `json:"flags,omitempty"` // the header's flags that are set: qr aa tc rd ra ad cd
	// Answers are the answer section's records, each as "NAME TTL CLASS TYPE DATA" parts.
	Answers   []DNSRecord `json:"answers,omitempty"`
	Authority int         `json:"authority,omitempty"` // records in the authority section (an SOA with NXDOMAIN)
	// RTTMs is the query's round trip: its first byte leaving to the answer's first byte
	// arriving, at TC when it saw both (timing_source says).
	RTTMs *Millis `json:"rtt_ms,omitempty"`
	Size  int     `json:"size_bytes,omitempty"` // of the answer
}

// DNSRecord is one resource record of an answer.
type DNSRecord struct {
	Name string `json:"name"`
	Type string `json:"type"`
	TTL  uint32 `json:"ttl"`
	Data string `json:"data"` // the record's data in zone-file form
}

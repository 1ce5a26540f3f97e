package verdict

// Context is the failure snapshot: the host's own state toward the target when a probe
// failed, read over netlink right after the attempt.
type Context struct {
	Link      *Link      `json:"link,omitempty"`
	Addresses []string   `json:"addresses,omitempty"` // the egress interface's, as ADDR/LEN
	Neighbor  *Neighbor  `json:"neighbor,omitempty"`
	Conntrack *Conntrack `json:"conntrack,omitempty"`
	// Limited says why the snapshot holds less than it could (its rate cap per interface).
	Limited string `json:"limited,omitempty"`
}

// Link is the egress interface's state and counters.
type Link struct {
	Name      string `json:"name"`
	Index     int    `json:"index"`
	OperState string `json:"oper_state"` // up, down, dormant, lowerlayerdown, unknown, ...
	Carrier   bool   `json:"carrier"`
	MTU       int    `json:"mtu"`
	RxErrors  uint64 `json:"rx_errors"`
	TxErrors  uint64 `json:"tx_errors"`
	RxDropped uint64 `json:"rx_dropped"`
	TxDropped uint64 `json:"tx_dropped"`
	// Change is how the counters moved since the last snapshot of this interface; absent
	// for the first.
	Change *LinkChange `json:"change,omitempty"`
}

// LinkChange is how a link's error and drop counters moved over SinceMs.
type LinkChange struct {
	SinceMs   Millis `json:"since_ms"`
	RxErrors  uint64 `json:"rx_errors"`
	TxErrors  uint64 `json:"tx_errors"`
	RxDropped uint64 `json:"rx_dropped"`
	TxDropped uint64 `json:"tx_dropped"`
}

// Neighbor is the next hop's neighbor entry (ARP / NDP).
type Neighbor struct {
	Addr   string `json:"addr"`
	LLAddr string `json:"lladdr,omitempty"`
	State  string `json:"state"` // REACHABLE, STALE, INCOMPLETE, FAILED, ... or NONE: no entry
	// The entry's age: since it entered its state, and since the neighbor last confirmed
	// it is there (an answer, or a higher layer's confirmation); absent with no entry.
	UpdatedMs   *Millis `json:"updated_ms,omitempty"`
	ConfirmedMs *Millis `json:"confirmed_ms,omitempty"`
}

// Conntrack is what the connection tracker of this host knows of the probe's flow, and
// its table's health.
type Conntrack struct {
	Entry *ConntrackEntry `json:"entry,omitempty"` // absent: no entry for the flow
	// Count and Max: entries in the table, and its limit (nf_conntrack_max).
	Count uint32 `json:"count"`
	Max   uint32 `json:"max"`
	// Over SinceMs (since the last snapshot, or reachd's start), host-wide: packets
	// conntrack found INVALID, entries it failed to insert (a full table, or a clash of
	// parallel flows), packets it dropped, and entries it evicted to make room.
	SinceMs      Millis `json:"since_ms"`
	Invalid      uint64 `json:"invalid"`
	InsertFailed uint64 `json:"insert_failed"`
	Drop         uint64 `json:"drop"`
	EarlyDrop    uint64 `json:"early_drop"`
}

// ConntrackEntry is the probe's flow in the table.
type ConntrackEntry struct {
	Proto     string   `json:"proto"`
	State     string   `json:"state,omitempty"`  // TCP's: SYN_SENT, ESTABLISHED, ...
	Status    []string `json:"status,omitempty"` // SEEN_REPLY, ASSURED, CONFIRMED, SRC_NAT, ...
	SeenReply bool     `json:"seen_reply"`
	Mark      uint32   `json:"mark,omitempty"`
	Zone      uint16   `json:"zone,omitempty"`
	Orig      string   `json:"orig"`          // the flow as sent: SRC -> DST
	Reply     string   `json:"reply"`         // as its replies are expected: SRC -> DST
	NAT       string   `json:"nat,omitempty"` // the rewrite, when the reply is not the original turned round
	TimeoutS  uint32   `json:"timeout_s"`
}

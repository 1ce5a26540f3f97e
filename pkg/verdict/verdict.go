// Package verdict holds the verdict a probe produces and its encodings; docs/verdict.md is
// its schema.
package verdict

import (
	"encoding/json"
	"math"
	"strconv"
	"time"
)

// Timing sources, best first.
const (
	SourceWire      = "wire"
	SourceKernel    = "kernel"
	SourceUserspace = "userspace"
)

// Millis is a duration encoded as float milliseconds with microsecond precision.
type Millis float64

// Ms converts d to Millis.
func Ms(d time.Duration) Millis { return Millis(float64(d) / float64(time.Millisecond)) }

// MsPtr is Ms for an optional field.
func MsPtr(d time.Duration) *Millis { m := Ms(d); return &m }

func (m Millis) MarshalJSON() ([]byte, error) {
	v := math.Round(float64(m)*1000) / 1000
	return strconv.AppendFloat(nil, v, 'f', -1, 64), nil
}

// Time is encoded as RFC 3339 with microseconds (docs/verdict.md).
type Time time.Time

const timeLayout = "2006-01-02T15:04:05.000000Z07:00"

func (t Time) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Time(t).Format(timeLayout))
}

func (t *Time) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.Parse(time.RFC3339Nano, s)
	*t = Time(v)
	return err
}

// Verdict is one probe's result. Field order follows docs/verdict.md so JSON reads the same way.
type Verdict struct {
	Time         Time    `json:"time"`
	Probe        string  `json:"probe"`
	Kind         string  `json:"kind"`
	Target       string  `json:"target"`
	Addr         string  `json:"addr"`
	Family       string  `json:"family"`
	OK           bool    `json:"ok"`
	Reason       Reason  `json:"reason"`
	Layer        Layer   `json:"layer"`
	Detail       string  `json:"detail"`
	Attempts     int     `json:"attempts"`
	TimingSource string  `json:"timing_source"`
	RTTMs        *Millis `json:"rtt_ms"`

	Timings *Timings `json:"timings_ms,omitempty"`
	Wire    *Wire    `json:"wire,omitempty"`
	Tries   []Try    `json:"tries,omitempty"`
	Route   *Route   `json:"route,omitempty"`
	Context *Context `json:"context,omitempty"`
	Path    *Path    `json:"path,omitempty"`
	Local   string   `json:"local,omitempty"`
	// Interface is the interface the probe was bound to, if any.
	Interface string `json:"interface,omitempty"`
	// Server is the server a name was asked of (dns: ADDR:PORT): one verdict each.
	Server string `json:"server,omitempty"`
	// Resolver is the resolver that resolved the target's name (ADDR:PORT, or the hosts
	// file), or that failed to.
	Resolver string `json:"resolver,omitempty"`
	// Labels are the daemon's config labels of the probe.
	Labels map[string]string `json:"labels,omitempty"`
	Stats  *Stats            `json:"stats,omitempty"`
	UDP    *UDP              `json:"udp,omitempty"`
	TLS    *TLS              `json:"tls,omitempty"`
	HTTP   *HTTP             `json:"http,omitempty"`
	Line   *Line             `json:"line,omitempty"`
	DNS    *DNS              `json:"dns,omitempty"`
}

// Stats summarise a multi-packet attempt (ICMP echoes, UDP datagrams), like fping -C.
// Answers that are not this probe's are counted apart and never as replies.
type Stats struct {
	Count      int     `json:"count"`     // packets sent
	Received   int     `json:"received"`  // distinct answers matched to them
	LossPct    float64 `json:"loss_pct"`  // 100 × (count − received) / count
	MinMs      *Millis `json:"min_ms"`    // null when nothing was received
	AvgMs      *Millis `json:"avg_ms"`    // "
	MaxMs      *Millis `json:"max_ms"`    // "
	StddevMs   *Millis `json:"stddev_ms"` // population standard deviation
	Duplicates int     `json:"duplicates"`
	Late       int     `json:"late"`
	Corrupt    int     `json:"corrupt"`
	Foreign    int     `json:"foreign"`
}

// UDP is what a UDP probe sent and got back.
type UDP struct {
	Payload  string `json:"payload,omitempty"` // which request went: a built-in's name, "text" or "hex"
	Sent     int    `json:"sent_bytes"`
	Received int    `json:"received_bytes"`
	Reply    string `json:"reply,omitempty"` // the first reply's first bytes, printable or hex
}

// Timings are the phases of the final attempt. Consecutive phases meet: each ends where
// the next begins, so they add up to the total.
type Timings struct {
	Resolve  *Millis `json:"resolve,omitempty"`
	Setup    *Millis `json:"setup,omitempty"`
	Connect  *Millis `json:"connect,omitempty"`
	TLS      *Millis `json:"tls,omitempty"`
	Request  *Millis `json:"request,omitempty"`
	TTFB     *Millis `json:"ttfb,omitempty"`
	Transfer *Millis `json:"transfer,omitempty"`
	Total    *Millis `json:"total,omitempty"`
	// Wire names the phases whose both ends were stamped at TC (http and tls probes).
	Wire []string `json:"wire,omitempty"`
}

// Wire is what was seen of the probe's packets: instants from eBPF at TC (ms after the
// verdict's time), the SYN count (from eBPF, else TCP_INFO) and the ICMP error (from the
// socket error queue, IP_RECVERR).
type Wire struct {
	SYNTx           *Millis  `json:"syn_tx,omitempty"`
	SYNRetransmits  *int     `json:"syn_retransmits,omitempty"`
	SYNRetransmitTx []Millis `json:"syn_retransmit_tx,omitempty"`
	SYNACK          *Millis  `json:"synack,omitempty"`
	RST             *Millis  `json:"rst,omitempty"`
	ICMP            *ICMP    `json:"icmp,omitempty"`
	ICMPAt          *Millis  `json:"icmp_at,omitempty"`
	EchoID          *int     `json:"echo_id,omitempty"`
	EchoTx          *Millis  `json:"echo_tx,omitempty"`
	EchoReply       *Millis  `json:"echo_reply,omitempty"`
	UDPTx           *Millis  `json:"udp_tx,omitempty"`
	UDPRx           *Millis  `json:"udp_rx,omitempty"`
	ReplyTTL        *int     `json:"reply_ttl,omitempty"`
}

// ICMP is an ICMP or ICMPv6 error received in answer to the probe.
type ICMP struct {
	Type uint8  `json:"type"`
	Code uint8  `json:"code"`
	Name string `json:"name"`
	From string `json:"from"`
	// Local: this host made the error (a local firewall's reject), not a router on the path.
	Local bool `json:"local,omitempty"`
}

// Try is one attempt of a probe.
type Try struct {
	N         int     `json:"n"`
	Reason    Reason  `json:"reason"`
	Detail    string  `json:"detail,omitempty"`
	RTTMs     *Millis `json:"rtt_ms"`
	BackoffMs *Millis `json:"backoff_ms,omitempty"`
}

// Route is the local route the probe's packets took (or would have).
type Route struct {
	Dev     string `json:"dev,omitempty"`
	Gateway string `json:"gateway,omitempty"`
	Src     string `json:"src,omitempty"`
	Table   int    `json:"table,omitempty"`
	Type    string `json:"type,omitempty"`
	Mark    uint32 `json:"mark,omitempty"` // the probe's SO_MARK, which chose the table
}

// SetReason sets reason, its usual layer and ok together so they never disagree.
func (v *Verdict) SetReason(r Reason, detail string) {
	v.Reason = r
	v.Layer = r.Layer()
	v.OK = r == OK
	v.Detail = detail
}

package probe

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"

	"reachd/pkg/resolv"
	"reachd/pkg/verdict"
)

// dnsOverUDP asks q over UDP through the datagram machinery (udp.go): the query and its
// answer are registered with TC like any datagram, an ICMP error keeps its reason and
// sender, and only an answer to this very question (its id, its question) is taken. The
// answer is nil when none came; res says why.
func dnsOverUDP(ctx context.Context, a Attempt, q *dns.Msg, ev *dnsEvidence) (*dns.Msg, Result) {
	uo := newUDPOptions()
	uo.build = func(id uint16) (request, error) {
		m := q.Copy()
		m.Id = id
		b, err := m.Pack()
		if err != nil {
			return request{}, fmt.Errorf("build the DNS query: %w", err)
		}
		return request{name: "dns", data: b, check: func(reply []byte) string { return checkAnswer(reply, m) }, describe: describeDNS}, nil
	}
	res, u := udpExchange(ctx, a, uo)
	ev.udp, _ = res.Kind.(*udpEvidence)
	res.Kind = nil
	var reply []byte
	if u != nil {
		for _, d := range u.dgrams {
			if d.replied {
				reply = d.reply
				break
			}
		}
	}
	if reply == nil {
		if res.Reason == verdict.OpenFiltered {
			res.Reason, res.Layer = verdict.DNSTimeout, ""
			res.Detail = fmt.Sprintf("no answer from %s within %s", a.Addr, res.waited.Round(time.Millisecond))
			if res.TimingSource == verdict.SourceWire {
				res.Detail += " (the query was seen leaving on the wire)"
			}
		}
		return nil, res
	}
	m := new(dns.Msg)
	if err := m.Unpack(reply); err != nil { // checkAnswer took it: truncated mid-record
		m = &dns.Msg{MsgHdr: dns.MsgHdr{Id: q.Id, Response: true, Truncated: true}}
	}
	ev.dns.RTTMs, ev.dns.Size = verdict.MsPtr(res.RTT), len(reply)
	return m, res
}

// truncatedHeader says whether reply's header is a truncated response with id: its
// records may be cut in the middle, so that it does not parse, and TCP asks again.
func truncatedHeader(reply []byte, id uint16) bool {
	const qr, tc = 0x80, 0x02 // in the header's third byte
	return len(reply) >= 12 && binary.BigEndian.Uint16(reply) == id && reply[2]&(qr|tc) == qr|tc
}

// checkAnswer says why reply is not the answer to q ("" when it is): resolv.IsAnswer, or
// a truncated answer whose records do not parse (it is asked again over TCP).
func checkAnswer(reply []byte, q *dns.Msg) string {
	var m dns.Msg
	if err := m.Unpack(reply); err != nil {
		if truncatedHeader(reply, q.Id) {
			return ""
		}
		return fmt.Sprintf("the reply is not a DNS message (%v)", err)
	}
	return resolv.IsAnswer(&m, q)
}

// dnsOverStream asks q over TCP, or TLS with dot (RFC 7858, ALPN "dot"), on a connection
// of the wire-timed dialer: the query's first byte leaving and the answer's first byte
// arriving are placed on the wire as an HTTP request's and response's are.
func dnsOverStream(ctx context.Context, a Attempt, o *DNSOptions, q *dns.Msg, ev *dnsEvidence) (*dns.Msg, Result) {
	s, res := dialSession(ctx, a)
	if s == nil {
		return nil, res
	}
	defer s.close()
	ev.conn.tcp, _ = s.tcp.Kind.(*tcpResult)
	conn := net.Conn(s.conn)
	if o.Transport == TransportDoT {
		tc, hs := s.startTLS(ctx, &o.TLSOptions, dotName(a, o), []string{"dot"})
		ev.conn.tls = hs.summary
		if hs.res.Reason != verdict.OK {
			s.finish(&ev.conn)
			return nil, s.outcome(hs.res, &ev.conn)
		}
		conn = tc
	}
	m, n, err := s.ask(ctx, conn, q)
	s.finish(&ev.conn)
	if err != nil {
		return nil, s.outcome(s.askFailure(err, a), &ev.conn)
	}
	ev.dns.Size = n
	if s.marks.first.set() && s.marks.sent.set() {
		ev.dns.RTTMs = verdict.MsPtr(s.marks.first.at.Sub(s.marks.sent.at))
	}
	return m, s.outcome(Result{Reason: verdict.OK}, &ev.conn)
}

// dotName is the name a DoT server's certificate is verified for: --server-name, else its
// address (a resolver's certificate names its addresses, 1.1.1.1's does).
func dotName(a Attempt, o *DNSOptions) string {
	if o.ServerName != "" {
		return o.ServerName
	}
	return a.Addr.Addr().WithZone("").String()
}

// ask writes q with its two-byte length (RFC 1035 4.2.2) and reads the answer, noting the
// stream offsets of the query's first byte and the answer's, for place.
func (s *session) ask(ctx context.Context, conn net.Conn, q *dns.Msg) (*dns.Msg, int, error) {
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	b, err := q.Pack()
	if err != nil {
		return nil, 0, fmt.Errorf("build the DNS query: %w", err)
	}
	msg := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(b)), uint16(len(b)))
	msg = append(msg, b...)
	tx, rx := s.conn.counts()
	s.marks.sentTx, s.marks.firstRx = tx, rx
	s.marks.sent = mark{at: time.Now()}
	if _, err := conn.Write(msg); err != nil {
		return nil, 0, err
	}
	r := &firstRead{Conn: conn, s: s}
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, 0, err
	}
	body := make([]byte, binary.BigEndian.Uint16(hdr[:]))
	if _, err := io.ReadFull(r, body); err != nil {
		return nil, 0, err
	}
	s.marks.end = mark{at: time.Now()}
	tx, rx = s.conn.counts()
	s.marks.endRx = rx - 1
	if why := checkAnswer(body, q); why != "" {
		return nil, len(body), fmt.Errorf("%w: %s", errNotAnswer, why)
	}
	m := new(dns.Msg)
	_ = m.Unpack(body)
	return m, len(body), nil
}

var errNotAnswer = errors.New("not the answer")

// askFailure classifies a failed question over a connection: silence is dns_timeout (the
// server took the connection but did not answer), a close or reset keeps its reason.
func (s *session) askFailure(err error, a Attempt) Result {
	if !s.marks.first.set() {
		s.marks.first, s.marks.firstRx = mark{at: time.Now()}, -1
	}
	if errors.Is(err, errNotAnswer) {
		return Result{Reason: verdict.ProtocolMismatch, Layer: verdict.LayerApplication, sent: true, Detail: err.Error()}
	}
	wait := a.Timeout
	res := ioFailure(err, verdict.LayerApplication, "waiting for the answer", wait)
	switch res.Reason {
	case verdict.Timeout:
		res.Reason, res.Layer = verdict.DNSTimeout, ""
		res.Detail = fmt.Sprintf("%s took the connection but did not answer the query within the attempt", a.Addr)
	case "":
		res = Result{Reason: verdict.LocalError, sent: true, Detail: err.Error()}
	}
	return res
}

// judge turns the answer into the verdict: its rcode against --expect-rcode (the
// contract's reasons for NXDOMAIN, SERVFAIL and REFUSED), then the answer records of the
// type asked, --expect-answer and --dnssec. res is the exchange's (its RTT, its timing).
func (o *DNSOptions) judge(q, m *dns.Msg, res Result, d *verdict.DNS) Result {
	describeAnswer(m, d)
	qq := q.Question[0]
	qtype := dns.TypeToString[qq.Qtype]
	how := fmt.Sprintf("from %s", d.Server)
	if d.RTTMs != nil {
		how += fmt.Sprintf(" in %s", fmtRTT(time.Duration(float64(*d.RTTMs)*float64(time.Millisecond))))
	}
	res.Layer = ""
	if m.Rcode != o.ExpectRcode {
		res.Reason = verdict.BodyMismatch // NOERROR, where another was expected
		if m.Rcode != dns.RcodeSuccess {
			res.Reason = rcodeReason(m.Rcode)
		}
		res.Detail = fmt.Sprintf("%s %s: %s %s", qq.Name, qtype, d.Rcode, how)
		if o.ExpectRcode != dns.RcodeSuccess {
			res.Detail += fmt.Sprintf(", not the --expect-rcode %s", dns.RcodeToString[o.ExpectRcode])
		}
		return res
	}
	res.Reason = verdict.OK
	if o.ExpectRcode != dns.RcodeSuccess {
		res.Detail = fmt.Sprintf("%s %s: %s %s, as --expect-rcode wants", qq.Name, qtype, d.Rcode, how)
		return res
	}
	var asked []string
	var records []dns.RR
	for _, rr := range m.Answer {
		if rr.Header().Rrtype == qq.Qtype || qq.Qtype == dns.TypeANY {
			asked, records = append(asked, rrData(rr)), append(records, rr)
		}
	}
	switch {
	case len(asked) == 0:
		res.Reason = verdict.DNSNoAnswer
		res.Detail = fmt.Sprintf("%s has no %s record: NOERROR with no answer of that type %s", qq.Name, qtype, how)
		if len(m.Answer) > 0 {
			res.Detail += fmt.Sprintf(" (%d other record(s): %s)", len(m.Answer), d.Answers[0].Type)
		}
		return res
	case o.Expect != nil && !anyMatch(o.Expect, records):
		res.Reason = verdict.BodyMismatch
		res.Detail = fmt.Sprintf("no answer record matches --expect-answer %q (%s)", o.Expect, strings.Join(clip(asked, 4), ", "))
		return res
	case o.DNSSEC && !m.AuthenticatedData:
		res.Reason = verdict.BodyMismatch
		res.Detail = fmt.Sprintf("%s %s: the answer is not authenticated (AD clear) %s: the resolver does not validate, or the zone is not signed", qq.Name, qtype, how)
		return res
	}
	res.Detail = fmt.Sprintf("%s %s: %s %s", qq.Name, qtype, strings.Join(clip(asked, 4), ", "), how)
	return res
}

// describeAnswer writes the answer's header and records into d.
func describeAnswer(m *dns.Msg, d *verdict.DNS) {
	d.Rcode = dns.RcodeToString[m.Rcode]
	for _, f := range []struct {
		set  bool
		name string
	}{{m.Response, "qr"}, {m.Authoritative, "aa"}, {m.Truncated, "tc"}, {m.RecursionDesired, "rd"},
		{m.RecursionAvailable, "ra"}, {m.AuthenticatedData, "ad"}, {m.CheckingDisabled, "cd"}} {
		if f.set {
			d.Flags = append(d.Flags, f.name)
		}
	}
	for i, rr := range m.Answer {
		if i == maxAnswers {
			break
		}
		h := rr.Header()
		d.Answers = append(d.Answers, verdict.DNSRecord{Name: h.Name, Type: dns.TypeToString[h.Rrtype], TTL: h.Ttl, Data: rrData(rr)})
	}
	d.Authority = len(m.Ns)
}

// maxAnswers bounds the records a verdict lists (a TXT-heavy answer can hold hundreds).
const maxAnswers = 32

// rrData is a record's data in zone-file form: its text after the header.
func rrData(rr dns.RR) string {
	return strings.TrimPrefix(rr.String(), rr.Header().String())
}

// rrLine is a record as one zone-file line, its fields separated by single spaces:
// "www.example.net. 300 IN A 192.0.2.1".
func rrLine(rr dns.RR) string {
	return strings.Join(strings.Fields(rr.Header().String()), " ") + " " + rrData(rr)
}

// anyMatch says whether re matches some record, as a line or its data alone.
func anyMatch(re interface{ MatchString(string) bool }, rrs []dns.RR) bool {
	for _, rr := range rrs {
		if re.MatchString(rrLine(rr)) || re.MatchString(rrData(rr)) {
			return true
		}
	}
	return false
}

// clip keeps the first n of s, saying how many more there were.
func clip(s []string, n int) []string {
	if len(s) <= n {
		return s
	}
	return append(s[:n:n], fmt.Sprintf("and %d more", len(s)-n))
}

package probe

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"reachd/pkg/target"
	"reachd/pkg/verdict"
)

// response is what one request got back.
type response struct {
	status          int
	proto, location string
	addr            string
	body            []byte // the first BodyLimit bytes
	bodyBytes       int64  // read in all
	truncated       bool
	end             time.Time // the last byte read
}

// run sends one request of an attempt (its first, or a redirect's) over a connection of its
// own and reads the response. Without a response, the Result says why, at the layer that
// failed (resolve, transport, tls, application). Its phases are added to ev.
func (p hopPlan) run(ctx context.Context, a Attempt, o *HTTPOptions, method, body string, begin time.Time, ev *tlsEvidence) (Result, *response) {
	if p.n > 0 { // the verdict's connection and TLS are the last request's, if any
		ev.tcp, ev.tls, ev.tlsDetail = nil, nil, ""
	}
	addr := p.addr
	if !addr.IsValid() {
		var res Result
		if addr, res = a.resolve(ctx, p.url.Hostname()); res.Reason != "" {
			ev.phases.add(marks{begin: mark{at: begin}, resolved: mark{at: time.Now()}})
			return p.failed(res, addr, ev), nil
		}
	}
	resolved := time.Now()
	port, _ := strconv.Atoi(p.url.Port())
	if port == 0 {
		port = map[string]int{"http": 80, "https": 443}[p.url.Scheme]
	}
	ha := a
	ha.Addr = netip.AddrPortFrom(addr, uint16(port))
	if t, err := target.ParseURL(p.url.String()); err == nil {
		ha.Target = t
	}
	s, res := dialSession(ctx, ha)
	if s == nil {
		ev.phases.add(marks{begin: mark{at: begin}, resolved: mark{at: resolved}, connected: mark{at: time.Now()}})
		return p.failed(res, addr, ev), nil
	}
	defer s.close()
	s.marks.begin, s.marks.resolved = mark{at: begin}, mark{at: resolved}
	ev.tcp, _ = s.tcp.Kind.(*tcpResult)
	conn := net.Conn(s.conn)
	if p.url.Scheme == "https" {
		name := p.url.Hostname()
		if p.same {
			name = serverName(ha, &o.TLSOptions)
		}
		tc, hs := s.startTLS(ctx, &o.TLSOptions, name, alpnFor)
		ev.tls, ev.tlsDetail = hs.summary, hs.detail
		if hs.res.Reason != verdict.OK {
			s.finish(ev)
			return p.failed(s.outcome(hs.res, ev), addr, ev), nil
		}
		conn = tc
	}
	req, err := newRequest(ctx, p, o, method, body)
	if err != nil {
		s.marks.end = mark{at: time.Now()}
		s.finish(ev)
		return p.failed(s.outcome(fail(verdict.LocalError, err.Error()), ev), addr, ev), nil
	}
	resp, res := s.exchange(ctx, conn, req, o)
	s.finish(ev)
	if resp == nil {
		return p.failed(s.outcome(res, ev), addr, ev), nil
	}
	// A redirect's next request begins where this one ended, as placed on the wire, so the
	// phases of all of them add up to the whole.
	resp.addr, resp.end = addr.String(), s.marks.end.at
	return s.outcome(res, ev), resp
}

// failed is a request's failure as the attempt reports it: a redirect's names the request
// (its URL and address) and keeps the redirects and phases before it.
func (p hopPlan) failed(res Result, addr netip.Addr, ev *tlsEvidence) Result {
	if p.n == 0 {
		return res
	}
	if tr, ok := res.Kind.(*tcpResult); ok {
		ev.tcp = tr
	}
	res.Kind = ev
	at := ""
	if addr.IsValid() {
		at = " (" + addr.String() + ")"
	}
	res.Detail = fmt.Sprintf("redirect %d to %s%s: %s", p.n, p.url, at, res.Detail)
	return res
}

// finish places the session's instants on the wire and adds its phases.
func (s *session) finish(ev *tlsEvidence) {
	s.place(&s.marks)
	ev.phases.add(s.marks)
}

// outcome is r with what the session's TCP handshake measured: the verdict's round trip,
// local address and timing source are the connection's.
func (s *session) outcome(r Result, ev *tlsEvidence) Result {
	r.Kind, r.Local, r.proto, r.TimingSource = ev, s.tcp.Local, s.tcp.proto, s.tcp.TimingSource
	r.RTT, r.HasRTT, r.Connect, r.sent = s.tcp.RTT, s.tcp.HasRTT, s.tcp.Connect, true
	if r.Reason == verdict.OK && r.Detail == "" {
		r.Detail = s.tcp.Detail
	}
	return r
}

func newRequest(ctx context.Context, p hopPlan, o *HTTPOptions, method, body string) (*http.Request, error) {
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, p.url.String(), rd)
	if err != nil {
		return nil, fmt.Errorf("build the request: %w", err)
	}
	if p.same {
		for k, v := range o.Headers {
			req.Header[k] = v
		}
		if o.Host != "" {
			req.Host = o.Host
		}
	}
	if req.Header.Get("User-Agent") == "" {
		req.Header.Set("User-Agent", "reachd")
	}
	return req, nil
}

// exchange sends req over conn and reads the response, its body up to the limit. It
// notes the stream offsets of the request's first byte and the response's first and last,
// for place to find the packets that carried them.
func (s *session) exchange(ctx context.Context, conn net.Conn, req *http.Request, o *HTTPOptions) (*response, Result) {
	if deadline, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(deadline)
	}
	tx, rx := s.conn.counts()
	s.marks.sentTx, s.marks.firstRx = tx, rx
	var tm traceMarks
	t := transportFor(conn)
	defer t.CloseIdleConnections()
	hr, err := t.RoundTrip(req.WithContext(httptrace.WithClientTrace(req.Context(), tm.trace(s.conn))))
	sent, first, fc := tm.take()
	if !sent.IsZero() {
		s.marks.sent = mark{at: sent}
	}
	if err != nil { // the attempt, and the wait for the response, end where it failed
		s.marks.first, s.marks.firstRx = mark{at: time.Now()}, -1
		return nil, s.exchangeFailure(err, "waiting for the response")
	}
	defer hr.Body.Close()
	s.marks.first = mark{at: first}
	switch _, isTLS := conn.(*tls.Conn); {
	case isTLS:
		s.placeFirstTLS(fc)
	case hr.ProtoMajor == 2:
		// HTTP/2 frames interleave (the server's SETTINGS): it is in the read that
		// delivered it. (Plain HTTP/1's response is the first byte after the request.)
		s.marks.firstRx, s.marks.firstSpan = fc.off, fc.n
	}
	resp := &response{status: hr.StatusCode, proto: hr.Proto, location: hr.Header.Get("Location")}
	// The body is kept only as far as it is matched (--body-regex), else its start for the
	// verdict: a daemon with hundreds of requests in flight holds no megabytes each.
	keep := &headWriter{limit: bodyHead}
	if o.BodyRegex != nil {
		keep.limit = int(o.BodyLimit)
	}
	n, err := io.Copy(keep, io.LimitReader(hr.Body, o.BodyLimit))
	resp.body, resp.bodyBytes = keep.buf.Bytes(), n
	if err == nil && n == o.BodyLimit {
		var one [1]byte
		if k, _ := hr.Body.Read(one[:]); k > 0 {
			resp.truncated = true
		}
	}
	resp.end = time.Now()
	s.marks.end = mark{at: resp.end}
	if err != nil { // the attempt ends when the read failed, not with the last byte
		res := s.exchangeFailure(err, "reading the body")
		res.Detail = fmt.Sprintf("%s %d: %s (%d body bytes read)", hr.Proto, hr.StatusCode, res.Detail, n)
		return resp, res
	}
	_, rx = s.conn.counts()
	s.marks.endRx = rx - 1
	return resp, Result{Reason: verdict.OK}
}

// bodyHead is how much of a body is kept when nothing matches it: what a verdict quotes.
const bodyHead = 64

// headWriter keeps the first limit bytes written to it and counts the rest away.
type headWriter struct {
	buf   bytes.Buffer
	limit int
}

func (w *headWriter) Write(p []byte) (int, error) {
	if room := w.limit - w.buf.Len(); room > 0 {
		w.buf.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

// placeFirstTLS notes where the server's first application bytes over TLS are in the raw
// stream, from the read that handed them over (fc).
func (s *session) placeFirstTLS(fc chunk) {
	if fc.recEnd >= fc.off+fc.n {
		// A record's plaintext is handed over once the record is whole: when that read
		// touched one record only, the record is the one, and its first byte arrived with
		// its start.
		s.marks.firstRx, s.marks.firstSpan = fc.recStart, 0
		return
	}
	// The read touched several records, and others may come first (a server may send
	// session tickets after the handshake): from the first one's start to the end of the
	// read, placed only if they all came together.
	s.marks.firstRx, s.marks.firstSpan = fc.recStart, fc.off+fc.n-fc.recStart
}

// exchangeFailure classifies an error of the request or the response: the connection's end
// (timeout, reset, closed), a TLS failure that came after the handshake, or an answer that
// is not HTTP.
func (s *session) exchangeFailure(err error, doing string) Result {
	var rhe tls.RecordHeaderError
	var oe *net.OpError
	switch {
	case errors.As(err, &rhe):
		return Result{Reason: verdict.TLSHandshake, Detail: handshakeDetail(err), sent: true}
	case errors.As(err, &oe) && oe.Op == "remote error":
		// A TLS 1.3 server's verdict on the handshake (a client certificate it wants) comes
		// as an alert after the client has finished: still a TLS failure.
		return Result{Reason: verdict.TLSHandshake, Detail: handshakeDetail(err) + " after the handshake", sent: true}
	case s.certAsked:
		// The same, when the connection broke before the alert was read (HTTP/2 writes
		// first, and meets the reset).
		return Result{Reason: verdict.TLSHandshake, sent: true,
			Detail: fmt.Sprintf("the server asked for a client certificate, which reachd does not send, and then: %v", err)}
	}
	if res := ioFailure(err, verdict.LayerApplication, doing, s.a.Timeout); res.Reason != "" {
		return res
	}
	msg := err.Error()
	if strings.Contains(msg, "malformed HTTP") || strings.Contains(msg, "HTTP/1.x transport connection broken") {
		return Result{Reason: verdict.ProtocolMismatch, Detail: "the server's answer is not HTTP: " + msg, sent: true}
	}
	if strings.Contains(msg, "server closed") || strings.Contains(msg, "EOF") {
		return Result{Reason: verdict.Reset, Layer: verdict.LayerApplication, Detail: "the server closed the connection without a response", sent: true}
	}
	return Result{Reason: verdict.ProtocolMismatch, Detail: msg, sent: true}
}

// traceMarks collects what the HTTP client's trace says, from the client's goroutines,
// until taken: a callback that comes later (the response as the deadline struck) is
// dropped.
type traceMarks struct {
	mu          sync.Mutex
	taken       bool
	sent, first time.Time
	firstChunk  chunk
}

func (tm *traceMarks) trace(m *meter) *httptrace.ClientTrace {
	return &httptrace.ClientTrace{
		GotConn: func(httptrace.GotConnInfo) {
			tm.mu.Lock()
			if !tm.taken && tm.sent.IsZero() {
				tm.sent = time.Now()
			}
			tm.mu.Unlock()
		},
		GotFirstResponseByte: func() {
			c := m.lastChunk()
			tm.mu.Lock()
			if !tm.taken {
				tm.first, tm.firstChunk = time.Now(), c
			}
			tm.mu.Unlock()
		},
	}
}

func (tm *traceMarks) take() (sent, first time.Time, c chunk) {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	tm.taken = true
	return tm.sent, tm.first, tm.firstChunk
}

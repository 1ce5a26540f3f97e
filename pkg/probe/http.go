package probe

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/pflag"
	"golang.org/x/net/http/httpguts"

	"reachd/pkg/verdict"
)

// httpKind: a request over a fresh connection (TCP handshake timed at the wire, TLS checked
// as by the tls kind for https), redirects followed hop by hop with each recorded, and the
// status and body judged. Each phase is timed at the wire where TC saw the packets.
var httpKind = register(&Kind{
	Name:    "http",
	Order:   5,
	URL:     true,
	Summary: "HTTP(S) request: status, body, redirects; TLS checked for https",
	Example: "  reachd probe http https://example.net/health\n" +
		"  reachd probe http --expect-status 200-299 --body-regex ready http://198.51.100.10:8080/ready\n" +
		"  reachd probe http --connect-to 203.0.113.10 --warn-days 14 https://www.example.net/",
	Needs:      Needs{Tracepoints: true},
	NewOptions: func() KindOptions { return newHTTPOptions() },
	run:        runHTTP,
})

// HTTPOptions are the http kind's options.
type HTTPOptions struct {
	TLSOptions
	Method       string
	Headers      http.Header
	Host         string // a Host header given with --header
	Body         string
	Expect       []statusRange  // --expect-status; nil: 2xx-4xx (5xx fails)
	BodyRegex    *regexp.Regexp // --body-regex
	MaxRedirects int
	ConnectTo    netip.Addr // --connect-to: the address for the URL's host
	BodyLimit    int64      // bytes of the body read at most

	flags struct {
		headers       []string
		expect, regex string
		connectTo     string
		bodyLimitKiB  int
	}
}

// statusRange is one item of --expect-status: a code (lo == hi) or a range.
type statusRange struct{ lo, hi int }

// DefaultBodyLimit is how much of a body is read (and matched) by default.
const DefaultBodyLimit = 1 << 20

func newHTTPOptions() *HTTPOptions {
	return &HTTPOptions{Method: http.MethodGet, MaxRedirects: 10, BodyLimit: DefaultBodyLimit}
}

func (o *HTTPOptions) AddFlags(fs *pflag.FlagSet) {
	o.TLSOptions.AddFlags(fs)
	fs.StringVar(&o.Method, "method", http.MethodGet, "request method")
	fs.StringArrayVar(&o.flags.headers, "header", nil, "request header 'Name: value' (repeatable; Host: too)")
	fs.StringVar(&o.Body, "body", "", "request body")
	fs.StringVar(&o.flags.expect, "expect-status", "", "accepted statuses: codes, ranges and classes, e.g. 200,301-302,2xx\n(default: 2xx and 3xx ok, 4xx ok but noted, 5xx http_status)")
	fs.StringVar(&o.flags.regex, "body-regex", "", "regular expression the body (its first --body-limit bytes) must match")
	fs.IntVar(&o.MaxRedirects, "max-redirects", 10, "redirects followed at most (0: none; the 3xx is the answer)")
	fs.StringVar(&o.flags.connectTo, "connect-to", "", "connect to this address instead of resolving the URL's host (Host, SNI and the certificate keep the URL's name)")
	fs.IntVar(&o.flags.bodyLimitKiB, "body-limit", DefaultBodyLimit>>10, "KiB of the body read at most")
}

func (o *HTTPOptions) Check(set func(string) bool) error {
	if err := o.TLSOptions.Check(set); err != nil {
		return err
	}
	if !validToken(o.Method) {
		return fmt.Errorf("--method %q is not an HTTP method", o.Method)
	}
	o.Headers = http.Header{}
	for _, h := range o.flags.headers {
		name, value, ok := strings.Cut(h, ":")
		name, value = strings.TrimSpace(name), strings.TrimSpace(value)
		if !ok || !validToken(name) {
			return fmt.Errorf("--header %q: want 'Name: value'", h)
		}
		if !httpguts.ValidHeaderFieldValue(value) {
			return fmt.Errorf("--header %q: a value cannot hold a line break or other control character", h)
		}
		if strings.EqualFold(name, "Host") {
			o.Host = value
			continue
		}
		o.Headers.Add(name, value)
	}
	var err error
	if o.flags.expect != "" {
		if o.Expect, err = parseStatuses(o.flags.expect); err != nil {
			return err
		}
	}
	if o.flags.regex != "" {
		if o.BodyRegex, err = regexp.Compile(o.flags.regex); err != nil {
			return fmt.Errorf("--body-regex %q is not a regular expression: %v", o.flags.regex, err)
		}
	}
	if o.MaxRedirects < 0 || o.MaxRedirects > 30 {
		return fmt.Errorf("--max-redirects must be between 0 and 30, got %d", o.MaxRedirects)
	}
	if o.flags.connectTo != "" {
		a, err := netip.ParseAddr(o.flags.connectTo)
		if err != nil {
			return fmt.Errorf("--connect-to %q is not an IP address", o.flags.connectTo)
		}
		o.ConnectTo = a.Unmap()
	}
	if o.flags.bodyLimitKiB < 1 || o.flags.bodyLimitKiB > 1<<20 {
		return fmt.Errorf("--body-limit must be between 1 and %d KiB, got %d", 1<<20, o.flags.bodyLimitKiB)
	}
	o.BodyLimit = int64(o.flags.bodyLimitKiB) << 10
	return nil
}

func (o *HTTPOptions) pinnedAddr() netip.Addr { return o.ConnectTo }

// validToken says whether s is an RFC 9110 token (a method or header name).
func validToken(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range []byte(s) {
		if c <= ' ' || c >= 0x7f || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// parseStatuses parses --expect-status: 200, 301-308, 2xx, separated by commas.
func parseStatuses(s string) ([]statusRange, error) {
	var out []statusRange
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		bad := fmt.Errorf("--expect-status %q: %q is not a status, a range (200-299) or a class (2xx)", s, item)
		var r statusRange
		switch lo, hi, isRange := strings.Cut(item, "-"); {
		case len(item) == 3 && strings.HasSuffix(strings.ToLower(item), "xx") && item[0] >= '1' && item[0] <= '5':
			c := int(item[0]-'0') * 100
			r = statusRange{c, c + 99}
		case isRange:
			a, err1 := strconv.Atoi(lo)
			b, err2 := strconv.Atoi(hi)
			if err1 != nil || err2 != nil || a > b {
				return nil, bad
			}
			r = statusRange{a, b}
		default:
			c, err := strconv.Atoi(item)
			if err != nil {
				return nil, bad
			}
			r = statusRange{c, c}
		}
		if r.lo < 100 || r.hi > 599 {
			return nil, bad
		}
		out = append(out, r)
	}
	return out, nil
}

func runHTTP(ctx context.Context, a Attempt) Result {
	o, _ := a.Opts.(*HTTPOptions)
	if o == nil {
		o = newHTTPOptions()
	}
	ev := &tlsEvidence{http: &verdict.HTTP{}}
	u := *a.Target.URL
	method, body := o.Method, o.Body
	begin := time.Now()
	for hop := 0; ; hop++ {
		h := planHop(a, o, &u, hop)
		res, resp := h.run(ctx, a, o, method, body, begin, ev)
		if resp == nil || !isRedirect(resp.status) || o.MaxRedirects == 0 {
			return judge(res, resp, o, ev)
		}
		ev.http.Status, ev.http.Location = resp.status, resp.location
		next, err := u.Parse(resp.location)
		if err == nil && next.Scheme != "http" && next.Scheme != "https" {
			err = fmt.Errorf("scheme %q", next.Scheme)
		}
		if resp.location == "" || err != nil {
			res.Reason, res.Layer = verdict.ProtocolMismatch, ""
			res.Detail = fmt.Sprintf("status %d redirects to %q, which is not a URL reachd can follow", resp.status, resp.location)
			return res
		}
		ev.http.Redirects = append(ev.http.Redirects, verdict.Redirect{URL: u.String(), Addr: resp.addr,
			Status: resp.status, Location: resp.location, TotalMs: verdict.Ms(resp.end.Sub(begin))})
		if hop == o.MaxRedirects {
			res.Reason, res.Layer = verdict.HTTPStatus, ""
			res.Detail = fmt.Sprintf("still redirected after %d redirects (a loop?): status %d to %s", o.MaxRedirects, resp.status, resp.location)
			return res
		}
		if resp.status == http.StatusSeeOther || (resp.status <= 302 && method == http.MethodPost) {
			method, body = http.MethodGet, ""
		}
		u, begin = *next, resp.end
	}
}

// hopPlan is where one request of an attempt goes: the first, or a redirect's.
type hopPlan struct {
	url  *url.URL
	addr netip.Addr // invalid: resolve url's host
	n    int        // 0 for the first request
	// same: the target's own host (not another a redirect named): the request's own
	// headers, Host and --server-name apply; to another host they are not sent, as
	// browsers and Go's client keep credentials from the hosts a redirect names.
	same bool
}

func planHop(a Attempt, o *HTTPOptions, u *url.URL, hop int) hopPlan {
	p := hopPlan{url: u, n: hop, same: strings.EqualFold(u.Hostname(), a.Target.URL.Hostname())}
	switch {
	case hop == 0:
		p.addr = a.Addr.Addr()
	case o.ConnectTo.IsValid() && p.same:
		p.addr = o.ConnectTo
	}
	return p
}

func isRedirect(status int) bool {
	switch status {
	case 301, 302, 303, 307, 308:
		return true
	}
	return false
}

// judge turns the last response into the attempt's reason.
func judge(res Result, resp *response, o *HTTPOptions, ev *tlsEvidence) Result {
	if resp == nil {
		return res
	}
	hv := ev.http
	hv.Status, hv.Proto, hv.Location, hv.BodyBytes, hv.Truncated = resp.status, resp.proto, resp.location, resp.bodyBytes, resp.truncated
	if res.Reason != verdict.OK { // the body did not arrive whole
		return res
	}
	what := fmt.Sprintf("%s %d", resp.proto, resp.status)
	if len(hv.Redirects) > 0 {
		what += fmt.Sprintf(" after %d redirect(s)", len(hv.Redirects))
	}
	switch ok, want := statusOK(resp.status, o.Expect); {
	case !ok:
		res.Reason, res.Layer, res.Detail = verdict.HTTPStatus, "", fmt.Sprintf("%s: status not accepted (want %s)", what, want)
	case o.BodyRegex != nil && !o.BodyRegex.Match(resp.body):
		res.Reason, res.Layer = verdict.BodyMismatch, ""
		res.Detail = fmt.Sprintf("%s: the body (%d bytes read) does not match %q; it begins %s", what, len(resp.body), o.BodyRegex, quoteStart(resp.body, bodyHead))
	default:
		res.Reason, res.Layer = verdict.OK, ""
		res.Detail = fmt.Sprintf("%s, %d body bytes", what, resp.bodyBytes)
		if resp.status >= 400 && o.Expect == nil {
			res.Detail += " (a client error status: ok by default; --expect-status to require another)"
		}
		if resp.location != "" {
			res.Detail += ", Location " + resp.location
		}
		if ev.tlsDetail != "" {
			res.Detail += "; " + ev.tlsDetail
		}
	}
	if resp.truncated {
		res.Detail += fmt.Sprintf(" (body read up to --body-limit, %d KiB)", o.BodyLimit>>10)
	}
	return res
}

// statusOK judges a status: by --expect-status, else by the seed's semantics (5xx fails).
func statusOK(status int, expect []statusRange) (bool, string) {
	if expect == nil {
		return status < 500 && status >= 200, "2xx-4xx"
	}
	var want []string
	ok := false
	for _, r := range expect {
		ok = ok || (status >= r.lo && status <= r.hi)
		if r.lo == r.hi {
			want = append(want, strconv.Itoa(r.lo))
		} else {
			want = append(want, fmt.Sprintf("%d-%d", r.lo, r.hi))
		}
	}
	return ok, strings.Join(want, ",")
}

func quoteStart(b []byte, n int) string {
	if len(b) > n {
		return strconv.Quote(string(b[:n])) + "..."
	}
	return strconv.Quote(string(b))
}

// alpnFor is what an https request offers: HTTP/2 first, as browsers do.
var alpnFor = []string{"h2", "http/1.1"}

// transportFor is an HTTP transport that sends one request over conn (plain or TLS): no
// compression (the body is matched as the server sent it), no proxy. The request does not
// ask the server to close (Connection: close would have it send its close right behind the
// response, often read with it, which blurs where the response arrived); the caller closes
// the connection, with a reset, once the response is read.
func transportFor(conn net.Conn) *http.Transport {
	var used atomic.Bool
	// The one connection, once: a transport that wants another (an HTTP/2 connection that
	// refused the stream) gets an error rather than a second client on the same one.
	dial := func(context.Context, string, string) (net.Conn, error) {
		if used.Swap(true) {
			return nil, errors.New("the probe's connection is spent")
		}
		return conn, nil
	}
	t := &http.Transport{DisableCompression: true, MaxResponseHeaderBytes: 64 << 10, ForceAttemptHTTP2: true}
	if _, ok := conn.(*tls.Conn); ok {
		t.DialTLSContext = dial
	} else {
		t.DialContext = dial
	}
	return t
}

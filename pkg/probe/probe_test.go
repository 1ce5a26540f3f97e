package probe

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"reachd/internal/loopback"
	"reachd/pkg/schedule"
	"reachd/pkg/target"
	"reachd/pkg/verdict"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestClassifyICMP(t *testing.T) {
	cases := []struct {
		v6         bool
		typ, code  uint8
		want       verdict.Reason
		nameSubstr string
	}{
		{false, 3, 0, verdict.NetUnreachable, "net unreachable"},
		{false, 3, 1, verdict.HostUnreachable, "host unreachable"},
		{false, 3, 2, verdict.ProtocolUnreachable, "protocol"},
		{false, 3, 3, verdict.PortUnreachable, "port"},
		{false, 3, 4, verdict.FragNeeded, "fragmentation"},
		{false, 3, 9, verdict.AdminProhibited, "network administratively"},
		{false, 3, 10, verdict.AdminProhibited, "host administratively"},
		{false, 3, 13, verdict.AdminProhibited, "communication administratively"},
		{false, 3, 99, verdict.ICMPError, "code 99"},
		{false, 11, 0, verdict.TTLExceeded, "TTL"},
		{false, 12, 0, verdict.ICMPError, "parameter"},
		{true, 1, 0, verdict.NetUnreachable, "no route"},
		{true, 1, 1, verdict.AdminProhibited, "administratively"},
		{true, 1, 3, verdict.HostUnreachable, "address unreachable"},
		{true, 1, 4, verdict.PortUnreachable, "port"},
		{true, 1, 6, verdict.AdminProhibited, "reject route"},
		{true, 2, 0, verdict.FragNeeded, "too big"},
		{true, 3, 0, verdict.TTLExceeded, "hop limit"},
		{true, 4, 1, verdict.ProtocolUnreachable, "next header"},
		{true, 200, 0, verdict.ICMPError, "type 200"},
	}
	for _, c := range cases {
		r, name := ClassifyICMP(c.v6, c.typ, c.code)
		if r != c.want || !contains(name, c.nameSubstr) {
			t.Errorf("v6=%v %d/%d: got %s %q, want %s ~%q", c.v6, c.typ, c.code, r, name, c.want, c.nameSubstr)
		}
		if !r.Known() {
			t.Errorf("unknown reason %s", r)
		}
	}
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }

// extErr builds a sock_extended_err followed by an offender sockaddr, as the kernel does.
func extErr(errno uint32, origin, typ, code uint8, off netip.Addr) []byte {
	b := make([]byte, 16, 16+28)
	binary.NativeEndian.PutUint32(b[0:], errno)
	b[4], b[5], b[6] = origin, typ, code
	if off.Is4() {
		sa := make([]byte, 16)
		binary.NativeEndian.PutUint16(sa, unix.AF_INET)
		a := off.As4()
		copy(sa[4:], a[:])
		b = append(b, sa...)
	} else if off.Is6() {
		sa := make([]byte, 28)
		binary.NativeEndian.PutUint16(sa, unix.AF_INET6)
		a := off.As16()
		copy(sa[8:], a[:])
		b = append(b, sa...)
	}
	return b
}

func TestParseExtendedErr(t *testing.T) {
	r4 := netip.MustParseAddr("198.51.100.1")
	q, err := ParseExtendedErr(extErr(uint32(unix.EHOSTUNREACH), eeOriginICMP, 3, 13, r4))
	if err != nil || q.Type != 3 || q.Code != 13 || q.Offender != r4 || !q.IsICMP() || q.Errno != unix.EHOSTUNREACH {
		t.Fatalf("v4: %+v %v", q, err)
	}
	r6 := netip.MustParseAddr("2001:db8:c::1")
	q, err = ParseExtendedErr(extErr(uint32(unix.EACCES), eeOriginICMP6, 1, 1, r6))
	if err != nil || q.Offender != r6 || q.Origin != eeOriginICMP6 {
		t.Fatalf("v6: %+v %v", q, err)
	}
	q, err = ParseExtendedErr(extErr(1, eeOriginLocal, 0, 0, netip.Addr{}))
	if err != nil || q.Offender.IsValid() || q.IsICMP() {
		t.Fatalf("no offender: %+v %v", q, err)
	}
	if _, err := ParseExtendedErr(make([]byte, 15)); err == nil {
		t.Fatal("short message accepted")
	}
	// A truncated offender is ignored, not read past the end.
	b := extErr(1, eeOriginICMP6, 1, 1, r6)
	if q, err := ParseExtendedErr(b[:30]); err != nil || q.Offender.IsValid() {
		t.Fatalf("truncated offender: %+v %v", q, err)
	}
}

// FuzzParseExtendedErr: a struct sock_extended_err and its offender, read field by field
// as encoding/binary reads the C layout.
func FuzzParseExtendedErr(f *testing.F) {
	f.Add(extErr(113, eeOriginICMP, 3, 1, netip.MustParseAddr("198.51.100.1")))
	f.Add(extErr(13, eeOriginICMP6, 1, 1, netip.MustParseAddr("2001:db8::1")))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		q, err := ParseExtendedErr(b)
		if (err == nil) != (len(b) >= sizeofSockExtendedErr) {
			t.Fatalf("%d bytes: err %v", len(b), err)
		}
		if err != nil {
			return
		}
		var ee struct {
			Errno                   uint32
			Origin, Type, Code, Pad uint8
			Info, Data              uint32
			Family                  uint16
		}
		_ = binary.Read(bytes.NewReader(append(append([]byte(nil), b...), 0, 0)), binary.NativeEndian, &ee)
		if uint32(q.Errno) != ee.Errno || q.Origin != ee.Origin || q.Type != ee.Type || q.Code != ee.Code || q.Info != ee.Info || q.Data != ee.Data {
			t.Fatalf("%+v, the C layout says %+v", q, ee)
		}
		var want netip.Addr
		switch {
		case len(b) >= 18 && ee.Family == unix.AF_INET && len(b) >= 24:
			want = netip.AddrFrom4([4]byte(b[20:24]))
		case len(b) >= 18 && ee.Family == unix.AF_INET6 && len(b) >= 40:
			want = netip.AddrFrom16([16]byte(b[24:40]))
		}
		if q.Offender != want {
			t.Fatalf("offender %s, want %s", q.Offender, want)
		}
	})
}

type fakeResolver map[string][]netip.Addr

func (f fakeResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, a := range f[host] {
		if network == "ip" || (network == "ip4") == a.Is4() {
			out = append(out, a)
		}
	}
	if host == "slow.example" {
		<-ctx.Done()
		return nil, &net.DNSError{Err: "i/o timeout", Name: host, IsTimeout: true}
	}
	if len(out) == 0 {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	return out, nil
}

// withKind is a kind whose attempts fn runs.
func withKind(_ *testing.T, fn func(ctx context.Context, a Attempt) Result) *Kind {
	return &Kind{Name: "fake", run: fn}
}

func fastOpts() *Options {
	p := schedule.DefaultPolicy()
	return &Options{
		Probe: "cli", Family: FamilyAny, Timeout: time.Second, Policy: p,
		Sleep: func(ctx context.Context, d time.Duration) error { return ctx.Err() },
		Resolver: fakeResolver{
			"dual.example": {netip.MustParseAddr("198.51.100.7"), netip.MustParseAddr("2001:db8::7")},
			"v6.example":   {netip.MustParseAddr("2001:db8::8")},
		},
	}
}

func TestRunnerRetriesAndRecordsTries(t *testing.T) {
	calls := 0
	fake := withKind(t, func(ctx context.Context, a Attempt) Result {
		calls++
		if calls < 3 {
			return Result{Reason: verdict.Timeout, Detail: "silence"}
		}
		return Result{Reason: verdict.OK, Detail: "fine", RTT: 2 * time.Millisecond, HasRTT: true}
	})
	tg, _ := target.ParseHostPort("198.51.100.7:80")
	vs := Run(context.Background(), fake, tg, fastOpts())
	v := vs[0]
	if !v.OK || v.Attempts != 3 || len(v.Tries) != 3 || v.Tries[0].Reason != verdict.Timeout {
		t.Fatalf("verdict %+v", v)
	}
	if v.Tries[0].BackoffMs == nil || v.Tries[2].BackoffMs != nil {
		t.Fatalf("backoff recorded wrongly: %+v", v.Tries)
	}
	if v.RTTMs == nil || *v.RTTMs != 2 || v.Addr != "198.51.100.7" || v.Family != "ipv4" {
		t.Fatalf("verdict %+v", v)
	}
}

func TestRunnerDoesNotRetryDefiniteAnswers(t *testing.T) {
	calls := 0
	fake := withKind(t, func(ctx context.Context, a Attempt) Result { calls++; return Result{Reason: verdict.Refused} })
	tg, _ := target.ParseHostPort("198.51.100.7:80")
	v := Run(context.Background(), fake, tg, fastOpts())[0]
	if calls != 1 || v.Attempts != 1 || v.Reason != verdict.Refused || v.Layer != verdict.LayerTransport {
		t.Fatalf("calls %d verdict %+v", calls, v)
	}
}

// TestRunnerStoppedBeforeRetries: a daemon stopping ends the backoff before a retry; the
// verdict says its retries were not run rather than passing one timeout off as final.
func TestRunnerStoppedBeforeRetries(t *testing.T) {
	fake := withKind(t, func(ctx context.Context, a Attempt) Result {
		return Result{Reason: verdict.Timeout, Detail: "no answer"}
	})
	stop := make(chan struct{})
	close(stop)
	o := fastOpts()
	o.Policy.Retries = 2
	o.Sleep = schedule.StoppableSleep(stop)
	tg, _ := target.ParseHostPort("198.51.100.7:80")
	v := Run(context.Background(), fake, tg, o)[0]
	if v.Attempts != 1 || !strings.HasSuffix(v.Detail, "(reachd stopped before its retries)") {
		t.Fatalf("attempts %d, detail %q: want 1 and the retries said not run", v.Attempts, v.Detail)
	}
}

func TestRunnerResolution(t *testing.T) {
	var (
		mu     sync.Mutex // the families' legs run at once
		probed []netip.AddrPort
	)
	fake := withKind(t, func(ctx context.Context, a Attempt) Result {
		mu.Lock()
		probed = append(probed, a.Addr)
		mu.Unlock()
		return Result{Reason: verdict.OK}
	})
	o := fastOpts()
	o.Policy.Retries = 0

	o.Family = FamilyBoth
	tg, _ := target.ParseHostPort("dual.example:443")
	vs := Run(context.Background(), fake, tg, o)
	if len(vs) != 2 || vs[0].Family != "ipv4" || vs[1].Family != "ipv6" || vs[1].Addr != "2001:db8::7" {
		t.Fatalf("both: %+v %+v", vs[0], vs[1])
	}

	o.Family = FamilyV4
	tg, _ = target.ParseHostPort("v6.example:443")
	v := Run(context.Background(), fake, tg, o)[0]
	if v.Reason != verdict.DNSNoAnswer || v.Layer != verdict.LayerResolve || v.Addr != "" {
		t.Fatalf("v4 of v6-only name: %+v", v)
	}

	o.Family = FamilyAny
	tg, _ = target.ParseHostPort("nxdomain.example:443")
	v = Run(context.Background(), fake, tg, o)[0]
	if v.Reason != verdict.DNSNXDomain || v.RTTMs != nil || v.Route != nil {
		t.Fatalf("nxdomain: %+v", v)
	}

	o.Timeout = 20 * time.Millisecond
	tg, _ = target.ParseHostPort("slow.example:443")
	v = Run(context.Background(), fake, tg, o)[0]
	if v.Reason != verdict.DNSTimeout {
		t.Fatalf("slow resolver: %+v", v)
	}
	if len(probed) != 2 {
		t.Fatalf("probed %v: a failed resolution must not probe", probed)
	}
}

// Loopback only (the network rule for tests: README). a listener of our own and a closed port.
func TestTCPLoopback(t *testing.T) {
	open := loopback.Open(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r := runTCP(ctx, Attempt{Addr: open})
	if r.Reason != verdict.OK || !r.HasRTT || r.RTT <= 0 || !r.Local.IsValid() {
		t.Fatalf("open port: %+v", r)
	}
	closed := loopback.Closed(t)
	r = runTCP(ctx, Attempt{Addr: closed})
	if r.Reason != verdict.Refused {
		t.Fatalf("closed port: %+v", r)
	}
	r = runTCP(ctx, Attempt{Addr: open, Source: netip.MustParseAddr("198.51.100.250")})
	if r.Reason != verdict.LocalError || !contains(r.Detail, "not configured") {
		t.Fatalf("foreign source: %+v", r)
	}
	r = runTCP(ctx, Attempt{Addr: open, Interface: "reachd-nonexistent0"})
	if r.Reason != verdict.LocalError && r.Reason != verdict.Permission {
		t.Fatalf("missing interface: %+v", r)
	}
}

func TestTCPSelfOverload(t *testing.T) {
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Millisecond))
	defer cancel()
	r := runTCP(ctx, Attempt{Addr: loopback.Closed(t)})
	if r.Reason != verdict.SelfOverload || r.sent {
		t.Fatalf("late attempt: %+v", r)
	}
}

func TestConnectErrorClassification(t *testing.T) {
	a := Attempt{Addr: netip.MustParseAddrPort("203.0.113.5:80")}
	cases := map[error]verdict.Reason{
		unix.ENETUNREACH:   verdict.NoRoute,
		unix.EHOSTUNREACH:  verdict.NoRoute,
		unix.EACCES:        verdict.AdminProhibited,
		unix.EPERM:         verdict.AdminProhibited,
		unix.EADDRNOTAVAIL: verdict.LocalError,
		unix.EMFILE:        verdict.LocalError,
	}
	for e, want := range cases {
		if r := sendError("connect", e, a); r.Reason != want {
			t.Errorf("%v: %s, want %s", e, r.Reason, want)
		}
	}
	if r := sendError("connect", unix.EACCES, a); r.Layer != verdict.LayerLocal {
		t.Errorf("local prohibit route must be layer local: %+v", r)
	}
	if r := asyncErrnoResult(Result{}, int(unix.ECONNREFUSED), time.Millisecond); r.Reason != verdict.Refused || !r.HasRTT {
		t.Errorf("async refused: %+v", r)
	}
}

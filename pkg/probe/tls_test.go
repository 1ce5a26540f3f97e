package probe

import (
	"context"
	"crypto/tls"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"reachd/internal/loopback"
	"reachd/internal/testpki"
	"reachd/pkg/target"
	"reachd/pkg/verdict"
)

// serveTLS serves cfg on 127.0.0.1 until the test ends: a handshake, then close.
func serveTLS(t *testing.T, cfg *tls.Config) netip.AddrPort {
	t.Helper()
	return loopback.Serve(t, func(ln net.Listener) net.Listener { return tls.NewListener(ln, cfg) }, func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		_ = c.(*tls.Conn).Handshake()
	})
}

// parseFlags parses args as o's flags and checks them, as the CLI does.
func parseFlags(o KindOptions, args ...string) error {
	fs := pflag.NewFlagSet("kind", pflag.ContinueOnError)
	o.AddFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	return o.Check(fs.Changed)
}

// tlsFlags is the tls kind's options from args.
func tlsFlags(t *testing.T, args ...string) *TLSOptions {
	t.Helper()
	o := &TLSOptions{}
	if err := parseFlags(o, args...); err != nil {
		t.Fatal(err)
	}
	return o
}

func TestTLSReasons(t *testing.T) {
	pki, ca := testpki.ForTest(t)
	scen, err := pki.Scenarios([]string{"www.example.net"}, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	for _, sc := range scen {
		t.Run(sc.Name, func(t *testing.T) {
			addr := serveTLS(t, sc.Config)
			o := tlsFlags(t, append([]string{"--ca", ca, "--server-name", "www.example.net"}, sc.Args...)...)
			tg, _ := target.ParseHostPort(addr.String())
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			r := runTLS(ctx, Attempt{Target: tg, Addr: addr, Timeout: 2 * time.Second, Opts: o})
			if string(r.Reason) != sc.Want || !strings.Contains(r.Detail, sc.Detail) {
				t.Fatalf("got %s %q; want %s ~%q", r.Reason, r.Detail, sc.Want, sc.Detail)
			}
			ev, _ := r.Kind.(*tlsEvidence)
			if sc.Want == "tls_handshake" {
				return
			}
			if ev == nil || ev.tls == nil || len(ev.tls.Chain) == 0 || ev.tls.DaysLeft == nil || ev.tls.Version == "" {
				t.Fatalf("no tls object: %+v", ev)
			}
			if ev.tls.Verified != (sc.Want == "ok" || strings.HasPrefix(sc.Want, "ocsp") || sc.Want == "cert_revoked" || sc.Want == "cert_expiring") {
				t.Fatalf("verified %v for %s", ev.tls.Verified, sc.Want)
			}
			if !r.HasRTT || ev.phases.d["tls"] <= 0 {
				t.Fatalf("no rtt or tls phase: %+v %+v", r, ev.phases)
			}
		})
	}
}

// The system's roots do not hold the test CA: a chain that --ca trusts is untrusted
// without it, and said to be.
func TestTLSSystemRoots(t *testing.T) {
	pki, err := testpki.New()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := pki.Issue(testpki.Leaf{Names: []string{"www.example.net"}})
	if err != nil {
		t.Fatal(err)
	}
	addr := serveTLS(t, &tls.Config{Certificates: []tls.Certificate{cert}})
	tg, _ := target.ParseHostPort(addr.String())
	o := tlsFlags(t, "--server-name", "www.example.net")
	r := runTLS(context.Background(), Attempt{Target: tg, Addr: addr, Timeout: 2 * time.Second, Opts: o})
	if r.Reason != verdict.CertUntrusted || !strings.Contains(r.Detail, "unknown authority") {
		t.Fatalf("got %s %q", r.Reason, r.Detail)
	}
}

func TestTLSOptionErrors(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "x.pem")
	_ = os.WriteFile(notPEM, []byte("hello"), 0o600)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--ca", filepath.Join(dir, "missing.pem")}, "--ca " + dir + "/missing.pem: no such file or directory"},
		{[]string{"--ca", notPEM}, "no PEM certificate"},
		{[]string{"--warn-days", "-1"}, "--warn-days must be between 0 and 3650"},
		{[]string{"--server-name", "bad name"}, "--server-name \"bad name\""},
	} {
		if err := parseFlags(&TLSOptions{}, c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: got %v, want ~%q", c.args, err, c.want)
		}
	}
}

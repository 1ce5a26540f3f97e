package probe

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"time"

	"github.com/spf13/pflag"

	"reachd/pkg/target"
	"reachd/pkg/verdict"
)

// tlsKind: a TCP handshake timed at the wire, a TLS handshake, and the verdict on what the
// server showed: its chain (trusted, in date, for the name), its stapled OCSP response and
// how soon it expires. No request is sent.
var tlsKind = register(&Kind{
	Name:    "tls",
	Order:   6,
	Summary: "TLS handshake: chain, name, expiry and OCSP staple checked (no HTTP)",
	Example: "  reachd probe tls example.net:443\n" +
		"  reachd probe tls --server-name www.example.net --warn-days 21 203.0.113.10:443\n" +
		"  reachd probe tls --ca /etc/ssl/private-ca.pem --require-staple '[2001:db8::10]:8443'",
	Needs:      Needs{Tracepoints: true},
	NewOptions: func() KindOptions { return &TLSOptions{} },
	run:        runTLS,
})

// TLSOptions are the options of the tls kind, and of https URLs in the http kind.
type TLSOptions struct {
	CAFile        string         // --ca: PEM roots to trust instead of the system's
	Roots         *x509.CertPool // loaded from CAFile by Check; nil: the system's
	ServerName    string         // --server-name: SNI and the name verified; "": the target's host
	RequireStaple bool           // --require-staple
	WarnDays      int            // --warn-days: a chain expiring within this many days is not ok
}

// MaxWarnDays bounds --warn-days: ten years, past any certificate's sane lifetime.
const MaxWarnDays = 3650

func (o *TLSOptions) AddFlags(fs *pflag.FlagSet) {
	fs.StringVar(&o.CAFile, "ca", "", "PEM file of the CA certificates to trust (default: the system's roots)")
	fs.StringVar(&o.ServerName, "server-name", "", "name to send as SNI and to verify the certificate for (default: the target's host)")
	fs.BoolVar(&o.RequireStaple, "require-staple", false, "fail without a valid OCSP staple (must-staple certificates always need one)")
	fs.IntVar(&o.WarnDays, "warn-days", 0, "fail with cert_expiring when a certificate of the chain expires within this many days (0: off)")
}

func (o *TLSOptions) Check(func(string) bool) error {
	if o.WarnDays < 0 || o.WarnDays > MaxWarnDays {
		return fmt.Errorf("--warn-days must be between 0 and %d, got %d", MaxWarnDays, o.WarnDays)
	}
	if o.ServerName != "" {
		if _, err := target.ParseHost(o.ServerName); err != nil {
			return fmt.Errorf("--server-name %q is not a host name or address", o.ServerName)
		}
	}
	if o.CAFile == "" {
		return nil
	}
	pool, err := loadRoots(o.CAFile)
	if err != nil {
		return fmt.Errorf("--ca %s: %w", o.CAFile, err)
	}
	o.Roots = pool
	return nil
}

// loadRoots reads the PEM certificates of path.
func loadRoots(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		if pe, ok := err.(*os.PathError); ok {
			err = pe.Err
		}
		return nil, err
	}
	pool := x509.NewCertPool()
	n := 0
	for rest := b; ; {
		var blk *pem.Block
		if blk, rest = pem.Decode(rest); blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("certificate %d: %v", n+1, err)
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, fmt.Errorf("no PEM certificate in it")
	}
	return pool, nil
}

// tlsEvidence is what a tls (or https) attempt tells beyond the common result.
type tlsEvidence struct {
	tcp       *tcpResult
	tls       *verdict.TLS
	tlsDetail string // what the TLS checks found, when they passed
	phases    phases
	http      *verdict.HTTP
}

func (e *tlsEvidence) fill(v *verdict.Verdict, since func(time.Time) *verdict.Millis) {
	if e.tcp != nil {
		e.tcp.fill(v, since)
	}
	v.TLS, v.HTTP = e.tls, e.http
	if e.phases.d != nil {
		e.phases.fill(v)
	}
}

func runTLS(ctx context.Context, a Attempt) Result {
	o, _ := a.Opts.(*TLSOptions)
	if o == nil {
		o = &TLSOptions{}
	}
	s, res := dialSession(ctx, a)
	if s == nil {
		return res
	}
	defer s.close()
	ev := &tlsEvidence{}
	ev.tcp, _ = s.tcp.Kind.(*tcpResult)
	_, hs := s.startTLS(ctx, o, serverName(a, o), nil)
	ev.tls = hs.summary
	// The probe ends with the handshake: its last instant is the server's last handshake
	// byte, and no request phase follows.
	s.finish(ev)
	if hs.res.Reason == verdict.OK {
		hs.res.Detail = hs.detail
	}
	return s.outcome(hs.res, ev)
}

// serverName is the name a TLS attempt sends and verifies: --server-name, else the
// target's host (an address is verified against the certificate's IP addresses).
func serverName(a Attempt, o *TLSOptions) string {
	if o.ServerName != "" {
		return o.ServerName
	}
	if a.Target.Name != "" {
		return a.Target.Name
	}
	return a.Addr.Addr().WithZone("").String()
}

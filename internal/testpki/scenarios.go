package testpki

import (
	"crypto/tls"
	"net"
	"time"

	"golang.org/x/crypto/ocsp"
)

// Scenario is one TLS server a probe must judge: what it presents, and the reason the
// probe must give (with Args added to its command line).
type Scenario struct {
	Name   string
	Config *tls.Config // the server's
	Want   string      // the verdict's reason
	Detail string      // a substring the detail must hold
	Args   []string
}

// Scenarios returns a server for every reason the tls probe names, all for names and ips
// (the wrong-host one for other.invalid only). The OCSP responder URL is never fetched.
func (p *PKI) Scenarios(names []string, ips []net.IP) ([]Scenario, error) {
	const responder = "http://ocsp.example.net/"
	now := time.Now()
	type spec struct {
		name, want, detail string
		leaf               Leaf
		staple             int  // -1: none
		delegate           bool // the staple is signed by another server's certificate
		args               []string
		cfg                func(*tls.Config)
	}
	good := Leaf{Names: names, IPs: ips, OCSPServer: responder}
	with := func(f func(*Leaf)) Leaf { l := good; f(&l); return l }
	specs := []spec{
		{name: "good, stapled", want: "ok", detail: "OCSP staple good", leaf: good, staple: ocsp.Good},
		{name: "good, no responder, staple required", want: "ok", leaf: with(func(l *Leaf) { l.OCSPServer = "" }), staple: -1, args: []string{"--require-staple"}},
		{name: "expired", want: "cert_expired", detail: "expired", staple: -1,
			leaf: with(func(l *Leaf) { l.NotBefore, l.NotAfter = now.Add(-60*24*time.Hour), now.Add(-2*24*time.Hour) })},
		{name: "not yet valid", want: "cert_not_yet_valid", detail: "not valid until", staple: -1,
			leaf: with(func(l *Leaf) { l.NotBefore, l.NotAfter = now.Add(3*24*time.Hour), now.Add(60*24*time.Hour) })},
		{name: "wrong host", want: "cert_hostname", detail: "other.invalid", staple: -1,
			leaf: with(func(l *Leaf) { l.Names, l.IPs = []string{"other.invalid"}, nil })},
		{name: "self-signed", want: "cert_untrusted", detail: "self-signed", staple: -1, leaf: with(func(l *Leaf) { l.SelfSigned = true })},
		{name: "incomplete chain", want: "cert_untrusted", detail: "incomplete chain", staple: -1, leaf: with(func(l *Leaf) { l.NoChain = true })},
		{name: "revoked, stapled", want: "cert_revoked", detail: "keyCompromise", leaf: good, staple: ocsp.Revoked},
		{name: "must-staple without a staple", want: "ocsp_missing", detail: "must-staple", staple: -1, leaf: with(func(l *Leaf) { l.MustStaple = true })},
		{name: "staple says unknown", want: "ocsp_unknown", detail: "does not know", leaf: good, staple: ocsp.Unknown},
		{name: "expires within --warn-days", want: "cert_expiring", detail: "within --warn-days 30", staple: -1, args: []string{"--warn-days", "30"},
			leaf: with(func(l *Leaf) { l.NotAfter = now.Add(10 * 24 * time.Hour) })},
		{name: "must-staple, staple from an unauthorised responder", want: "ocsp_missing", detail: "did not authorise", staple: ocsp.Good, delegate: true,
			leaf: with(func(l *Leaf) { l.MustStaple = true })},
		{name: "TLS 1.1 only", want: "tls_handshake", detail: "version", leaf: good, staple: -1,
			cfg: func(c *tls.Config) { c.MinVersion, c.MaxVersion = tls.VersionTLS10, tls.VersionTLS11 }},
	}
	var out []Scenario
	for _, s := range specs {
		cert, err := p.Issue(s.leaf)
		if err != nil {
			return nil, err
		}
		if s.staple >= 0 {
			var signer *tls.Certificate
			if s.delegate { // another site's certificate from the same CA: no OCSP signing
				other, err := p.Issue(Leaf{Names: []string{"other.invalid"}})
				if err != nil {
					return nil, err
				}
				signer = &other
			}
			if cert.OCSPStaple, err = p.StapleBy(cert, s.staple, signer); err != nil {
				return nil, err
			}
		}
		cfg := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2", "http/1.1"}}
		if s.cfg != nil {
			s.cfg(cfg)
		}
		out = append(out, Scenario{Name: s.name, Config: cfg, Want: s.want, Detail: s.detail, Args: s.args})
	}
	return out, nil
}

package probe

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"net"
	"slices"
	"strings"
	"time"

	"golang.org/x/crypto/ocsp"

	"reachd/pkg/verdict"
)

// What the tls and https probes check once the handshake is done. The handshake itself
// skips Go's verification so that every certificate problem can be named (and the chain
// shown) rather than ending the handshake with one error string.

// certCheck is the verdict on a peer's certificates.
type certCheck struct {
	reason verdict.Reason // OK when the chain is trusted, in date and covers the name
	detail string
	chain  []*x509.Certificate // the verified chain, else what the server sent
}

const timeFmt = time.RFC3339

// verifyPeer checks the certificates a server sent against roots (nil: the system's) for
// name at now: first the chain and its dates, then the name, so that an untrusted or
// expired certificate is named as such whatever name it carries.
func verifyPeer(certs []*x509.Certificate, roots *x509.CertPool, name string, now time.Time) certCheck {
	if len(certs) == 0 {
		return certCheck{reason: verdict.TLSHandshake, detail: "the server sent no certificate"}
	}
	leaf := certs[0]
	opts := x509.VerifyOptions{Roots: roots, Intermediates: x509.NewCertPool(), CurrentTime: now}
	for _, c := range certs[1:] {
		opts.Intermediates.AddCert(c)
	}
	chains, err := leaf.Verify(opts)
	if err != nil {
		return certCheck{reason: chainReason(err, certs, roots, now), detail: chainDetail(err, certs, roots, now), chain: certs}
	}
	chain := chains[0]
	if err := leaf.VerifyHostname(name); err != nil {
		return certCheck{reason: verdict.CertHostname, detail: hostnameDetail(leaf, name), chain: chain}
	}
	return certCheck{reason: verdict.OK, chain: chain}
}

// chainReason maps a verification error to its reason. Go reports both ends of the
// validity window as Expired; the dates tell which.
func chainReason(err error, certs []*x509.Certificate, roots *x509.CertPool, now time.Time) verdict.Reason {
	var ie x509.CertificateInvalidError
	if errors.As(err, &ie) && ie.Reason == x509.Expired {
		if c := outOfDate(certs, now); c != nil && now.Before(c.NotBefore) {
			return verdict.CertNotYetValid
		}
		return verdict.CertExpired
	}
	// A chain that would verify but for a certificate out of date is reported as that: Go
	// checks dates while it builds chains, and reports the last failure it met.
	if c := outOfDate(certs, now); c != nil && verifiesAt(certs, roots, c) {
		if now.Before(c.NotBefore) {
			return verdict.CertNotYetValid
		}
		return verdict.CertExpired
	}
	return verdict.CertUntrusted
}

func chainDetail(err error, certs []*x509.Certificate, roots *x509.CertPool, now time.Time) string {
	switch r := chainReason(err, certs, roots, now); r {
	case verdict.CertExpired, verdict.CertNotYetValid:
		c := outOfDate(certs, now)
		if c == nil { // an intermediate Go found on its own; say what Go said
			return err.Error()
		}
		which := certRole(certs, c)
		if r == verdict.CertExpired {
			return fmt.Sprintf("%s %s expired %s (%s ago)", which, c.Subject, c.NotAfter.UTC().Format(timeFmt), ago(now.Sub(c.NotAfter)))
		}
		return fmt.Sprintf("%s %s is not valid until %s (in %s)", which, c.Subject, c.NotBefore.UTC().Format(timeFmt), ago(c.NotBefore.Sub(now)))
	}
	var ua x509.UnknownAuthorityError
	if errors.As(err, &ua) {
		return untrustedDetail(certs)
	}
	var ie x509.CertificateInvalidError
	if errors.As(err, &ie) {
		return fmt.Sprintf("chain rejected: %s", ie.Error())
	}
	return fmt.Sprintf("chain rejected: %v", err)
}

// untrustedDetail says why no chain leads to a trusted root: the leaf signed itself, the
// server left out the intermediate that signed it (the last certificate it sent is not a
// CA), or the chain ends at an authority this host does not trust.
func untrustedDetail(certs []*x509.Certificate) string {
	leaf := certs[0]
	if bytes.Equal(leaf.RawIssuer, leaf.RawSubject) &&
		leaf.CheckSignature(leaf.SignatureAlgorithm, leaf.RawTBSCertificate, leaf.Signature) == nil {
		return fmt.Sprintf("self-signed certificate %s: not issued by a trusted authority", leaf.Subject)
	}
	last := certs[len(certs)-1]
	if !last.IsCA {
		return fmt.Sprintf("incomplete chain: the server sent %d certificate(s), without the intermediate CA %s that issued %s",
			len(certs), last.Issuer, last.Subject)
	}
	return fmt.Sprintf("certificate signed by unknown authority %s (not in the trust store)", last.Issuer)
}

// outOfDate returns the first certificate the server sent that is not valid at now.
func outOfDate(certs []*x509.Certificate, now time.Time) *x509.Certificate {
	for _, c := range certs {
		if now.Before(c.NotBefore) || now.After(c.NotAfter) {
			return c
		}
	}
	return nil
}

// verifiesAt says whether the chain verifies at a time c is valid.
func verifiesAt(certs []*x509.Certificate, roots *x509.CertPool, c *x509.Certificate) bool {
	at := c.NotBefore.Add(c.NotAfter.Sub(c.NotBefore) / 2)
	opts := x509.VerifyOptions{Roots: roots, Intermediates: x509.NewCertPool(), CurrentTime: at}
	for _, i := range certs[1:] {
		opts.Intermediates.AddCert(i)
	}
	_, err := certs[0].Verify(opts)
	return err == nil
}

func certRole(certs []*x509.Certificate, c *x509.Certificate) string {
	if c == certs[0] {
		return "certificate"
	}
	return "CA certificate"
}

func hostnameDetail(leaf *x509.Certificate, name string) string {
	names := sans(leaf)
	if len(names) == 0 {
		return fmt.Sprintf("certificate %s has no subject alternative names; it is not valid for %s", leaf.Subject, name)
	}
	if len(names) > 5 {
		names = append(names[:5], fmt.Sprintf("and %d more", len(names)-5))
	}
	return fmt.Sprintf("certificate is valid for %s, not %s", strings.Join(names, ", "), name)
}

func sans(c *x509.Certificate) []string {
	out := slices.Clone(c.DNSNames)
	for _, ip := range c.IPAddresses {
		out = append(out, ip.String())
	}
	return out
}

func ago(d time.Duration) string {
	if d >= 48*time.Hour {
		return fmt.Sprintf("%d days", int(d.Hours()/24))
	}
	return d.Round(time.Second).String()
}

// oidTLSFeature is the TLS Feature extension (RFC 7633); status_request (5) in it is
// "must staple".
var oidTLSFeature = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 1, 24}

func mustStaple(c *x509.Certificate) bool {
	for _, e := range c.Extensions {
		if !e.Id.Equal(oidTLSFeature) {
			continue
		}
		var features []int
		if _, err := asn1.Unmarshal(e.Value, &features); err == nil && slices.Contains(features, 5) {
			return true
		}
	}
	return false
}

// checkStaple checks the stapled OCSP response against the leaf and its issuer (chain[1];
// without one, the staple cannot be verified). It returns OK with the status when nothing
// is wrong; a staple is only required when the leaf says must-staple or require is set,
// and never from a leaf that names no OCSP responder.
func checkStaple(staple []byte, chain []*x509.Certificate, require bool, now time.Time) (*verdict.OCSPStatus, verdict.Reason, string) {
	leaf := chain[0]
	st := &verdict.OCSPStatus{Stapled: len(staple) > 0, MustStaple: mustStaple(leaf), Responder: len(leaf.OCSPServer) > 0}
	needed := (st.MustStaple || require) && st.Responder
	why := "--require-staple"
	if st.MustStaple {
		why = "the certificate is must-staple"
	}
	if !st.Stapled {
		st.Status = "none"
		if needed {
			return st, verdict.OCSPMissing, fmt.Sprintf("no OCSP staple in the handshake, and %s", why)
		}
		return st, verdict.OK, ""
	}
	invalid := func(format string, args ...any) (*verdict.OCSPStatus, verdict.Reason, string) {
		st.Status, st.Error = "invalid", fmt.Sprintf(format, args...)
		if needed {
			return st, verdict.OCSPMissing, fmt.Sprintf("no valid OCSP staple (%s), and %s", st.Error, why)
		}
		return st, verdict.OK, "OCSP staple ignored: " + st.Error
	}
	if len(chain) < 2 {
		return invalid("no issuer certificate to check it against")
	}
	resp, err := ocsp.ParseResponseForCert(staple, leaf, chain[1])
	if err != nil {
		return invalid("%v", err)
	}
	if d := resp.Certificate; d != nil {
		// A delegated responder: the library checks the issuer signed its certificate, not
		// that the issuer made it a responder (RFC 6960 4.2.2.2) or that it is in date.
		if !slices.Contains(d.ExtKeyUsage, x509.ExtKeyUsageOCSPSigning) {
			return invalid("signed by %s, which the issuer did not authorise to sign OCSP responses", d.Subject)
		}
		if now.Before(d.NotBefore) || now.After(d.NotAfter) {
			return invalid("the responder's certificate %s is out of date", d.Subject)
		}
	}
	st.ThisUpdate = resp.ThisUpdate.UTC().Format(timeFmt)
	if !resp.NextUpdate.IsZero() {
		st.NextUpdate = resp.NextUpdate.UTC().Format(timeFmt)
	}
	// Responders' clocks drift; a few minutes' grace, as browsers give.
	const skew = 5 * time.Minute
	switch {
	case resp.ThisUpdate.After(now.Add(skew)):
		return invalid("staple produced in the future (this update %s)", st.ThisUpdate)
	case !resp.NextUpdate.IsZero() && now.After(resp.NextUpdate.Add(skew)):
		return invalid("stale staple: its next update %s has passed", st.NextUpdate)
	}
	switch resp.Status {
	case ocsp.Good:
		st.Status = "good"
		return st, verdict.OK, ""
	case ocsp.Revoked:
		st.Status = "revoked"
		st.RevokedAt = resp.RevokedAt.UTC().Format(timeFmt)
		st.RevocationReason = revocationReason(resp.RevocationReason)
		return st, verdict.CertRevoked, fmt.Sprintf("OCSP staple: certificate %s revoked at %s (reason %s)",
			leaf.Subject, st.RevokedAt, st.RevocationReason)
	}
	st.Status = "unknown"
	return st, verdict.OCSPUnknown, fmt.Sprintf("OCSP staple: the responder does not know certificate %s (serial %s)", leaf.Subject, leaf.SerialNumber.Text(16))
}

func revocationReason(r int) string {
	names := map[int]string{
		ocsp.Unspecified: "unspecified", ocsp.KeyCompromise: "keyCompromise", ocsp.CACompromise: "cACompromise",
		ocsp.AffiliationChanged: "affiliationChanged", ocsp.Superseded: "superseded",
		ocsp.CessationOfOperation: "cessationOfOperation", ocsp.CertificateHold: "certificateHold",
		ocsp.RemoveFromCRL: "removeFromCRL", ocsp.PrivilegeWithdrawn: "privilegeWithdrawn", ocsp.AACompromise: "aACompromise",
	}
	if n, ok := names[r]; ok {
		return n
	}
	return fmt.Sprintf("code %d", r)
}

// tlsSummary is the verdict's tls object for a finished handshake.
func tlsSummary(cs tls.ConnectionState, name string, cc certCheck, now time.Time) *verdict.TLS {
	t := &verdict.TLS{
		Version:    tls.VersionName(cs.Version),
		Cipher:     tls.CipherSuiteName(cs.CipherSuite),
		ALPN:       cs.NegotiatedProtocol,
		ServerName: name,
		Verified:   cc.reason == verdict.OK,
	}
	var earliest *x509.Certificate
	for i, c := range cc.chain {
		sum := sha256.Sum256(c.Raw)
		tc := verdict.TLSCert{
			Subject:   c.Subject.String(),
			Issuer:    c.Issuer.String(),
			NotBefore: c.NotBefore.UTC().Format(timeFmt),
			NotAfter:  c.NotAfter.UTC().Format(timeFmt),
			SHA256:    hex.EncodeToString(sum[:]),
		}
		if i == 0 {
			tc.SANs = sans(c)
		}
		t.Chain = append(t.Chain, tc)
		if earliest == nil || c.NotAfter.Before(earliest.NotAfter) {
			earliest = c
		}
	}
	if earliest != nil {
		days := math.Round(earliest.NotAfter.Sub(now).Hours()/24*100) / 100
		t.DaysLeft = &days
		t.Expiry = earliest.NotAfter.UTC().Format(timeFmt)
	}
	return t
}

// expiringDetail says which certificate expires within warn days; "" when none does.
func expiringDetail(chain []*x509.Certificate, warnDays int, now time.Time) string {
	if warnDays <= 0 {
		return ""
	}
	limit := now.Add(time.Duration(warnDays) * 24 * time.Hour)
	for _, c := range chain {
		if c.NotAfter.Before(limit) {
			return fmt.Sprintf("%s %s expires %s, in %s (within --warn-days %d)",
				certRole(chain, c), c.Subject, c.NotAfter.UTC().Format(timeFmt), ago(c.NotAfter.Sub(now)), warnDays)
		}
	}
	return ""
}

// handshakeDetail words a failed TLS handshake: the alert the server sent, or what went
// wrong on this side.
func handshakeDetail(err error) string {
	var rhe tls.RecordHeaderError
	if errors.As(err, &rhe) {
		if looksHTTP(rhe.RecordHeader[:]) {
			return "the server answered in plain HTTP, not TLS: is this the HTTP port?"
		}
		return fmt.Sprintf("the server's answer is not TLS (first bytes %q)", rhe.RecordHeader[:])
	}
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Op == "remote error" {
		return fmt.Sprintf("the server sent the alert %q", strings.TrimPrefix(oe.Err.Error(), "tls: "))
	}
	return strings.TrimPrefix(err.Error(), "tls: ")
}

func looksHTTP(b []byte) bool { return bytes.HasPrefix(b, []byte("HTTP/")) }

// tlsOutcome is how a TLS handshake on a session went.
type tlsOutcome struct {
	res     Result       // OK, or why the handshake or the certificates failed
	summary *verdict.TLS // nil when the handshake failed
	detail  string       // with OK: what the checks found
}

// Budgets of the payload events TC reports for an application probe's connection: a TLS
// handshake and a request take a few segments each way; a response's first and, if it is
// small, last bytes fit in the rest.
const (
	payloadTx = 16
	payloadRx = 48
)

// startTLS runs a TLS handshake over the session for name, offering alpn, and checks what
// the server showed. The certificates are checked here, not by crypto/tls, so that every
// problem is named and the chain is shown whatever is wrong with it.
func (s *session) startTLS(ctx context.Context, o *TLSOptions, name string, alpn []string) (*tls.Conn, tlsOutcome) {
	if deadline, ok := ctx.Deadline(); ok {
		_ = s.conn.SetDeadline(deadline)
	}
	cfg := &tls.Config{ServerName: name, InsecureSkipVerify: true, NextProtos: alpn,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			s.certAsked = true // noted: a later rejection is then the handshake's
			return &tls.Certificate{}, nil
		}}
	tc := tls.Client(s.conn, cfg)
	err := tc.HandshakeContext(ctx)
	_, rx := s.conn.counts()
	s.marks.secured = mark{at: time.Now()}
	if err != nil {
		// Ended where it failed: by the server's alert, whose bytes came last, or else
		// (a timeout, a reset) not with whatever bytes came before.
		s.marks.securedRx = -1
		var oe *net.OpError
		if errors.As(err, &oe) && oe.Op == "remote error" {
			s.marks.securedRx = rx - 1
		}
		res := ioFailure(err, verdict.LayerTLS, "waiting for the server's TLS handshake (the TCP handshake had completed)", s.a.Timeout)
		if res.Reason == "" {
			res = Result{Reason: verdict.TLSHandshake, Detail: handshakeDetail(err), sent: true}
		}
		return nil, tlsOutcome{res: res}
	}
	s.marks.securedRx = rx - 1
	now := time.Now()
	cs := tc.ConnectionState()
	cc := verifyPeer(cs.PeerCertificates, o.Roots, name, now)
	out := tlsOutcome{summary: tlsSummary(cs, name, cc, now)}
	// The tls phase ends with the server's last handshake byte, whatever the checks say;
	// reachd's own checking after it is counted with the request that follows, if any.
	failed := func(r verdict.Reason, detail string) (*tls.Conn, tlsOutcome) {
		out.res = Result{Reason: r, Detail: detail, sent: true}
		return tc, out
	}
	if cc.reason != verdict.OK {
		return failed(cc.reason, cc.detail)
	}
	st, reason, note := checkStaple(cs.OCSPResponse, cc.chain, o.RequireStaple, now)
	out.summary.OCSP = st
	if reason != verdict.OK {
		return failed(reason, note)
	}
	if d := expiringDetail(cc.chain, o.WarnDays, now); d != "" {
		return failed(verdict.CertExpiring, d)
	}
	out.res = Result{Reason: verdict.OK, sent: true}
	out.detail = fmt.Sprintf("%s, chain verified for %s, expires in %.0f days", out.summary.Version, name, *out.summary.DaysLeft)
	if st.Status != "none" {
		out.detail += "; OCSP staple " + st.Status
	}
	if note != "" {
		out.detail += "; " + note
	}
	return tc, out
}

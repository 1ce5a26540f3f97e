// Package testpki makes the certificates reachd's TLS tests need: a root CA, an
// intermediate CA under it, leaf certificates good and bad in every way a probe must name,
// and OCSP responses for them, signed by the intermediate. Keys are ECDSA P-256: fast
// enough to make dozens per test run.
package testpki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"
)

// PKI is a root and an intermediate CA.
type PKI struct {
	Root, Inter       *x509.Certificate
	rootKey, interKey crypto.Signer
	serial            atomic.Int64
}

// New makes a root CA valid ±10 years around now and an intermediate under it.
func New() (*PKI, error) {
	p := &PKI{}
	p.serial.Store(100)
	now := time.Now()
	var err error
	if p.rootKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		return nil, err
	}
	if p.interKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		return nil, err
	}
	root := p.caTemplate("reachd test root CA", now)
	if p.Root, err = p.sign(root, root, p.rootKey.Public(), p.rootKey); err != nil {
		return nil, fmt.Errorf("root: %w", err)
	}
	inter := p.caTemplate("reachd test intermediate CA", now)
	inter.MaxPathLenZero = true
	if p.Inter, err = p.sign(inter, p.Root, p.interKey.Public(), p.rootKey); err != nil {
		return nil, fmt.Errorf("intermediate: %w", err)
	}
	return p, nil
}

func (p *PKI) caTemplate(cn string, now time.Time) *x509.Certificate {
	return &x509.Certificate{
		SerialNumber:          big.NewInt(p.serial.Add(1)),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"reachd tests"}},
		NotBefore:             now.Add(-10 * 365 * 24 * time.Hour),
		NotAfter:              now.Add(10 * 365 * 24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
}

func (p *PKI) sign(tmpl, parent *x509.Certificate, pub crypto.PublicKey, key crypto.Signer) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, key)
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(der)
}

// RootPEM is the root certificate in PEM, for --ca.
func (p *PKI) RootPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.Root.Raw})
}

// WriteRoot writes RootPEM to ca.pem in dir (readable by all: a daemon under test may drop
// privileges) and returns its path.
func (p *PKI) WriteRoot(dir string) (string, error) {
	path := filepath.Join(dir, "ca.pem")
	return path, os.WriteFile(path, p.RootPEM(), 0o644)
}

// Leaf describes a server certificate.
type Leaf struct {
	Names      []string // DNS names
	IPs        []net.IP
	NotBefore  time.Time // zero: a day ago
	NotAfter   time.Time // zero: in 90 days
	MustStaple bool
	OCSPServer string // "" for none
	SelfSigned bool   // signed by its own key, no CA
	NoChain    bool   // the server sends the leaf without the intermediate
}

// oidTLSFeature is RFC 7633's TLS Feature extension; status_request (5) is must-staple.
var oidTLSFeature = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 1, 24}

// Issue makes the leaf and returns it as a server presents it: the chain (leaf, then the
// intermediate unless NoChain) and its key.
func (p *PKI) Issue(l Leaf) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(p.serial.Add(1)),
		Subject:      pkix.Name{CommonName: firstOr(l.Names, "reachd test server")},
		DNSNames:     l.Names,
		IPAddresses:  l.IPs,
		NotBefore:    orTime(l.NotBefore, now.Add(-24*time.Hour)),
		NotAfter:     orTime(l.NotAfter, now.Add(90*24*time.Hour)),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if l.OCSPServer != "" {
		tmpl.OCSPServer = []string{l.OCSPServer}
	}
	if l.MustStaple {
		v, _ := asn1.Marshal([]int{5})
		tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, pkix.Extension{Id: oidTLSFeature, Value: v})
	}
	parent, signer := p.Inter, p.interKey
	if l.SelfSigned {
		parent, signer = tmpl, key
	}
	leaf, err := p.sign(tmpl, parent, key.Public(), signer)
	if err != nil {
		return tls.Certificate{}, err
	}
	c := tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
	if !l.SelfSigned && !l.NoChain {
		c.Certificate = append(c.Certificate, p.Inter.Raw)
	}
	return c, nil
}

// Staple returns an OCSP response for c's leaf, signed by the intermediate: status is
// ocsp.Good, ocsp.Revoked or ocsp.Unknown; revoked ones were revoked an hour ago for
// keyCompromise. It is valid from an hour ago for a day.
func (p *PKI) Staple(c tls.Certificate, status int) ([]byte, error) {
	return p.StapleBy(c, status, nil)
}

// StapleBy is Staple signed by a delegated responder: signer, a certificate the
// intermediate issued (nil: the intermediate itself).
func (p *PKI) StapleBy(c tls.Certificate, status int, signer *tls.Certificate) ([]byte, error) {
	now := time.Now()
	tmpl := ocsp.Response{
		Status:       status,
		SerialNumber: c.Leaf.SerialNumber,
		ThisUpdate:   now.Add(-time.Hour),
		NextUpdate:   now.Add(24 * time.Hour),
	}
	if status == ocsp.Revoked {
		tmpl.RevokedAt = now.Add(-time.Hour).Truncate(time.Second)
		tmpl.RevocationReason = ocsp.KeyCompromise
	}
	if signer != nil {
		tmpl.Certificate = signer.Leaf // embedded, as a delegated responder's must be
		return ocsp.CreateResponse(p.Inter, signer.Leaf, tmpl, signer.PrivateKey.(crypto.Signer))
	}
	return ocsp.CreateResponse(p.Inter, p.Inter, tmpl, p.interKey)
}

func firstOr(xs []string, d string) string {
	if len(xs) > 0 {
		return xs[0]
	}
	return d
}

func orTime(t, d time.Time) time.Time {
	if t.IsZero() {
		return d
	}
	return t
}

// ForTest is New for a test, with the root written for --ca in the test's temporary
// directory; it fails the test on an error.
func ForTest(t testing.TB) (*PKI, string) {
	t.Helper()
	p, err := New()
	if err != nil {
		t.Fatal(err)
	}
	ca, err := p.WriteRoot(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return p, ca
}

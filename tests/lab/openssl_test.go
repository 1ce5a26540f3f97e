package lab

import (
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ocsp"

	"reachd/internal/testpki"
)

// opensslServer runs `openssl s_server -www` on port in the server namespace (IPv6) with
// cert, its chain and args, until the test ends.
func opensslServer(t *testing.T, l *Lab, dir string, port int, args ...string) {
	t.Helper()
	base := []string{"s_server", "-quiet", "-www", "-accept", fmt.Sprintf("[::]:%d", port),
		"-cert", dir + "/cert.pem", "-key", dir + "/key.pem", "-cert_chain", dir + "/chain.pem"}
	cmd := l.Server.Command("openssl", append(base, args...)...)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		c, err := l.Client.Dial("tcp", ap(ServerV6, port))
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("openssl s_server on %d did not start: %v", port, err)
		}
	}
}

// TestTLSOpenSSLServer: the tls and http probes against another TLS stack than Go's:
// OpenSSL's s_server, which sends TLS 1.3 session tickets after the handshake, answers in
// HTTP/1.0, staples an OCSP response from a file, and rejects a missing client
// certificate with an alert after the client's handshake.
func TestTLSOpenSSLServer(t *testing.T) {
	l := requireLab(t)
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Fatal("openssl is needed (apt-get install openssl)")
	}
	pki, ca := testpki.ForTest(t)
	leaf := testLeaf()
	leaf.OCSPServer = "http://ocsp.example.net/"
	cert, err := pki.Issue(leaf)
	if err != nil {
		t.Fatal(err)
	}
	staple, err := pki.Staple(cert, ocsp.Good)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	kb, err := x509.MarshalECPrivateKey(cert.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{
		"key.pem":   pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}),
		"cert.pem":  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}),
		"chain.pem": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[1]}),
		"ocsp.der":  staple,
	} {
		if err := os.WriteFile(dir+"/"+name, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	opensslServer(t, l, dir, 9610, "-status_file", dir+"/ocsp.der")
	opensslServer(t, l, dir, 9611, "-Verify", "1")
	opensslServer(t, l, dir, 9612, "-no_tls1_3", "-status_file", dir+"/ocsp.der")
	url := func(port int) string { return fmt.Sprintf("https://%s:%d/", webName, port) }
	for _, c := range []struct {
		kind, target string
		args         []string
		reason       string
		detail       string
	}{
		{"http", url(9610), nil, "ok", "HTTP/1.0 200"},
		{"http", url(9611), nil, "tls_handshake", `"certificate required" after the handshake`},
		{"http", url(9612), nil, "ok", "TLS 1.2"},
		{"tls", ap(ServerV6, 9610), []string{"--server-name", webName, "--require-staple"}, "ok", "TLS 1.3, chain verified for www.example.net, expires in 90 days; OCSP staple good"},
		{"tls", ap(ServerV6, 9612), []string{"--server-name", webName, "--require-staple"}, "ok", "TLS 1.2, chain verified for www.example.net, expires in 90 days; OCSP staple good"},
	} {
		args := append([]string{"--retries", "0", "--ca", ca}, c.args...)
		if c.kind == "http" {
			args = append(args, "--connect-to", ServerV6.String())
		}
		vs, code := probeKind(t, l, c.kind, nil, append(args, c.target)...)
		if len(vs) != 1 {
			t.Fatalf("%s: want 1 verdict, got %d (exit %d)", c.target, len(vs), code)
		}
		v := vs[0]
		t.Logf("%s → %s: %s %v", c.target, v["reason"], v["detail"], v["timings_ms"])
		if v["reason"] != c.reason || !strings.Contains(v["detail"].(string), c.detail) {
			t.Errorf("%s: got %v %q, want %s ~%q", c.target, v["reason"], v["detail"], c.reason, c.detail)
		}
		// s_server -www answers HTTP/1.0 and closes: its close_notify rides with the
		// response, often read with it, and the response's first byte is then not known
		// to 20 µs (docs/verdict.md): ttfb may be userspace's. The rest is the wire's.
		tm := v["timings_ms"].(map[string]any)
		wired, _ := tm["wire"].([]any)
		want := []string{"connect", "tls", "request"}
		if c.kind == "tls" || c.reason != "ok" {
			// A server that rejects the handshake after it (certificate required) races
			// the request: its alert may be read before the request is written, or cut
			// it short; the handshake's phases are the wire's either way.
			want = want[:2]
		}
		for _, p := range want {
			if !slices.Contains(wired, any(p)) {
				t.Errorf("%s: phase %s not wire-timed: %v", c.target, p, tm)
			}
		}
	}
}

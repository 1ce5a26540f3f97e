package verdict

// TLS is what a TLS handshake showed: the connection's parameters, the certificate chain,
// how it verified and the stapled OCSP response.
type TLS struct {
	Version    string `json:"version,omitempty"` // "TLS 1.3"
	Cipher     string `json:"cipher,omitempty"`
	ALPN       string `json:"alpn,omitempty"`
	ServerName string `json:"server_name,omitempty"` // the name verified (and sent as SNI, unless an address)
	// Verified: the chain leads to a trusted root and covers the server name.
	Verified bool     `json:"verified"`
	DaysLeft *float64 `json:"days_left,omitempty"` // until Expiry, two decimals (negative: expired)
	// Expiry is when the earliest-expiring certificate of the chain expires.
	Expiry string      `json:"expiry,omitempty"`
	Chain  []TLSCert   `json:"chain,omitempty"`
	OCSP   *OCSPStatus `json:"ocsp,omitempty"`
}

// TLSCert is one certificate of the chain, leaf first.
type TLSCert struct {
	Subject   string   `json:"subject"`
	Issuer    string   `json:"issuer"`
	NotBefore string   `json:"not_before"`
	NotAfter  string   `json:"not_after"`
	SHA256    string   `json:"sha256"`
	SANs      []string `json:"sans,omitempty"` // the leaf's DNS names and addresses
}

// OCSPStatus is the stapled OCSP response, as checked against the issuer.
type OCSPStatus struct {
	// Status: good, revoked, unknown (what the responder said), none (no staple), invalid
	// (a staple that does not verify, is for another certificate or is out of date).
	Status     string `json:"status"`
	Stapled    bool   `json:"stapled"`
	MustStaple bool   `json:"must_staple"`
	Responder  bool   `json:"responder"` // the leaf names an OCSP responder
	ThisUpdate string `json:"this_update,omitempty"`
	NextUpdate string `json:"next_update,omitempty"`
	RevokedAt  string `json:"revoked_at,omitempty"`
	// RevocationReason is the RFC 5280 reason's name (keyCompromise, superseded, ...).
	RevocationReason string `json:"revocation_reason,omitempty"`
	Error            string `json:"error,omitempty"` // why a staple is invalid
}

// HTTP is what an HTTP probe's requests got back.
type HTTP struct {
	Status    int        `json:"status"` // of the last response; 0 when none came
	Proto     string     `json:"proto,omitempty"`
	Location  string     `json:"location,omitempty"`
	BodyBytes int64      `json:"body_bytes"`
	Truncated bool       `json:"truncated,omitempty"` // the body was longer than read
	Redirects []Redirect `json:"redirects,omitempty"`
}

// Redirect is one response that sent the probe on, in order.
type Redirect struct {
	URL      string `json:"url"`
	Addr     string `json:"addr"`
	Status   int    `json:"status"`
	Location string `json:"location"`
	TotalMs  Millis `json:"total_ms"`
}

// Line is a line probe's dialogue, step by step, up to the step that failed.
type Line struct {
	Steps []LineStep `json:"steps"`
}

// LineStep is one step of a dialogue: what was sent, what was expected, what came.
type LineStep struct {
	N        int    `json:"n"`
	Send     string `json:"send,omitempty"`
	Expect   string `json:"expect,omitempty"`
	Received string `json:"received,omitempty"` // the line, quoted, its first 128 bytes
}

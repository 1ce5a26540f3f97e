package verdict

// Reason is the machine-readable cause of a verdict (docs/verdict.md, "Reasons").
type Reason string

// Layer says where a failure sits, from the prober's own host outwards.
type Layer string

const (
	LayerOK          Layer = "ok"
	LayerConfig      Layer = "config"
	LayerLocal       Layer = "local"
	LayerResolve     Layer = "resolve"
	LayerLink        Layer = "link"
	LayerNetwork     Layer = "network"
	LayerTransport   Layer = "transport"
	LayerTLS         Layer = "tls"
	LayerApplication Layer = "application"
)

const (
	OK                  Reason = "ok"
	Refused             Reason = "refused"
	Timeout             Reason = "timeout"
	Reset               Reason = "reset"
	HostUnreachable     Reason = "host_unreachable"
	NetUnreachable      Reason = "net_unreachable"
	AdminProhibited     Reason = "admin_prohibited"
	PortUnreachable     Reason = "port_unreachable"
	ProtocolUnreachable Reason = "protocol_unreachable"
	TTLExceeded         Reason = "ttl_exceeded"
	FragNeeded          Reason = "frag_needed"
	MTUBlackhole        Reason = "mtu_blackhole"
	ICMPError           Reason = "icmp_error"
	OpenFiltered        Reason = "open_filtered"
	NoRoute             Reason = "no_route"
	LocalError          Reason = "local_error"
	SelfOverload        Reason = "self_overload"
	Permission          Reason = "permission"
	DNSNXDomain         Reason = "dns_nxdomain"
	DNSServfail         Reason = "dns_servfail"
	DNSRefused          Reason = "dns_refused"
	DNSTimeout          Reason = "dns_timeout"
	DNSNoAnswer         Reason = "dns_no_answer"
	TLSHandshake        Reason = "tls_handshake"
	CertExpired         Reason = "cert_expired"
	CertExpiring        Reason = "cert_expiring"
	CertNotYetValid     Reason = "cert_not_yet_valid"
	CertUntrusted       Reason = "cert_untrusted"
	CertHostname        Reason = "cert_hostname"
	CertRevoked         Reason = "cert_revoked"
	OCSPUnknown         Reason = "ocsp_unknown"
	OCSPMissing         Reason = "ocsp_missing"
	HTTPStatus          Reason = "http_status"
	BodyMismatch        Reason = "body_mismatch"
	ProtocolMismatch    Reason = "protocol_mismatch"
)

// layers lists, per reason, the layers it may be reported at; the first is the usual one.
// A reason has more than one only where the same outcome has a local and a remote cause
// (a prohibit route on this host vs. an ICMP error from a router; an ICMP error this host
// made itself, wire.icmp.local, is layer local).
var layers = map[Reason][]Layer{
	OK:                  {LayerOK},
	Refused:             {LayerTransport},
	Timeout:             {LayerTransport, LayerNetwork, LayerTLS, LayerApplication},
	Reset:               {LayerTransport, LayerTLS, LayerApplication},
	HostUnreachable:     {LayerNetwork, LayerLink, LayerLocal},
	NetUnreachable:      {LayerNetwork, LayerLocal},
	AdminProhibited:     {LayerNetwork, LayerLocal},
	PortUnreachable:     {LayerTransport, LayerLocal},
	ProtocolUnreachable: {LayerNetwork, LayerLocal},
	TTLExceeded:         {LayerNetwork},
	FragNeeded:          {LayerNetwork, LayerLocal},
	MTUBlackhole:        {LayerNetwork},
	ICMPError:           {LayerNetwork, LayerLocal},
	OpenFiltered:        {LayerTransport},
	NoRoute:             {LayerLocal},
	LocalError:          {LayerLocal},
	SelfOverload:        {LayerLocal},
	Permission:          {LayerLocal},
	DNSNXDomain:         {LayerResolve},
	DNSServfail:         {LayerResolve},
	DNSRefused:          {LayerResolve},
	DNSTimeout:          {LayerResolve},
	DNSNoAnswer:         {LayerResolve},
	TLSHandshake:        {LayerTLS},
	CertExpired:         {LayerTLS},
	CertExpiring:        {LayerTLS},
	CertNotYetValid:     {LayerTLS},
	CertUntrusted:       {LayerTLS},
	CertHostname:        {LayerTLS},
	CertRevoked:         {LayerTLS},
	OCSPUnknown:         {LayerTLS},
	OCSPMissing:         {LayerTLS},
	HTTPStatus:          {LayerApplication},
	BodyMismatch:        {LayerApplication},
	ProtocolMismatch:    {LayerApplication},
}

// Layer returns the usual layer of r.
func (r Reason) Layer() Layer {
	if l, ok := layers[r]; ok {
		return l[0]
	}
	return LayerLocal
}

// Layers returns every layer r may be reported at.
func (r Reason) Layers() []Layer { return layers[r] }

// Known reports whether r is in the reason table.
func (r Reason) Known() bool { _, ok := layers[r]; return ok }

// Reasons returns every known reason.
func Reasons() []Reason {
	out := make([]Reason, 0, len(layers))
	for r := range layers {
		out = append(out, r)
	}
	return out
}

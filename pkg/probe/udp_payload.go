package probe

import (
	"bytes"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// request is one datagram's payload and how to recognise the answer to it.
type request struct {
	name string // the verdict's udp.payload
	data []byte
	// check says whether reply answers this request; "" means it does, else why not. Nil
	// for bytes reachd does not know the protocol of: any reply answers.
	check func(reply []byte) string
	// describe words a reply for the verdict's detail ("" for the plain byte count).
	describe func(reply []byte) string
}

// payloadName is what the attempt sends to dst: --payload-hex's bytes, --payload's
// request, else the request of the protocol dst's port is known for.
func (o *UDPOptions) payloadName(dst netip.AddrPort) string {
	switch {
	case o.PayloadSet || len(o.Payload) > 0:
		return PayloadHex
	case o.Builtin != "":
		return o.Builtin
	}
	return PayloadForPort(dst.Port())
}

// newRequest builds the payload of one datagram to dst. Built-in requests carry a fresh
// identifier (DNS id, NTP transmit timestamp, ...) so that an answer to an earlier datagram,
// or to someone else, is not taken for this one's; id is the 16-bit one (see protocol).
func (o *UDPOptions) newRequest(dst netip.AddrPort, id uint16) (request, error) {
	if o.build != nil {
		return o.build(id)
	}
	name := o.payloadName(dst)
	switch name {
	case PayloadHex:
		return request{name: name, data: o.Payload}, nil
	case PayloadText:
		return request{name: name, data: payloadText}, nil
	}
	p, ok := protocols[name]
	if !ok {
		return request{}, fmt.Errorf("unknown payload %q", name)
	}
	r, err := p.build(dst, id)
	r.name = name
	return r, err
}

// describeReply says what a reply was in the verdict's detail: the DNS rcode, the NTP
// stratum, ... for built-in payloads, else its size.
func (r *request) describeReply(reply []byte) string {
	if r.describe != nil {
		if d := r.describe(reply); d != "" {
			return d
		}
	}
	return fmt.Sprintf("%d-byte reply", len(reply))
}

// expectation says why reply fails --expect / --expect-hex, or "" when it passes.
func (o *UDPOptions) expectation(reply []byte) string {
	if o.Expect != nil && !o.Expect.Match(reply) {
		return fmt.Sprintf("the reply %s does not match --expect %s", quoteBytes(reply, 64), o.Expect)
	}
	if len(o.ExpectHex) > 0 && !bytes.Contains(reply, o.ExpectHex) {
		return fmt.Sprintf("the reply %s does not contain --expect-hex %x", quoteBytes(reply, 64), o.ExpectHex)
	}
	return ""
}

// quoteBytes shows at most n bytes: quoted text when printable, else hex.
func quoteBytes(b []byte, n int) string {
	more := ""
	if len(b) > n {
		b, more = b[:n], "…"
	}
	printable := true
	for _, c := range b {
		if (c < 0x20 || c > 0x7e) && c != '\n' && c != '\r' && c != '\t' {
			printable = false
			break
		}
	}
	if printable {
		return strconv.Quote(string(b)) + more
	}
	return "0x" + strings.ToLower(fmt.Sprintf("%X", b)) + more
}

// SPDX-License-Identifier: GPL-2.0
/* TC ingress/egress: report the probe's own SYN, SYN-ACK, RST, UDP datagrams, ICMP echoes,
 * the ICMP errors that quote them, and the payload segments of application probes' flows.
 * A gateway forwards other people's traffic through here, so everything else must leave
 * after at most one map lookup: TCP segments that are not SYN or RST leave after one array
 * load (payload_gate), before any hash lookup. */
/* No CO-RE here: the headers these programs read are wire formats and __sk_buff is UAPI, the
 * same on every kernel and architecture. Without CO-RE relocations, loading them needs no
 * kernel BTF, whose parsing cost a one-shot run tens of milliseconds of CPU. */
#define BPF_NO_PRESERVE_ACCESS_INDEX
#include "wire.h"

char LICENSE[] SEC("license") = "GPL";

/* Keep these in BTF so bpf2go -type can export them to Go. */
const enum event_kind *unused_event_kind __attribute__((unused));
const struct wire_event *unused_wire_event __attribute__((unused));

/* The gate in front of payload_flows, indexed by the XOR of a segment's two ports: nonzero
 * while some watched flow has that port pair. A global, so that reading it is one load
 * (no map lookup): a TCP segment that is not a SYN or RST (the bulk of what a gateway
 * forwards) pays that load and nothing more unless it collides with a watched flow's
 * ports. Userspace keeps the counts and writes the bytes through the map's memory. */
volatile __u8 payload_gate[65536];
/* Nonzero while any flow's payload is watched: checked first, so that while none is (no
 * application probe in flight) a segment's ports do not even index the gate, whose 64 KiB
 * random ports would spread over the cache. */
volatile __u8 payload_any;

#define MAX_VLAN 2
#define MAX_EXTHDR 6

struct cursor {
	void *pos;
	void *end;
};

struct vlan_tag {
	__be16 tci;
	__be16 proto;
};

/* Ethernet plus up to two 802.1Q/802.1ad tags (a tag the driver offloaded into skb
 * metadata is simply not in the data). Returns the ethertype in network order, or 0. */
static __always_inline __be16 parse_eth(struct cursor *c)
{
	struct ethhdr *eth = c->pos;
	if ((void *)(eth + 1) > c->end)
		return 0;
	c->pos = eth + 1;
	__be16 proto = eth->h_proto;
#pragma unroll
	for (int i = 0; i < MAX_VLAN; i++) {
		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		struct vlan_tag *v = c->pos;
		if ((void *)(v + 1) > c->end)
			return 0;
		c->pos = v + 1;
		proto = v->proto;
	}
	return proto;
}

/* IPv4 header with options. A first fragment carries the L4 header (a large UDP datagram
 * or its reply is one): it is parsed like a whole packet, and times the datagram by its
 * first fragment. Later fragments carry no L4 header: they return -1. */
static __always_inline int parse_ipv4(struct cursor *c, struct flow_key *k, int egress, __u8 *proto)
{
	struct iphdr *ip = c->pos;
	if ((void *)(ip + 1) > c->end)
		return -1;
	__u32 hlen = ip->ihl * 4;
	if (hlen < sizeof(*ip) || c->pos + hlen > c->end)
		return -1;
	if (ip->frag_off & bpf_htons(0x1fff)) /* a fragment offset: not the first */
		return -1;
	k->family = 4;
	if (egress) {
		__builtin_memcpy(k->laddr, &ip->saddr, 4);
		__builtin_memcpy(k->raddr, &ip->daddr, 4);
	} else {
		__builtin_memcpy(k->laddr, &ip->daddr, 4);
		__builtin_memcpy(k->raddr, &ip->saddr, 4);
	}
	*proto = ip->protocol;
	c->pos += hlen;
	return 0;
}

struct opt_hdr {
	__u8 nexthdr;
	__u8 len;
};

/* IPv6 header and up to MAX_EXTHDR extension headers. Non-first fragments return -1; a
 * first fragment goes on to the header after the fragment header. */
static __always_inline int parse_ipv6(struct cursor *c, struct flow_key *k, int egress, __u8 *proto)
{
	struct ipv6hdr *ip6 = c->pos;
	if ((void *)(ip6 + 1) > c->end)
		return -1;
	k->family = 6;
	if (egress) {
		__builtin_memcpy(k->laddr, &ip6->saddr, 16);
		__builtin_memcpy(k->raddr, &ip6->daddr, 16);
	} else {
		__builtin_memcpy(k->laddr, &ip6->daddr, 16);
		__builtin_memcpy(k->raddr, &ip6->saddr, 16);
	}
	__u8 nh = ip6->nexthdr;
	c->pos = ip6 + 1;
#pragma unroll
	for (int i = 0; i < MAX_EXTHDR; i++) {
		struct opt_hdr *o = c->pos;
		if ((void *)(o + 1) > c->end)
			return -1;
		switch (nh) {
		case 0:  /* hop-by-hop */
		case 43: /* routing */
		case 60: /* destination options */
			c->pos += (o->len + 1) * 8;
			break;
		case 51: /* AH */
			c->pos += (o->len + 2) * 4;
			break;
		case 44: { /* fragment: 8 bytes, offset and M flag in bytes 2-3 */
			__be16 *fo = (void *)o + 2;
			if ((void *)(fo + 1) > c->end)
				return -1;
			if (*fo & bpf_htons(0xfff8)) /* an offset: not the first fragment */
				return -1;
			c->pos += 8;
			break;
		}
		default:
			*proto = nh;
			return 0;
		}
		nh = o->nexthdr;
	}
	return -1; /* too many extension headers to follow */
}

static __always_inline void emit_len(struct __sk_buff *skb, struct flow_key *k, __u64 token, __u8 kind,
				     int egress, __u32 seq, __u32 ack, __u8 itype, __u8 icode, const __u8 *from,
				     int from_len, __u32 len)
{
	struct wire_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->token = token;
	e->key = *k;
	e->kind = kind;
	e->egress = egress;
	e->icmp_type = itype;
	e->icmp_code = icode;
	e->ifindex = skb->ifindex;
	e->seq = seq;
	e->ack = ack;
	__builtin_memset(e->from, 0, sizeof(e->from));
	/* Reserved ring memory is not zeroed: every byte Go reads is set here. */
	e->state_old = 0;
	e->state_new = 0;
	__builtin_memset(e->pad2, 0, sizeof(e->pad2));
	e->len = len;
	if (from_len == 4)
		__builtin_memcpy(e->from, from, 4);
	else if (from_len == 16)
		__builtin_memcpy(e->from, from, 16);
	submit_event(e);
}

static __always_inline void emit(struct __sk_buff *skb, struct flow_key *k, __u64 token, __u8 kind,
				 int egress, __u32 seq, __u32 ack, __u8 itype, __u8 icode, const __u8 *from,
				 int from_len)
{
	emit_len(skb, k, token, kind, egress, seq, ack, itype, icode, from, from_len, 0);
}

/* Where the IP packet at ip (ip_off into the packet) ends by its header's length field; a
 * GSO packet too big for the field has 0 there, and then ends with the skb. Read only on
 * the payload path, not for every packet. */
static __always_inline __u32 ip_end(struct __sk_buff *skb, void *ip, void *end, int v6, __u32 ip_off)
{
	__u32 len = 0;
	if (v6) {
		struct ipv6hdr *ip6 = ip;
		if ((void *)(ip6 + 1) <= end && ip6->payload_len)
			len = 40 + bpf_ntohs(ip6->payload_len);
	} else {
		struct iphdr *ip4 = ip;
		if ((void *)(ip4 + 1) <= end)
			len = bpf_ntohs(ip4->tot_len);
	}
	return len ? ip_off + len : skb->len;
}

/* A TCP segment that is not a SYN or RST, of a flow whose payload is watched: report it if
 * it carries payload and its direction's budget is not spent. ip_end: where the IP packet
 * ends (see ip_end()). */
static __always_inline void payload_event(struct __sk_buff *skb, struct flow_key *k, __u8 *l4, int egress,
					  __u32 l4_off, __u32 ip_end)
{
	__u32 doff = (l4[12] >> 4) * 4;
	if (ip_end <= l4_off + doff)
		return;
	struct payload_watch *w = bpf_map_lookup_elem(&payload_flows, k);
	if (!w)
		return;
	/* Read, then add: the add's old value needs BPF v3 atomics. Segments of one flow on
	 * several CPUs at once may overshoot the budget by a few; it bounds, it does not count. */
	__u32 *used = egress ? &w->used_tx : &w->used_rx;
	if (*used >= (egress ? w->max_tx : w->max_rx))
		return;
	__sync_fetch_and_add(used, 1);
	emit_len(skb, k, w->token, egress ? EV_DATA_TX : EV_DATA_RX, egress, bpf_ntohl(*(__be32 *)(l4 + 4)),
		 bpf_ntohl(*(__be32 *)(l4 + 8)), 0, 0, 0, 0, ip_end - l4_off - doff);
}

/* Make the first want bytes of the packet (or all of it, if shorter) readable. Headers are
 * normally in the linear part and this costs one comparison; some drivers (and GRO's
 * napi_gro_frags path) leave them in page fragments, out of direct reach. Pulling may copy
 * the packet, so it is asked only for bytes a decision needs and finds missing: never for
 * the payload of a packet whose headers are in reach (TCP data with its headers linear is
 * left alone). Packet pointers are stale after it. */
static __always_inline void linearize(struct __sk_buff *skb, __u32 want)
{
	__u32 len = skb->len;
	if (want > len)
		want = len;
	if (want > 2048)
		return;
	asm volatile("" : "+r"(skb)); /* see handle() */
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	if (data + want > end)
		bpf_skb_pull_data(skb, want);
}

/* What handle() needs before it can tell anything: an Ethernet header, an IPv6 header and
 * the first 8 bytes after it (the next header's type and length, or a fragment header); or
 * IPv4 with options. Less than any NIC keeps linear for a TCP segment's headers. */
#define L3_LEN (14 + 40 + 8)
#define QUOTE_LEN 128 /* a quoted IPv6 header, extension headers and 8 bytes of L4 */

/* The quoted header of an ICMP error: the original packet, sent by the prober, so it is
 * keyed as egress. Only TCP/UDP ports, ICMP echo identifiers and what tells one packet of a
 * flow from another (the echo sequence, the TCP sequence) are needed: the first 8 bytes of
 * L4, which every ICMP error must quote. */
static __always_inline int key_from_quote(struct cursor *c, struct flow_key *k, int v6, __u32 *seq)
{
	__u8 proto = 0;
	int err = v6 ? parse_ipv6(c, k, 1, &proto) : parse_ipv4(c, k, 1, &proto);
	if (err)
		return -1;
	k->proto = proto;
	if (proto == PROTO_TCP || proto == PROTO_UDP) {
		__be16 *ports = c->pos;
		if ((void *)(ports + 2) > c->end)
			return -1;
		k->lport = ports[0];
		k->rport = ports[1];
		if (proto == PROTO_TCP) {
			__be32 *tseq = (void *)(ports + 2);
			if ((void *)(tseq + 1) <= c->end)
				*seq = bpf_ntohl(*tseq);
		}
		return 0;
	}
	if ((proto == PROTO_ICMP && !v6) || (proto == PROTO_ICMPV6 && v6)) {
		__u8 *ih = c->pos; /* type, code, checksum, id, seq */
		if ((void *)(ih + 8) > c->end)
			return -1;
		if (ih[0] != (v6 ? 128 : 8))
			return -1;
		k->lport = *(__be16 *)(ih + 4);
		k->rport = 0;
		*seq = bpf_ntohs(*(__be16 *)(ih + 6));
		return 0;
	}
	return -1;
}

/* An ICMP error arrived: find the registered flow its quoted header belongs to. A global
 * (non-static, not inlined) function is verified once on its own, with the offsets as
 * unknown scalars; inlined, the verifier explored it again for every path through the outer
 * headers (VLAN tags, IPv6 extension headers), which took ~300k instructions and 350 ms to
 * load. quote_off is the offset of the quoted IP header, src_off of the outer source
 * address, both from skb->data; icmp is type << 8 | code (BPF calls take five arguments). */
__attribute__((noinline)) int quoted_flow(struct __sk_buff *skb, __u32 quote_off, __u32 src_off, __u32 v6,
					  __u32 icmp)
{
	__u8 type = icmp >> 8, code = icmp & 0xff;
	/* Bounds the verifier can follow; real headers are far shorter. */
	if (quote_off > 1024 || src_off > 1024)
		return 0;
	/* The quote may lie beyond the linear part even when the outer headers do not. */
	linearize(skb, quote_off + QUOTE_LEN);
	asm volatile("" : "+r"(skb)); /* see handle() */
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	/* Mask the registers that are added to the packet pointer: clang tests a copy, and the
	 * verifier does not carry that bound over to the register it adds. In asm, so the mask
	 * is not folded away as redundant. */
	asm volatile("%0 &= 0x7ff" : "+r"(quote_off));
	asm volatile("%0 &= 0x7ff" : "+r"(src_off));
	__u8 *src = data + src_off;
	if ((void *)(src + 16) > end)
		return 0;
	struct flow_key q = {};
	struct cursor inner = {data + quote_off, end};
	__u32 seq = 0;
	if (key_from_quote(&inner, &q, v6, &seq))
		return 0;
	__u64 *tok = bpf_map_lookup_elem(&flows, &q);
	if (tok)
		emit(skb, &q, *tok, EV_ICMP_ERROR, 0, seq, 0, type, code, src, v6 ? 16 : 4);
	return 0;
}

/* What follows the IP header(s): a TCP SYN, SYN-ACK or RST, a UDP datagram, an ICMP echo of
 * a registered flow, or an ICMP error quoting one. A global function, like quoted_flow, so
 * the verifier follows it once with the offsets unknown rather than once for every path
 * through the L2 and L3 headers (VLAN tags, extension headers): that halves what a one-shot
 * run pays to load the programs. ip_off and l4_off are offsets from skb->data; meta is
 * v6 | egress << 1 | L4 protocol << 8 (BPF calls take five arguments). */
__attribute__((noinline)) int l4_event(struct __sk_buff *skb, __u32 ip_off, __u32 l4_off, __u32 meta)
{
	int v6 = meta & 1, egress = (meta >> 1) & 1;
	__u8 proto = meta >> 8;
	if (ip_off > 1024 || l4_off > 2048)
		return 0;
	asm volatile("%0 &= 0x7ff" : "+r"(ip_off)); /* see quoted_flow */
	asm volatile("%0 &= 0xfff" : "+r"(l4_off));
	/* The L4 header this needs (TCP's 20 bytes, 8 for the others): pulled only if some of
	 * it lies outside the linear part. */
	linearize(skb, l4_off + (proto == PROTO_TCP ? 20 : 8));
	asm volatile("" : "+r"(skb));
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct flow_key k = {.proto = proto};
	const __u8 *src;
	if (v6) {
		struct ipv6hdr *ip6 = data + ip_off;
		if ((void *)(ip6 + 1) > end)
			return 0;
		k.family = 6;
		__builtin_memcpy(k.laddr, egress ? &ip6->saddr : &ip6->daddr, 16);
		__builtin_memcpy(k.raddr, egress ? &ip6->daddr : &ip6->saddr, 16);
		src = (const __u8 *)&ip6->saddr;
	} else {
		struct iphdr *ip4 = data + ip_off;
		if ((void *)(ip4 + 1) > end)
			return 0;
		k.family = 4;
		__builtin_memcpy(k.laddr, egress ? &ip4->saddr : &ip4->daddr, 4);
		__builtin_memcpy(k.raddr, egress ? &ip4->daddr : &ip4->saddr, 4);
		src = (const __u8 *)&ip4->saddr;
	}
	__u8 *l4 = data + l4_off;

	if (proto == PROTO_TCP) {
		if ((void *)(l4 + 20) > end)
			return 0;
		__u8 flags = l4[13];
		__be16 *ports = (__be16 *)l4;
		__u8 kind;
		if (egress && (flags & 0x12) == 0x02)
			kind = EV_SYN;
		else if (!egress && (flags & 0x12) == 0x12)
			kind = EV_SYNACK;
		else if (!egress && (flags & 0x04))
			kind = EV_RST;
		else {
			/* The common case on a gateway: one load while no payload is watched, two
			 * while some is, and a lookup only for a watched flow's port pair. */
			if (!payload_any || !payload_gate[(__u16)(ports[0] ^ ports[1])])
				return 0;
			k.lport = egress ? ports[0] : ports[1];
			k.rport = egress ? ports[1] : ports[0];
			payload_event(skb, &k, l4, egress, l4_off, ip_end(skb, data + ip_off, end, v6, ip_off));
			return 0;
		}
		k.lport = egress ? ports[0] : ports[1];
		k.rport = egress ? ports[1] : ports[0];
		__u64 *tok = bpf_map_lookup_elem(&flows, &k);
		if (tok)
			emit(skb, &k, *tok, kind, egress, bpf_ntohl(*(__be32 *)(l4 + 4)), bpf_ntohl(*(__be32 *)(l4 + 8)),
			     0, 0, 0, 0);
		return 0;
	}

	if (proto == PROTO_UDP) {
		__be16 *ports = (__be16 *)l4;
		if ((void *)(ports + 4) > end)
			return 0;
		k.lport = egress ? ports[0] : ports[1];
		k.rport = egress ? ports[1] : ports[0];
		__u64 *tok = bpf_map_lookup_elem(&flows, &k);
		if (tok)
			emit(skb, &k, *tok, egress ? EV_UDP_TX : EV_UDP_RX, egress, 0, 0, 0, 0, 0, 0);
		return 0;
	}

	if ((proto == PROTO_ICMP && !v6) || (proto == PROTO_ICMPV6 && v6)) {
		if ((void *)(l4 + 8) > end)
			return 0;
		__u8 type = l4[0], code = l4[1];
		__u8 echo_req = v6 ? 128 : 8, echo_rep = v6 ? 129 : 0;
		if ((egress && type == echo_req) || (!egress && type == echo_rep)) {
			k.lport = *(__be16 *)(l4 + 4);
			__u64 *tok = bpf_map_lookup_elem(&flows, &k);
			if (tok)
				emit(skb, &k, *tok, type == echo_req ? EV_ECHO_REQUEST : EV_ECHO_REPLY, egress,
				     bpf_ntohs(*(__be16 *)(l4 + 6)), 0, type, code, 0, 0);
			return 0;
		}
		int is_err = v6 ? (type >= 1 && type <= 4) : (type == 3 || type == 4 || type == 11 || type == 12);
		if (egress || !is_err)
			return 0;
		quoted_flow(skb, l4_off + 8, (__u32)(src - (const __u8 *)data), v6, (__u32)type << 8 | code);
	}
	return 0;
}

/* l2: the device puts an Ethernet header in front (Ethernet, veth, bridges, loopback);
 * else it is an L3 device (tun, ipip, gre, sit, wireguard, ppp) whose packets start with
 * the IP header, their version given by skb->protocol. */
static __always_inline int handle(struct __sk_buff *skb, int egress, int l2)
{
	linearize(skb, L3_LEN);
	/* Hide skb from clang's reuse of &skb->data: the verifier only allows loads of ctx
	 * fields at constant offsets from the ctx pointer itself. */
	asm volatile("" : "+r"(skb));
	void *data = (void *)(long)skb->data;
	struct cursor c = {data, (void *)(long)skb->data_end};
	struct flow_key k = {};
	__u8 proto = 0;
	__be16 eth = l2 ? parse_eth(&c) : (__be16)skb->protocol;
	void *ip = c.pos;
	__u32 v6;

	if (eth == bpf_htons(ETH_P_IP)) {
		if (parse_ipv4(&c, &k, egress, &proto))
			return TC_ACT_UNSPEC;
		v6 = 0;
	} else if (eth == bpf_htons(ETH_P_IPV6)) {
		if (parse_ipv6(&c, &k, egress, &proto))
			return TC_ACT_UNSPEC;
		v6 = 1;
	} else {
		return TC_ACT_UNSPEC;
	}
	l4_event(skb, (__u32)(ip - data), (__u32)(c.pos - data), v6 | (__u32)egress << 1 | (__u32)proto << 8);
	return TC_ACT_UNSPEC;
}

SEC("tc")
int reachd_tc_ingress(struct __sk_buff *skb)
{
	return handle(skb, 0, 1);
}

SEC("tc")
int reachd_tc_egress(struct __sk_buff *skb)
{
	return handle(skb, 1, 1);
}

/* The same for L3 devices; userspace loads these only when it attaches to one. */
SEC("tc")
int reachd_tc_ingress_l3(struct __sk_buff *skb)
{
	return handle(skb, 0, 0);
}

SEC("tc")
int reachd_tc_egress_l3(struct __sk_buff *skb)
{
	return handle(skb, 1, 0);
}

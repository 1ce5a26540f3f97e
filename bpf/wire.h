/* Types and maps shared by reachd's TC and tracepoint programs and, through bpf2go's
 * -type, by Go (pkg/wire). */
#ifndef REACHD_WIRE_H
#define REACHD_WIRE_H

#include "vmlinux.h"
#include "bpf/bpf_helpers.h"
#include "bpf/bpf_endian.h"

/* uapi macros, which BTF does not carry. */
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define ETH_P_8021Q 0x8100
#define ETH_P_8021AD 0x88A8
#define PROTO_ICMP 1
#define PROTO_TCP 6
#define PROTO_UDP 17
#define PROTO_ICMPV6 58
#define TC_ACT_UNSPEC (-1) /* also TCX_NEXT: let the packet go on unchanged */

/* A registered probe flow, as seen from the prober: l = local (prober), r = remote.
 * Ports in network byte order; for ICMP echo lport is the identifier and rport 0.
 * IPv4 addresses fill the first 4 bytes of the 16. */
struct flow_key {
	__u8 family; /* 4 or 6 */
	__u8 proto;
	__u16 lport;
	__u16 rport;
	__u16 pad;
	__u8 laddr[16];
	__u8 raddr[16];
};

enum event_kind {
	EV_SYN = 1,
	EV_SYNACK = 2,
	EV_RST = 3,
	EV_ECHO_REQUEST = 4,
	EV_ECHO_REPLY = 5,
	EV_ICMP_ERROR = 6,
	EV_UDP_TX = 7,
	EV_UDP_RX = 8,
	/* From the TCP tracepoints, for sockets registered by cookie: */
	EV_STATE = 9,      /* inet_sock_set_state: state_old → state_new */
	EV_RETRANSMIT = 10, /* tcp_retransmit_skb: state_new is the socket's state (SYN_SENT: a SYN) */
	EV_RESET_RX = 11,  /* tcp_receive_reset */
	/* TCP segments carrying payload, of flows in payload_flows (application probes): */
	EV_DATA_TX = 12,
	EV_DATA_RX = 13,
};

struct wire_event {
	__u64 ts_ns;  /* bpf_ktime_get_ns() at the hook: CLOCK_MONOTONIC */
	__u64 token;  /* the registered flow's value: which attempt this belongs to */
	struct flow_key key;
	__u8 kind;    /* enum event_kind */
	__u8 egress;  /* 1 leaving, 0 arriving */
	__u8 icmp_type;
	__u8 icmp_code;
	__u32 ifindex;
	__u32 seq;    /* TCP sequence, or ICMP echo sequence (host order); of the quoted
		       * packet for an ICMP error */
	__u32 ack;    /* TCP acknowledgment (host order) */
	__u8 from[16];/* sender of an ICMP error: the outer source address */
	__u8 state_old; /* TCP states (TCP_SYN_SENT = 2, ...) for tracepoint events */
	__u8 state_new;
	__u8 pad2[2];
	__u32 len;    /* EV_DATA_*: TCP payload bytes (of a GSO packet, all its segments') */
};

/* Registered flows. A plain hash, not LRU: an LRU map would evict a live flow silently when
 * full, and its attempt would lose its events without a word. Userspace sizes it from its
 * concurrency at load (this is the default) and reports a full map; the maps die with the
 * process, so a crashed prober leaves nothing behind. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct flow_key);
	__type(value, __u64);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

/* Sockets registered by cookie (SO_COOKIE) for the TCP tracepoints, with the same token as
 * their flow; sized and reported as flows. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, __u64);
} socks SEC(".maps");

/* Flows whose TCP payload is reported (the request and response of an application probe),
 * each with a budget of events per direction: enough for a handshake and the first and
 * last bytes of a small response, and a bound on what a large one costs the ring. Sized
 * and reported as flows. */
struct payload_watch {
	__u64 token;
	__u32 max_tx;
	__u32 max_rx;
	__u32 used_tx;
	__u32 used_rx;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct flow_key);
	__type(value, struct payload_watch);
} payload_flows SEC(".maps");

/* Events lost to a full ring buffer, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} lost_events SEC(".maps");

/* Submit without waking the reader: userspace drains the ring when a probe needs its
 * events (a flush), so per-event wake-ups — tens of thousands a second when many echoes are
 * in flight — would only burn CPU. Once a quarter of the ring is waiting, wake it anyway so
 * the ring never fills between a probe's flushes. */
#define WAKE_BYTES (256 << 10)
static __always_inline void submit_event(void *e)
{
	__u64 flags = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= WAKE_BYTES ? BPF_RB_FORCE_WAKEUP
										      : BPF_RB_NO_WAKEUP;
	bpf_ringbuf_submit(e, flags);
}

static __always_inline void count_lost(void)
{
	__u32 zero = 0;
	__u64 *n = bpf_map_lookup_elem(&lost_events, &zero);
	if (n)
		__sync_fetch_and_add(n, 1);
}

#endif

// SPDX-License-Identifier: GPL-2.0
/* TCP tracepoints (tp_btf: BTF-typed raw tracepoints, no tracefs, no kprobes) for sockets
 * the prober registered by cookie: state changes (CLOSE→SYN_SENT is the connect, SYN_SENT→
 * ESTABLISHED the SYN-ACK, →CLOSE a reset or error), SYN retransmissions and received
 * resets. They time the handshake in the kernel when TC cannot see the packets (an
 * interface we could not attach to), and count retransmissions independently of TC. */
#include "wire.h"
#include "bpf/bpf_tracing.h"
#include "bpf/bpf_core_read.h"

char LICENSE[] SEC("license") = "GPL";

#define AF_INET 2
#define AF_INET6 10

static __always_inline void emit_sock(const struct sock *sk, __u64 token, __u8 kind, int old, int new)
{
	struct wire_event *e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
	if (!e) {
		count_lost();
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = bpf_ktime_get_ns();
	e->token = token;
	e->kind = kind;
	e->egress = kind == EV_RETRANSMIT;
	e->state_old = old;
	e->state_new = new;
	/* The key is informative only (the token says whose event it is); before connect()
	 * picks the source port it is still 0. */
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	e->key.proto = PROTO_TCP;
	e->key.lport = bpf_htons(BPF_CORE_READ(sk, __sk_common.skc_num));
	e->key.rport = BPF_CORE_READ(sk, __sk_common.skc_dport);
	if (family == AF_INET) {
		e->key.family = 4;
		bpf_probe_read_kernel(e->key.laddr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_probe_read_kernel(e->key.raddr, 4, &sk->__sk_common.skc_daddr);
	} else if (family == AF_INET6) {
		e->key.family = 6;
		bpf_probe_read_kernel(e->key.laddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_probe_read_kernel(e->key.raddr, 16, &sk->__sk_common.skc_v6_daddr);
	}
	submit_event(e);
}

static __always_inline __u64 *sock_token(const struct sock *sk)
{
	__u64 cookie = bpf_get_socket_cookie((void *)sk);
	return bpf_map_lookup_elem(&socks, &cookie);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(reachd_sock_state, const struct sock *sk, int oldstate, int newstate)
{
	__u64 *tok = sock_token(sk);
	if (tok)
		emit_sock(sk, *tok, EV_STATE, oldstate, newstate);
	return 0;
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(reachd_tcp_retransmit, const struct sock *sk, const struct sk_buff *skb)
{
	__u64 *tok = sock_token(sk);
	if (tok) {
		int state = BPF_CORE_READ(sk, __sk_common.skc_state);
		emit_sock(sk, *tok, EV_RETRANSMIT, state, state);
	}
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(reachd_tcp_reset, struct sock *sk)
{
	__u64 *tok = sock_token(sk);
	if (tok) {
		int state = BPF_CORE_READ(sk, __sk_common.skc_state);
		emit_sock(sk, *tok, EV_RESET_RX, state, state);
	}
	return 0;
}

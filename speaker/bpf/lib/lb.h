/* Service load balancing: frontend lookup, Maglev backend choice, flow state, and the three
 * ways to a backend (local: destination rewritten; SNAT: source too; DSR: tunnelled). */
#pragma once

#include "common.h"
#include "maps.h"
#include "nat.h"
#include "ct.h"
#include "tunnel.h"

/* Ports tried per new SNAT flow (each the next of the backend's round robin). */
#define HERALD_SNAT_TRIES 16

static __always_inline __u32 rotl32(__u32 x, __u32 r)
{
	return (x << r) | (x >> (32 - r));
}

static __always_inline __u32 hash_mix(__u32 h, __u32 v)
{
	v *= 0xcc9e2d51u;
	v = rotl32(v, 15);
	v *= 0x1b873593u;
	h ^= v;
	h = rotl32(h, 13);
	return h * 5 + 0xe6546b64u;
}

/* Hash of the flow's 5-tuple with a fixed seed: any node computes the same value. */
static __always_inline __u32 lb_flow_hash(const struct lb_tuple *t)
{
	__u32 h = HERALD_FLOW_SEED;

#pragma unroll
	for (int i = 0; i < 4; i++)
		h = hash_mix(h, t->saddr[i]);
#pragma unroll
	for (int i = 0; i < 4; i++)
		h = hash_mix(h, t->daddr[i]);
	h = hash_mix(h, ((__u32)t->sport << 16) | t->dport);
	h = hash_mix(h, t->proto);
	h ^= h >> 16;
	h *= 0x85ebca6bu;
	h ^= h >> 13;
	h *= 0xc2b2ae35u;
	h ^= h >> 16;
	return h;
}

static __always_inline void lb_count(__u32 frontend_id, __u32 bytes)
{
	struct lb_counters *c = bpf_map_lookup_elem(&herald_counters, &frontend_id);

	if (c) {
		c->packets += 1;
		c->bytes += bytes;
	}
}

/* Maglev: the flow's slot in the frontend's table names the backend. */
static __always_inline __u32 lb_maglev_pick(const struct lb_frontend *fe, const struct lb_tuple *t)
{
	struct lb_maglev_row *row = bpf_map_lookup_elem(&herald_maglev, &fe->id);

	if (!row)
		return 0;
	__u32 slot = lb_flow_hash(t) % HERALD_MAGLEV_SIZE;
	/* Keep the bounds check: the compiler knows slot < size, the verifier does not. */
	asm volatile("" : "+r"(slot));
	if (slot >= HERALD_MAGLEV_SIZE)
		return 0;
	return row->backend_ids[slot];
}

static __always_inline struct lb_config *lb_config(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&herald_config, &zero);
}

/* Whether the speaker that owns these maps is alive (heartbeat within the grace period). A
 * heartbeat can be slightly in the future of now (written after this program read its clock,
 * or within the tick lb_now lags by): hence the signed difference. */
static __always_inline int lb_owner_alive(const struct lb_config *cfg, __u64 now)
{
	return cfg->heartbeat_ns != 0 && (__s64)(now - cfg->heartbeat_ns) < (__s64)HERALD_OWNER_GRACE_NS;
}

/* Whether a packet from port (network order) may be a reply of a local backend. */
static __always_inline int lb_reply_port(__be16 port)
{
	__u32 zero = 0;
	struct lb_port_set *set = bpf_map_lookup_elem(&herald_reply_ports, &zero);
	__u32 p = bpf_ntohs(port);

	if (!set)
		return 0;
	return (set->words[(p >> 6) & (HERALD_PORT_WORDS - 1)] >> (p & 63)) & 1;
}

/* Whether port (network order) is one that SNAT gives out. */
static __always_inline int lb_snat_port_in_range(const struct lb_config *cfg, __be16 port)
{
	__u32 p = bpf_ntohs(port);

	return p >= cfg->snat_port_min && p - cfg->snat_port_min < cfg->snat_port_count;
}

/* The next SNAT port of the backend's round robin that no live flow holds, with the reverse
 * entry for it written; 0 when HERALD_SNAT_TRIES ports in a row were held. */
static __always_inline __be16 lb_snat_port(const struct lb_tuple *t, __u32 backend_id, const struct lb_backend *be,
					   const struct ct_reverse *rev, const struct lb_config *cfg, __u64 now)
{
	__u32 *cursor = bpf_map_lookup_elem(&herald_snat_cursor, &backend_id);
	__u32 count = cfg->snat_port_count;
	struct ct_key rkey;

	if (!cursor || count == 0)
		return 0;
	__builtin_memset(&rkey, 0, sizeof(rkey));
	addr_copy(rkey.saddr, be->addr);
	addr_copy(rkey.daddr, be->snat_addr);
	rkey.sport = be->port;
	rkey.proto = t->proto;
	rkey.family = t->family;
	for (int i = 0; i < HERALD_SNAT_TRIES; i++) {
		__u32 n = __sync_fetch_and_add(cursor, 1);
		rkey.dport = bpf_htons(cfg->snat_port_min + n % count);
		if (bpf_map_update_elem(&herald_ct_reverse, &rkey, rev, BPF_NOEXIST) == 0)
			return rkey.dport;
		struct ct_reverse *held = bpf_map_lookup_elem(&herald_ct_reverse, &rkey);
		struct ct_key fkey;
		int in_new;
		if (held && ct_owner_of(&rkey, held, now, &fkey, &in_new))
			continue;
		/* The port's last flow is over (and past its TIME_WAIT hold): take it. */
		bpf_map_update_elem(&herald_ct_reverse, &rkey, rev, BPF_ANY);
		return rkey.dport;
	}
	return 0;
}

/* Writes the reverse entry of a new flow to a local backend (keyed by the reply's tuple),
 * unless the tuple's last flow left the same one (a client reusing its port). */
static __always_inline void lb_reverse_local(const struct lb_tuple *t, const struct lb_backend *be,
					     const struct ct_reverse *rev)
{
	struct ct_key rkey;

	__builtin_memset(&rkey, 0, sizeof(rkey));
	addr_copy(rkey.saddr, be->addr);
	rkey.sport = be->port;
	addr_copy(rkey.daddr, t->saddr);
	rkey.dport = t->sport;
	rkey.proto = t->proto;
	rkey.family = t->family;
	struct ct_reverse *old = bpf_map_lookup_elem(&herald_ct_reverse, &rkey);
	if (old && ct_reverse_eq(old, rev))
		return;
	bpf_map_update_elem(&herald_ct_reverse, &rkey, rev, BPF_ANY);
}

/* Sends a packet of a flow to its backend the way the flow was set up. */
static __always_inline int lb_send(struct __sk_buff *skb, const struct lb_tuple *t, const struct lb_backend *be,
				   __u8 ct_flags, const __u32 *snat_addr, __be16 snat_port)
{
	if (ct_flags & CT_FLAG_DSR)
		return lb_tunnel(skb, t, be);
	if (ct_flags & CT_FLAG_SNAT) {
		if (lb_rewrite(skb, t, snat_addr, snat_port, be->addr, be->port) < 0) {
			lb_stat(HERALD_STAT_DROP_REWRITE_FAILED);
			return TC_ACT_SHOT;
		}
		return lb_redirect(skb, t->family, snat_addr, be->addr);
	}
	if (lb_rewrite(skb, t, t->saddr, t->sport, be->addr, be->port) < 0) {
		lb_stat(HERALD_STAT_DROP_REWRITE_FAILED);
		return TC_ACT_SHOT;
	}
	return TC_ACT_OK;
}

/* Forward path: a packet to frontend fe goes to its flow's backend, or for a new flow to the
 * backend its Maglev slot names. tunnelled: the packet came out of another node's DSR tunnel,
 * so only a backend on this node may take it. */
static __always_inline int lb_forward(struct __sk_buff *skb, const struct lb_tuple *t, const struct lb_frontend *fe,
				      const struct lb_config *cfg, int tunnelled)
{
	__u64 now = lb_now();
	if (!lb_owner_alive(cfg, now)) {
		lb_stat(HERALD_STAT_OWNER_STALE);
		return TC_ACT_OK;
	}
	lb_count(fe->id, skb->len);

	struct ct_key key;
	ct_key_from_tuple(&key, t);
	int in_new = 0;
	struct ct_forward *slot;
	struct ct_forward *ct = ct_lookup(&key, now, &in_new, &slot);
	/* A SYN on the tuple of a closed flow: the client reused its port for a new connection.
	 * A SYN on a flow whose handshake never completed is placed again too, by today's table:
	 * its first backend may be one the tables have since moved away from (a node declared dead
	 * meanwhile, a receiving node whose table disagreed), and following it would refresh the
	 * entry with every retry, a black hole for that tuple while the client keeps retrying. */
	if (ct && (ct->state == CT_CLOSING || ct->state == CT_SYN) &&
	    (t->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN) {
		lb_stat(HERALD_STAT_FLOW_REUSED);
		ct = 0;
	}
	if (ct && ct->frontend_id == fe->id) {
		__u32 id = ct->backend_id;
		struct lb_backend *be = bpf_map_lookup_elem(&herald_backends, &id);
		/* A removed backend (or its id given to another) is never followed: choose again. */
		if (be && be->generation == ct->backend_generation) {
			__u32 snat_addr[4];
			__be16 snat_port = ct->snat_port;
			__u8 flags = ct->flags;
			addr_copy(snat_addr, ct->snat_addr);
			ct_advance(&key, ct, in_new, t, 1, now);
			return lb_send(skb, t, be, flags, snat_addr, snat_port);
		}
	}

	/* loadBalancerSourceRanges: judged when a flow starts (as kube-proxy's rules are). */
	if (fe->flags & HERALD_FRONTEND_SOURCE_RANGES) {
		struct lb_source_key sk;
		__builtin_memset(&sk, 0, sizeof(sk));
		sk.prefixlen = 32 + (t->family == HERALD_FAMILY_V4 ? 32 : 128);
		sk.frontend_id = fe->id;
		addr_copy(sk.addr, t->saddr);
		if (!bpf_map_lookup_elem(&herald_source_ranges, &sk)) {
			lb_stat(HERALD_STAT_DROP_SOURCE_RANGE);
			return TC_ACT_SHOT;
		}
	}
	__u32 backend_id = lb_maglev_pick(fe, t);
	struct lb_backend *be = bpf_map_lookup_elem(&herald_backends, &backend_id);
	if (!be || be->family != t->family) {
		lb_stat(HERALD_STAT_DROP_NO_BACKEND);
		return TC_ACT_SHOT;
	}
	/* The sender chose a backend on this node by the same table. If this node's pick differs
	 * (its tables are mid-update, or lost the flow after a backend change), drop rather than
	 * bounce the packet on; the client retransmits. */
	if (tunnelled && (be->flags & (HERALD_BACKEND_SNAT | HERALD_BACKEND_DSR))) {
		lb_stat(HERALD_STAT_DROP_TUNNEL_NOT_LOCAL);
		return TC_ACT_SHOT;
	}

	struct ct_forward entry;
	__builtin_memset(&entry, 0, sizeof(entry));
	entry.frontend_id = fe->id;
	entry.backend_id = backend_id;
	entry.backend_generation = be->generation;
	addr_copy(entry.backend_addr, be->addr);
	entry.backend_port = be->port;
	entry.flags = ct_next_flags((be->flags & (CT_FLAG_SNAT | CT_FLAG_DSR)) | (tunnelled ? CT_FLAG_TUNNELLED : 0), t, 1);
	entry.state = ct_initial_state(t);
	entry.expires = now + ct_timeout(entry.state, entry.flags);
	entry.snat_port = t->sport;
	addr_copy(entry.snat_addr, t->saddr);
	struct ct_reverse rev;
	__builtin_memset(&rev, 0, sizeof(rev));
	addr_copy(rev.frontend_addr, t->daddr);
	addr_copy(rev.client_addr, t->saddr);
	rev.frontend_port = t->dport;
	rev.client_port = t->sport;
	/* The SNAT port is taken by writing the reverse entry, so that entry comes first there;
	 * otherwise the forward entry does (a reverse entry without one looks like an orphan). */
	if (be->flags & HERALD_BACKEND_SNAT) {
		entry.snat_port = lb_snat_port(t, backend_id, be, &rev, cfg, now);
		if (!entry.snat_port) {
			lb_stat(HERALD_STAT_DROP_NO_SNAT_PORT);
			return TC_ACT_SHOT;
		}
		addr_copy(entry.snat_addr, be->snat_addr);
	}
	/* Also replaces a stale entry of the tuple (its flow ended or its backend is gone). */
	ct_store(&key, slot, in_new, &entry);
	if (!(be->flags & (HERALD_BACKEND_SNAT | HERALD_BACKEND_DSR)))
		lb_reverse_local(t, be, &rev);
	lb_stat(HERALD_STAT_FLOW_NEW);
	return lb_send(skb, t, be, entry.flags, entry.snat_addr, entry.snat_port);
}

/* Reverse path: a reply from a backend leaves with the frontend as its source (and, when the
 * flow was SNATed, goes back to the client). Returns 0 when the packet is no reply of a live
 * flow (untouched); else 1 with *action set. On ingress the rewritten reply is redirected to
 * the client: its new source may be this node's own address (a NodePort), which the IP stack
 * would drop as a martian. */
static __always_inline int lb_reverse(struct __sk_buff *skb, const struct lb_tuple *t, const struct lb_config *cfg,
				      int ingress, int *action)
{
	struct ct_key rkey;

	ct_key_from_tuple(&rkey, t);
	struct ct_reverse *rev = bpf_map_lookup_elem(&herald_ct_reverse, &rkey);
	if (!rev)
		return 0;
	__u64 now = lb_now();
	if (!lb_owner_alive(cfg, now))
		return 0;
	struct ct_reverse r = *rev;
	struct ct_key fkey;
	int in_new = 0;
	struct ct_forward *ct = ct_owner_of(&rkey, &r, now, &fkey, &in_new);
	if (!ct)
		return 0;
	__u8 flags = ct->flags;
	ct_advance(&fkey, ct, in_new, t, 0, now);
	*action = TC_ACT_SHOT;
	if ((flags & CT_FLAG_TUNNELLED) && (t->tcp_flags & TCP_FLAG_SYN) && lb_clamp_tunnelled_mss(skb, t) < 0) {
		lb_stat(HERALD_STAT_DROP_REWRITE_FAILED);
		return 1;
	}
	if (lb_rewrite(skb, t, r.frontend_addr, r.frontend_port, r.client_addr, r.client_port) < 0) {
		lb_stat(HERALD_STAT_DROP_REWRITE_FAILED);
		return 1;
	}
	*action = ingress ? lb_redirect(skb, t->family, r.frontend_addr, r.client_addr) : TC_ACT_OK;
	return 1;
}

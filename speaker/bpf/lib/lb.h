/* Service load balancing: frontend lookup, Maglev backend choice, conntrack, NAT both ways. */
#pragma once

#include "common.h"
#include "maps.h"
#include "nat.h"

/* SNAT source ports, tried when the client's own port is taken towards that backend. */
#define HERALD_SNAT_PORT_MIN 32768
#define HERALD_SNAT_PORT_SPAN 28232
#define HERALD_SNAT_TRIES 4

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

static __always_inline void ct_key_from_tuple(struct ct_key *k, const struct lb_tuple *t)
{
	__builtin_memset(k, 0, sizeof(*k));
	addr_copy(k->saddr, t->saddr);
	addr_copy(k->daddr, t->daddr);
	k->sport = t->sport;
	k->dport = t->dport;
	k->proto = t->proto;
	k->family = t->family;
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

/* Writes the reverse entry for a new flow, choosing a SNAT port when the backend needs one.
 * Returns the SNAT port (the client's port when free), or 0 when every try was taken. */
static __always_inline __be16 lb_ct_reverse_create(const struct lb_tuple *t, const struct lb_backend *be,
						   const struct ct_reverse *rev, __u32 flow_hash)
{
	struct ct_key rkey;

	__builtin_memset(&rkey, 0, sizeof(rkey));
	addr_copy(rkey.saddr, be->addr);
	rkey.sport = be->port;
	rkey.proto = t->proto;
	rkey.family = t->family;
	if (!(be->flags & HERALD_BACKEND_SNAT)) {
		addr_copy(rkey.daddr, t->saddr);
		rkey.dport = t->sport;
		bpf_map_update_elem(&herald_ct_reverse, &rkey, rev, BPF_ANY);
		return t->sport;
	}
	addr_copy(rkey.daddr, be->snat_addr);
#pragma unroll
	for (int i = 0; i < HERALD_SNAT_TRIES; i++) {
		__be16 port = t->sport;
		if (i > 0)
			port = bpf_htons(HERALD_SNAT_PORT_MIN + (flow_hash + i * 7919u) % HERALD_SNAT_PORT_SPAN);
		rkey.dport = port;
		if (bpf_map_update_elem(&herald_ct_reverse, &rkey, rev, BPF_NOEXIST) == 0)
			return port;
	}
	return 0;
}

/* Forward path: a packet to a frontend is translated to its backend. TC_ACT_OK lets the
 * kernel route the (possibly rewritten) packet; packets to no frontend are left untouched. */
static __always_inline int lb_forward(struct __sk_buff *skb, const struct lb_tuple *t)
{
	struct lb_frontend_key fkey;

	__builtin_memset(&fkey, 0, sizeof(fkey));
	addr_copy(fkey.addr, t->daddr);
	fkey.port = t->dport;
	fkey.proto = t->proto;
	fkey.family = t->family;
	struct lb_frontend *fe = bpf_map_lookup_elem(&herald_frontends, &fkey);
	if (!fe)
		return TC_ACT_OK;
	lb_count(fe->id, skb->len);

	struct ct_key fwd_key;
	ct_key_from_tuple(&fwd_key, t);
	struct ct_forward *ct = bpf_map_lookup_elem(&herald_ct_forward, &fwd_key);
	struct lb_backend *be = 0;
	if (ct) {
		__u32 id = ct->backend_id;
		be = bpf_map_lookup_elem(&herald_backends, &id);
		/* The backend was removed (or its id reused): choose again below. */
		if (be && (!addr_eq(be->addr, ct->backend_addr) || be->port != ct->backend_port))
			be = 0;
		if (be) {
			__u32 saddr[4];
			__be16 sport = t->sport;
			addr_copy(saddr, t->saddr);
			if (be->flags & HERALD_BACKEND_SNAT) {
				addr_copy(saddr, ct->snat_addr);
				sport = ct->snat_port;
			}
			if (lb_rewrite(skb, t, saddr, sport, be->addr, be->port) < 0)
				return TC_ACT_SHOT;
			return TC_ACT_OK;
		}
	}

	__u32 flow_hash = lb_flow_hash(t);
	__u32 backend_id = lb_maglev_pick(fe, t);
	be = bpf_map_lookup_elem(&herald_backends, &backend_id);
	if (!be || be->family != t->family)
		return TC_ACT_SHOT;

	struct ct_reverse rev;
	__builtin_memset(&rev, 0, sizeof(rev));
	addr_copy(rev.frontend_addr, t->daddr);
	addr_copy(rev.client_addr, t->saddr);
	rev.frontend_port = t->dport;
	rev.client_port = t->sport;
	__be16 sport = lb_ct_reverse_create(t, be, &rev, flow_hash);
	if (!sport)
		return TC_ACT_SHOT;

	struct ct_forward entry;
	__builtin_memset(&entry, 0, sizeof(entry));
	entry.backend_id = backend_id;
	addr_copy(entry.backend_addr, be->addr);
	entry.backend_port = be->port;
	__u32 saddr[4];
	addr_copy(saddr, t->saddr);
	if (be->flags & HERALD_BACKEND_SNAT) {
		addr_copy(entry.snat_addr, be->snat_addr);
		addr_copy(saddr, be->snat_addr);
	}
	entry.snat_port = sport;
	bpf_map_update_elem(&herald_ct_forward, &fwd_key, &entry, BPF_ANY);

	if (lb_rewrite(skb, t, saddr, sport, be->addr, be->port) < 0)
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

/* Reverse path: a reply from a backend leaves with the frontend as its source (and, when the
 * flow was SNATed, goes back to the client). Returns 1 when the packet was a reply. */
static __always_inline int lb_reverse(struct __sk_buff *skb, const struct lb_tuple *t)
{
	struct ct_key rkey;

	ct_key_from_tuple(&rkey, t);
	struct ct_reverse *rev = bpf_map_lookup_elem(&herald_ct_reverse, &rkey);
	if (!rev)
		return 0;
	struct ct_reverse r = *rev;
	if (lb_rewrite(skb, t, r.frontend_addr, r.frontend_port, r.client_addr, r.client_port) < 0)
		return -1;
	return 1;
}

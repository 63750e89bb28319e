/* Flow state: timeouts, the TCP state machine, counters, and lookups that treat an expired
 * entry as absent. The forward entry (client → frontend) is a flow's only state; a reverse
 * entry is valid while the forward entry it derives from is live and names the same
 * translation, so expiring or replacing a forward entry retires its reverse entry too. */
#pragma once

#include "common.h"
#include "maps.h"
#include "parse.h"

#define NSEC_PER_SEC 1000000000ull
/* A handshake that does not finish in this time is over (three SYN retransmits fit). */
#define CT_SYN_TIMEOUT (30 * NSEC_PER_SEC)
#define CT_ESTABLISHED_TIMEOUT (21600 * NSEC_PER_SEC)
#define CT_CLOSING_TIMEOUT (10 * NSEC_PER_SEC)
/* A SNAT port's closed flow may still be in TIME_WAIT at the backend (60 s on Linux): the port
 * stays taken that long, so the backend never sees a new client on an old connection's tuple
 * (whose TCP timestamps would be refused by PAWS). */
#define CT_SNAT_CLOSING_TIMEOUT (65 * NSEC_PER_SEC)
#define CT_UDP_TIMEOUT (60 * NSEC_PER_SEC)
/* A live entry's expiry is rewritten at most this often (not on every packet). */
#define CT_REFRESH (NSEC_PER_SEC)

/* The programs' clock: CLOCK_MONOTONIC to the last tick. Reading it costs no clocksource read
 * (on a VM, a kvmclock read per packet was a measurable share of the programs' time); it lags
 * CLOCK_MONOTONIC, which the speaker writes heartbeats and sweeps with, by at most a tick,
 * which nothing here measured in seconds can notice. */
static __always_inline __u64 lb_now(void)
{
	return bpf_ktime_get_coarse_ns();
}

static __always_inline void lb_stat(__u32 index)
{
	__u64 *v = bpf_map_lookup_elem(&herald_stats, &index);

	if (v)
		*v += 1;
}

static __always_inline __u64 ct_timeout(__u8 state, __u8 flags)
{
	switch (state) {
	case CT_SYN:
		return CT_SYN_TIMEOUT;
	case CT_ESTABLISHED:
		return CT_ESTABLISHED_TIMEOUT;
	case CT_CLOSING:
		return (flags & CT_FLAG_SNAT) ? CT_SNAT_CLOSING_TIMEOUT : CT_CLOSING_TIMEOUT;
	default:
		return CT_UDP_TIMEOUT;
	}
}

/* The state a packet starts a flow in. A TCP packet other than a SYN may be a connection
 * picked up mid-way (this node took an IP over, or the entry was evicted) or a spoofed one:
 * either way it is unconfirmed (CT_SYN, in the handshake table) until the client's next ACK. */
static __always_inline __u8 ct_initial_state(const struct lb_tuple *t)
{
	if (t->proto != IPPROTO_TCP)
		return CT_UDP;
	if (t->tcp_flags & TCP_FLAG_RST)
		return CT_CLOSING;
	return CT_SYN;
}

/* The flags after a packet: its direction's FIN, and whether a reply was seen. */
static __always_inline __u8 ct_next_flags(__u8 flags, const struct lb_tuple *t, int from_client)
{
	if (!from_client)
		flags |= CT_FLAG_REPLIED;
	if (t->proto == IPPROTO_TCP && (t->tcp_flags & TCP_FLAG_FIN))
		flags |= from_client ? CT_FLAG_FIN_CLIENT : CT_FLAG_FIN_BACKEND;
	return flags;
}

/* The state after a packet of the flow. A flow closes on RST, or once both sides sent FIN; a
 * node that sees only the client's side (the DSR owner) closes on the client's FIN. A
 * half-closed flow stays established, so a late answer is still translated. */
static __always_inline __u8 ct_next_state(__u8 state, __u8 flags, const struct lb_tuple *t, int from_client)
{
	if (t->proto != IPPROTO_TCP)
		return CT_UDP;
	if (t->tcp_flags & TCP_FLAG_RST)
		return CT_CLOSING;
	__u8 both = CT_FLAG_FIN_CLIENT | CT_FLAG_FIN_BACKEND;
	if ((flags & both) == both || ((flags & CT_FLAG_DSR) && (flags & CT_FLAG_FIN_CLIENT)))
		return CT_CLOSING;
	/* The client's ACK ends the handshake (or confirms a picked-up flow). */
	if (state == CT_SYN && from_client && !(t->tcp_flags & TCP_FLAG_SYN) && (t->tcp_flags & TCP_FLAG_ACK))
		return CT_ESTABLISHED;
	return state;
}

/* Whether an entry has earned a place in the table of established flows. New entries start in
 * the handshake table and move once confirmed; a flow that closes stays where it is. */
static __always_inline int ct_confirmed(__u8 state, __u8 flags)
{
	return state == CT_ESTABLISHED || (state == CT_UDP && (flags & CT_FLAG_REPLIED));
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

/* The live forward entry of a flow, or NULL; *in_new says which map holds it. *slot is the
 * tuple's entry in the established table, live or not: a new flow on the tuple takes it over. */
static __always_inline struct ct_forward *ct_lookup(const struct ct_key *k, __u64 now, int *in_new,
						    struct ct_forward **slot)
{
	struct ct_forward *ct = bpf_map_lookup_elem(&herald_ct_forward, k);

	*slot = ct;
	if (ct && ct->expires > now) {
		*in_new = 0;
		return ct;
	}
	ct = bpf_map_lookup_elem(&herald_ct_new, k);
	if (ct && ct->expires > now) {
		*in_new = 1;
		return ct;
	}
	return 0;
}

/* Stores a new flow's entry. A tuple that still has a slot among established flows (its last
 * flow's, now over or replaced) keeps it: the new flow takes the slot over in place, so it
 * crowds out no other flow and costs no insert, and a live handshake entry of the tuple goes.
 * Any other new flow starts in the handshake table. */
static __always_inline void ct_store(const struct ct_key *k, struct ct_forward *slot, int live_in_new,
				     const struct ct_forward *entry)
{
	if (slot) {
		*slot = *entry;
		if (live_in_new)
			bpf_map_delete_elem(&herald_ct_new, k);
		return;
	}
	bpf_map_update_elem(&herald_ct_new, k, entry, BPF_ANY);
}

/* Advances a live entry for one packet: state, flags, expiry; moves it out of the map of
 * unestablished flows once established. */
static __always_inline void ct_advance(const struct ct_key *k, struct ct_forward *ct, int in_new,
				       const struct lb_tuple *t, int from_client, __u64 now)
{
	__u8 flags = ct_next_flags(ct->flags, t, from_client);
	__u8 state = ct_next_state(ct->state, flags, t, from_client);
	__u64 expires = now + ct_timeout(state, flags);

	if (state == ct->state && flags == ct->flags && expires < ct->expires + CT_REFRESH)
		return;
	if (in_new && ct_confirmed(state, flags)) {
		struct ct_forward moved = *ct;
		moved.state = state;
		moved.flags = flags;
		moved.expires = expires;
		bpf_map_update_elem(&herald_ct_forward, k, &moved, BPF_ANY);
		bpf_map_delete_elem(&herald_ct_new, k);
		if (state == CT_ESTABLISHED)
			lb_stat(HERALD_STAT_FLOW_ESTABLISHED);
		return;
	}
	if (state == CT_ESTABLISHED && ct->state != CT_ESTABLISHED)
		lb_stat(HERALD_STAT_FLOW_ESTABLISHED);
	ct->state = state;
	ct->flags = flags;
	ct->expires = expires;
}

/* The forward key a reverse entry derives from (client → frontend). */
static __always_inline void ct_forward_key_of(struct ct_key *fkey, const struct ct_key *rkey,
					      const struct ct_reverse *rev)
{
	__builtin_memset(fkey, 0, sizeof(*fkey));
	addr_copy(fkey->saddr, rev->client_addr);
	addr_copy(fkey->daddr, rev->frontend_addr);
	fkey->sport = rev->client_port;
	fkey->dport = rev->frontend_port;
	fkey->proto = rkey->proto;
	fkey->family = rkey->family;
}

static __always_inline int ct_reverse_eq(const struct ct_reverse *a, const struct ct_reverse *b)
{
	return addr_eq(a->frontend_addr, b->frontend_addr) && addr_eq(a->client_addr, b->client_addr) &&
	       a->frontend_port == b->frontend_port && a->client_port == b->client_port;
}

/* The live forward entry a reverse entry belongs to, or NULL when that flow is over or its
 * tuple now carries another translation. */
static __always_inline struct ct_forward *ct_owner_of(const struct ct_key *rkey, const struct ct_reverse *rev,
						      __u64 now, struct ct_key *fkey, int *in_new)
{
	struct ct_forward *slot;

	ct_forward_key_of(fkey, rkey, rev);
	struct ct_forward *ct = ct_lookup(fkey, now, in_new, &slot);
	if (!ct)
		return 0;
	if (!addr_eq(ct->backend_addr, rkey->saddr) || ct->backend_port != rkey->sport)
		return 0;
	if ((ct->flags & CT_FLAG_SNAT) && (ct->snat_port != rkey->dport || !addr_eq(ct->snat_addr, rkey->daddr)))
		return 0;
	return ct;
}

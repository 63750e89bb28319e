/* The removing half of the speaker's conntrack sweep. The speaker walks the tables, picks the
 * entries that were over when it read them, and runs herald_sweep (BPF_PROG_TEST_RUN, never
 * attached) with a batch of them as the "packet". Each entry is checked again here, by the
 * rules the programs use, and removed in the same step: a flow that took the tuple since the
 * speaker read it keeps its entry. Checking from user space and removing after (or taking an
 * entry out and putting it back) left a window of a few syscalls in which such a flow's reply
 * found no entry and left untranslated; here the window is the few instructions between the
 * lookup and the delete. */
#pragma once

#include "common.h"
#include "maps.h"
#include "ct.h"

/* Records per run: header and records fit in the one page BPF_PROG_TEST_RUN gives a packet. */
#define HERALD_SWEEP_BATCH 32

/* Which table a batch is for (sweep_header.table). */
#define HERALD_SWEEP_ESTABLISHED 0
#define HERALD_SWEEP_NEW 1
#define HERALD_SWEEP_REVERSE 2

/* After the (unused) Ethernet header of the test packet. */
struct sweep_header {
	__u32 table;
	__u32 count;
};

/* One entry the speaker found over. For a reverse entry, `seen` is its value then: an entry
 * rewritten since (a SNAT port reclaimed for another client) is a new flow's and stays. */
struct sweep_record {
	struct ct_key key;
	struct ct_reverse seen;
};

/* What became of one record; the run returns removed | absent << 16. */
#define SWEEP_KEPT 0
#define SWEEP_REMOVED 1
#define SWEEP_ABSENT 2

/* herald_ct_forward or herald_ct_new: an entry goes once its flow is over. */
static __always_inline int sweep_forward(void *map, const struct ct_key *k, __u64 now)
{
	struct ct_forward *ct = bpf_map_lookup_elem(map, k);

	if (!ct)
		return SWEEP_ABSENT;
	if (ct->expires > now)
		return SWEEP_KEPT;
	return bpf_map_delete_elem(map, k) == 0 ? SWEEP_REMOVED : SWEEP_ABSENT;
}

static __always_inline int sweep_reverse(const struct sweep_record *r, __u64 now)
{
	struct ct_reverse *rev = bpf_map_lookup_elem(&herald_ct_reverse, &r->key);

	if (!rev)
		return SWEEP_ABSENT;
	struct ct_key fkey;
	int in_new;
	if (!ct_reverse_eq(rev, &r->seen) || ct_owner_of(&r->key, rev, now, &fkey, &in_new))
		return SWEEP_KEPT;
	return bpf_map_delete_elem(&herald_ct_reverse, &r->key) == 0 ? SWEEP_REMOVED : SWEEP_ABSENT;
}

static __always_inline __u32 lb_sweep(struct __sk_buff *skb)
{
	struct sweep_header h;

	if (bpf_skb_load_bytes(skb, ETH_HLEN, &h, sizeof(h)) < 0)
		return 0;
	__u64 now = lb_now();
	__u32 removed = 0, absent = 0;
	for (__u32 i = 0; i < HERALD_SWEEP_BATCH; i++) {
		struct sweep_record r;
		if (i >= h.count ||
		    bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(h) + i * sizeof(r), &r, sizeof(r)) < 0)
			break;
		int outcome;
		if (h.table == HERALD_SWEEP_REVERSE)
			outcome = sweep_reverse(&r, now);
		else if (h.table == HERALD_SWEEP_NEW)
			outcome = sweep_forward(&herald_ct_new, &r.key, now);
		else
			outcome = sweep_forward(&herald_ct_forward, &r.key, now);
		removed += outcome == SWEEP_REMOVED;
		absent += outcome == SWEEP_ABSENT;
	}
	return removed | absent << 16;
}

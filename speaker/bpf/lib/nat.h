/* Address and port rewrites with incremental checksum updates (IPv4 header, TCP/UDP with the
 * pseudo header). All writes go through helpers, so no packet pointer is kept across them. */
#pragma once

#include "common.h"

#define IPV4_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))
#define IPV4_SADDR_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))
#define IPV4_DADDR_OFF (ETH_HLEN + offsetof(struct iphdr, daddr))
#define IPV6_SADDR_OFF (ETH_HLEN + offsetof(struct ipv6hdr, saddr))
#define IPV6_DADDR_OFF (ETH_HLEN + offsetof(struct ipv6hdr, daddr))

static __always_inline __u32 l4_csum_off(const struct lb_tuple *t)
{
	return t->l4_off + (t->proto == IPPROTO_TCP ? offsetof(struct tcphdr, check) : offsetof(struct udphdr, check));
}

/* UDP over IPv4 may carry no checksum (0), which BPF_F_MARK_MANGLED_0 keeps; over IPv6 a
 * result of 0 must be sent as 0xffff, which the same flag does. */
static __always_inline __u64 l4_csum_flags(const struct lb_tuple *t)
{
	return t->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

static __always_inline int lb_port_rewrite(struct __sk_buff *skb, const struct lb_tuple *t, __u32 off, __be16 old_port,
					   __be16 new_port)
{
	if (old_port == new_port)
		return 0;
	if (bpf_l4_csum_replace(skb, l4_csum_off(t), old_port, new_port, l4_csum_flags(t) | sizeof(new_port)) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, off, &new_port, sizeof(new_port), 0);
}

static __always_inline int lb4_addr_rewrite(struct __sk_buff *skb, const struct lb_tuple *t, __u32 off, __be32 old_addr,
					    __be32 new_addr)
{
	if (old_addr == new_addr)
		return 0;
	if (bpf_l4_csum_replace(skb, l4_csum_off(t), old_addr, new_addr,
				l4_csum_flags(t) | BPF_F_PSEUDO_HDR | sizeof(new_addr)) < 0)
		return -1;
	if (bpf_l3_csum_replace(skb, IPV4_CSUM_OFF, old_addr, new_addr, sizeof(new_addr)) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, off, &new_addr, sizeof(new_addr), 0);
}

static __always_inline int lb6_addr_rewrite(struct __sk_buff *skb, const struct lb_tuple *t, __u32 off,
					    const __u32 *old_addr, const __u32 *new_addr)
{
	__u32 old_copy[4], new_copy[4];

	if (addr_eq(old_addr, new_addr))
		return 0;
	addr_copy(old_copy, old_addr);
	addr_copy(new_copy, new_addr);
	__s64 diff = bpf_csum_diff(old_copy, sizeof(old_copy), new_copy, sizeof(new_copy), 0);
	if (diff < 0)
		return -1;
	if (bpf_l4_csum_replace(skb, l4_csum_off(t), 0, diff, l4_csum_flags(t) | BPF_F_PSEUDO_HDR) < 0)
		return -1;
	return bpf_skb_store_bytes(skb, off, new_copy, sizeof(new_copy), 0);
}

/* Rewrites the packet described by t to the new source and destination. */
static __always_inline int lb4_rewrite(struct __sk_buff *skb, const struct lb_tuple *t, const __u32 *saddr,
				       __be16 sport, const __u32 *daddr, __be16 dport)
{
	if (lb4_addr_rewrite(skb, t, IPV4_SADDR_OFF, t->saddr[0], saddr[0]) < 0)
		return -1;
	if (lb4_addr_rewrite(skb, t, IPV4_DADDR_OFF, t->daddr[0], daddr[0]) < 0)
		return -1;
	if (lb_port_rewrite(skb, t, t->l4_off, t->sport, sport) < 0)
		return -1;
	return lb_port_rewrite(skb, t, t->l4_off + 2, t->dport, dport);
}

static __always_inline int lb6_rewrite(struct __sk_buff *skb, const struct lb_tuple *t, const __u32 *saddr,
				       __be16 sport, const __u32 *daddr, __be16 dport)
{
	if (lb6_addr_rewrite(skb, t, IPV6_SADDR_OFF, t->saddr, saddr) < 0)
		return -1;
	if (lb6_addr_rewrite(skb, t, IPV6_DADDR_OFF, t->daddr, daddr) < 0)
		return -1;
	if (lb_port_rewrite(skb, t, t->l4_off, t->sport, sport) < 0)
		return -1;
	return lb_port_rewrite(skb, t, t->l4_off + 2, t->dport, dport);
}

static __always_inline int lb_rewrite(struct __sk_buff *skb, const struct lb_tuple *t, const __u32 *saddr,
				      __be16 sport, const __u32 *daddr, __be16 dport)
{
	if (t->family == HERALD_FAMILY_V4)
		return lb4_rewrite(skb, t, saddr, sport, daddr, dport);
	return lb6_rewrite(skb, t, saddr, sport, daddr, dport);
}

/* Lowers the MSS option of a TCP SYN or SYN-ACK to max_mss. Returns 1 when it changed the
 * packet, 0 when there was nothing to do, -1 on a failed write. */
static __always_inline int lb_clamp_mss(struct __sk_buff *skb, const struct lb_tuple *t, __u16 max_mss)
{
	__u8 doff;

	if (bpf_skb_load_bytes(skb, t->l4_off + 12, &doff, 1) < 0)
		return 0;
	__u32 end = t->l4_off + (doff >> 4) * 4;
	__u32 off = t->l4_off + sizeof(struct tcphdr);
	/* Options are at most 40 bytes; MSS comes first in every stack we know. */
	for (int i = 0; i < 12; i++) {
		__u8 opt[2];
		if (off + 4 > end || bpf_skb_load_bytes(skb, off, opt, 2) < 0)
			return 0;
		if (opt[0] == 0)
			return 0;
		if (opt[0] == 1) {
			off += 1;
			continue;
		}
		if (opt[0] == 2 && opt[1] == 4) {
			__be16 mss;
			if (bpf_skb_load_bytes(skb, off + 2, &mss, 2) < 0 || bpf_ntohs(mss) <= max_mss)
				return 0;
			__be16 clamped = bpf_htons(max_mss);
			if (((off + 2 - t->l4_off) & 1) == 0) {
				if (bpf_l4_csum_replace(skb, l4_csum_off(t), mss, clamped, sizeof(clamped)) < 0)
					return -1;
				if (bpf_skb_store_bytes(skb, off + 2, &clamped, sizeof(clamped), 0) < 0)
					return -1;
				return 1;
			}
			/* The checksum sums 16-bit words at even offsets of the header: an MSS at an
			 * odd offset (after a lone NOP) straddles two, so update the 4 bytes from the
			 * option's length byte on. */
			__u8 word[4];
			if (bpf_skb_load_bytes(skb, off + 1, word, 4) < 0)
				return 0;
			__be32 old_word, new_word;
			__builtin_memcpy(&old_word, word, 4);
			__builtin_memcpy(word + 1, &clamped, 2);
			__builtin_memcpy(&new_word, word, 4);
			if (bpf_l4_csum_replace(skb, l4_csum_off(t), old_word, new_word, 4) < 0)
				return -1;
			if (bpf_skb_store_bytes(skb, off + 1, word, 4, 0) < 0)
				return -1;
			return 1;
		}
		if (opt[1] < 2)
			return 0;
		off += opt[1];
	}
	return 0;
}

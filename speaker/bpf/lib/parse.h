/* Packet parsing into a struct lb_tuple: Ethernet, then IPv4 or IPv6, then TCP or UDP. The
 * network header may sit deeper than ETH_HLEN (the inner header of a tunnelled packet). */
#pragma once

#include "common.h"

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/* Fills the ports and TCP flags at l4_off; -1 when the header is cut short. */
static __always_inline int lb_parse_l4(struct __sk_buff *skb, struct lb_tuple *t, __u32 l4_off)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__be16 *ports = data + l4_off;

	if ((void *)(ports + 2) > data_end)
		return -1;
	t->sport = ports[0];
	t->dport = ports[1];
	t->l4_off = l4_off;
	if (t->proto == IPPROTO_TCP) {
		struct tcphdr *tcp = data + l4_off;
		if ((void *)(tcp + 1) > data_end)
			return -1;
		t->tcp_flags = ((__u8 *)tcp)[13];
	}
	return 0;
}

/* Returns 0 and fills t for an unfragmented IPv4 TCP/UDP packet at l3_off; -1 for anything
 * else. Fragments are never translated: a first fragment with ports translated and later
 * ones without would reach two different hosts. */
static __always_inline int lb4_parse_at(struct __sk_buff *skb, struct lb_tuple *t, __u32 l3_off)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + l3_off;

	if ((void *)(ip + 1) > data_end)
		return -1;
	if (ip->ihl < 5)
		return -1;
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return -1;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return -1;
	__builtin_memset(t, 0, sizeof(*t));
	t->saddr[0] = ip->saddr;
	t->daddr[0] = ip->daddr;
	t->proto = ip->protocol;
	t->family = HERALD_FAMILY_V4;
	return lb_parse_l4(skb, t, l3_off + ip->ihl * 4);
}

/* Returns 0 and fills t for an IPv6 TCP/UDP packet without extension headers at l3_off. */
static __always_inline int lb6_parse_at(struct __sk_buff *skb, struct lb_tuple *t, __u32 l3_off)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6 = data + l3_off;

	if ((void *)(ip6 + 1) > data_end)
		return -1;
	if (ip6->nexthdr != IPPROTO_TCP && ip6->nexthdr != IPPROTO_UDP)
		return -1;
	__builtin_memset(t, 0, sizeof(*t));
	__builtin_memcpy(t->saddr, &ip6->saddr, 16);
	__builtin_memcpy(t->daddr, &ip6->daddr, 16);
	t->proto = ip6->nexthdr;
	t->family = HERALD_FAMILY_V6;
	return lb_parse_l4(skb, t, l3_off + sizeof(struct ipv6hdr));
}

/* Parses any supported packet; -1 means "not ours, let the kernel have it". */
static __always_inline int lb_parse(struct __sk_buff *skb, struct lb_tuple *t)
{
	if (skb->protocol == bpf_htons(ETH_P_IP))
		return lb4_parse_at(skb, t, ETH_HLEN);
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return lb6_parse_at(skb, t, ETH_HLEN);
	return -1;
}

/* Packet parsing into a struct lb_tuple: Ethernet, then IPv4 or IPv6, then TCP or UDP. */
#pragma once

#include "common.h"

#define IP_MF 0x2000
#define IP_OFFSET 0x1fff

/* Returns 0 and fills t for an unfragmented IPv4 TCP/UDP packet; -1 for anything else. */
static __always_inline int lb4_parse(struct __sk_buff *skb, struct lb_tuple *t)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct iphdr *ip = data + ETH_HLEN;

	if ((void *)(ip + 1) > data_end)
		return -1;
	if (ip->ihl < 5)
		return -1;
	/* Only the first fragment carries ports; later ones have none to translate. */
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return -1;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return -1;
	__u32 l4_off = ETH_HLEN + ip->ihl * 4;
	__be16 *ports = data + l4_off;
	if ((void *)(ports + 2) > data_end)
		return -1;
	__builtin_memset(t, 0, sizeof(*t));
	t->saddr[0] = ip->saddr;
	t->daddr[0] = ip->daddr;
	t->sport = ports[0];
	t->dport = ports[1];
	t->proto = ip->protocol;
	t->family = HERALD_FAMILY_V4;
	t->l4_off = l4_off;
	return 0;
}

/* Returns 0 and fills t for an IPv6 TCP/UDP packet without extension headers; -1 otherwise. */
static __always_inline int lb6_parse(struct __sk_buff *skb, struct lb_tuple *t)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ipv6hdr *ip6 = data + ETH_HLEN;

	if ((void *)(ip6 + 1) > data_end)
		return -1;
	if (ip6->nexthdr != IPPROTO_TCP && ip6->nexthdr != IPPROTO_UDP)
		return -1;
	__u32 l4_off = ETH_HLEN + sizeof(struct ipv6hdr);
	__be16 *ports = data + l4_off;
	if ((void *)(ports + 2) > data_end)
		return -1;
	__builtin_memset(t, 0, sizeof(*t));
	__builtin_memcpy(t->saddr, &ip6->saddr, 16);
	__builtin_memcpy(t->daddr, &ip6->daddr, 16);
	t->sport = ports[0];
	t->dport = ports[1];
	t->proto = ip6->nexthdr;
	t->family = HERALD_FAMILY_V6;
	t->l4_off = l4_off;
	return 0;
}

/* Parses any supported packet; -1 means "not ours, let the kernel have it". */
static __always_inline int lb_parse(struct __sk_buff *skb, struct lb_tuple *t)
{
	if (skb->protocol == bpf_htons(ETH_P_IP))
		return lb4_parse(skb, t);
	if (skb->protocol == bpf_htons(ETH_P_IPV6))
		return lb6_parse(skb, t);
	return -1;
}

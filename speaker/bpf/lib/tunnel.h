/* Direct server return: the node that owns an IP sends a client's packet unchanged inside an
 * IPIP (IPv4) or IP6IP6 (IPv6) header to the backend's node; that node strips the header and
 * translates the packet to its local backend, whose reply goes straight to the client. Also
 * the FIB redirect that sends packets this node rewrote to another host. */
#pragma once

#include "common.h"
#include "maps.h"
#include "parse.h"
#include "ct.h"

/* Kernel 6.3+ (uapi headers before it lack the names). */
#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV4
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV4 (1ULL << 7)
#endif
#ifndef BPF_F_ADJ_ROOM_DECAP_L3_IPV6
#define BPF_F_ADJ_ROOM_DECAP_L3_IPV6 (1ULL << 8)
#endif

#define AF_INET 2
#define AF_INET6 10

/* Bytes the tunnel adds: what a tunnelled flow's MSS must leave room for. */
static __always_inline __u32 lb_tunnel_overhead(__u8 family)
{
	return family == HERALD_FAMILY_V4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
}

static __always_inline __u16 csum_fold(__s64 csum)
{
	__u32 sum = (__u32)csum;

	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

/* Sends the packet out of the interface the routing table names for dst: with the next hop's
 * MAC when the neighbour table has it, else through the neighbour subsystem (which resolves
 * it). Used for packets whose source is this node's own address (SNAT, tunnel, a NodePort's
 * reply): handing them to the IP stack on ingress would need accept_local. */
static __always_inline int lb_redirect(struct __sk_buff *skb, __u8 family, const __u32 *src, const __u32 *dst)
{
	struct bpf_fib_lookup p;

	__builtin_memset(&p, 0, sizeof(p));
	p.ifindex = skb->ifindex;
	if (family == HERALD_FAMILY_V4) {
		p.family = AF_INET;
		p.ipv4_src = src[0];
		p.ipv4_dst = dst[0];
	} else {
		p.family = AF_INET6;
		addr_copy(p.ipv6_src, src);
		addr_copy(p.ipv6_dst, dst);
	}
	long rc = bpf_fib_lookup(skb, &p, sizeof(p), 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		if (bpf_skb_store_bytes(skb, 0, p.dmac, ETH_ALEN, 0) < 0 ||
		    bpf_skb_store_bytes(skb, ETH_ALEN, p.smac, ETH_ALEN, 0) < 0) {
			lb_stat(HERALD_STAT_DROP_REWRITE_FAILED);
			return TC_ACT_SHOT;
		}
		return bpf_redirect(p.ifindex, 0);
	}
	if (rc != BPF_FIB_LKUP_RET_NO_NEIGH) {
		lb_stat(HERALD_STAT_DROP_NO_ROUTE);
		return TC_ACT_SHOT;
	}
	/* p now names the next hop (the gateway, or dst itself on a connected route). */
	struct bpf_redir_neigh nh;
	__builtin_memset(&nh, 0, sizeof(nh));
	nh.nh_family = p.family;
	if (p.family == AF_INET)
		nh.ipv4_nh = p.ipv4_dst;
	else
		addr_copy(nh.ipv6_nh, p.ipv6_dst);
	return bpf_redirect_neigh(p.ifindex, &nh, sizeof(nh), 0);
}

static __always_inline int lb4_encap(struct __sk_buff *skb, const struct lb_backend *be)
{
	struct iphdr outer;
	__u32 inner_len = skb->len - ETH_HLEN;

	if (bpf_skb_adjust_room(skb, sizeof(outer), BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L3_IPV4) < 0)
		return -1;
	__builtin_memset(&outer, 0, sizeof(outer));
	outer.version = 4;
	outer.ihl = 5;
	outer.ttl = 64;
	outer.protocol = IPPROTO_IPIP;
	outer.tot_len = bpf_htons(inner_len + sizeof(outer));
	outer.saddr = be->snat_addr[0];
	outer.daddr = be->node_addr[0];
	outer.check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)&outer, sizeof(outer), 0));
	return bpf_skb_store_bytes(skb, ETH_HLEN, &outer, sizeof(outer), 0);
}

static __always_inline int lb6_encap(struct __sk_buff *skb, const struct lb_backend *be)
{
	struct ipv6hdr outer;
	__u32 inner_len = skb->len - ETH_HLEN;

	if (bpf_skb_adjust_room(skb, sizeof(outer), BPF_ADJ_ROOM_MAC, BPF_F_ADJ_ROOM_ENCAP_L3_IPV6) < 0)
		return -1;
	__builtin_memset(&outer, 0, sizeof(outer));
	outer.version = 6;
	outer.payload_len = bpf_htons(inner_len);
	outer.nexthdr = IPPROTO_IPV6;
	outer.hop_limit = 64;
	__builtin_memcpy(&outer.saddr, be->snat_addr, 16);
	__builtin_memcpy(&outer.daddr, be->node_addr, 16);
	return bpf_skb_store_bytes(skb, ETH_HLEN, &outer, sizeof(outer), 0);
}

/* Sends the client's packet, untouched, to the backend's node. */
static __always_inline int lb_tunnel(struct __sk_buff *skb, const struct lb_tuple *t, const struct lb_backend *be)
{
	int rc = t->family == HERALD_FAMILY_V4 ? lb4_encap(skb, be) : lb6_encap(skb, be);

	if (rc < 0) {
		lb_stat(HERALD_STAT_DROP_REWRITE_FAILED);
		return TC_ACT_SHOT;
	}
	lb_stat(HERALD_STAT_DSR_SENT);
	return lb_redirect(skb, t->family, be->snat_addr, be->node_addr);
}

/* Strips the tunnel header of a packet another node sent here for one of our frontends.
 * Returns 1 with t describing the inner packet, now at ETH_HLEN, and *fe its frontend; 0 when
 * the packet is not such a packet (untouched); -1 when stripping failed. */
static __always_inline int lb_decap(struct __sk_buff *skb, struct lb_tuple *t, struct lb_frontend **fe)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = data + ETH_HLEN;
		if ((void *)(ip + 1) > data_end)
			return 0;
		if (ip->protocol != IPPROTO_IPIP || ip->ihl != 5 || (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)))
			return 0;
		if (lb4_parse_at(skb, t, ETH_HLEN + sizeof(struct iphdr)) < 0 || !(*fe = lb_frontend_of(t)))
			return 0;
		/* The flag (6.3+) clears the tunnel's GSO marks; older kernels refuse it and
		 * get a plain shrink (inner and outer are the same family). */
		if (bpf_skb_adjust_room(skb, -(__s32)sizeof(struct iphdr), BPF_ADJ_ROOM_MAC,
					BPF_F_ADJ_ROOM_DECAP_L3_IPV4) < 0 &&
		    bpf_skb_adjust_room(skb, -(__s32)sizeof(struct iphdr), BPF_ADJ_ROOM_MAC, 0) < 0)
			return -1;
		t->l4_off -= sizeof(struct iphdr);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = data + ETH_HLEN;
		if ((void *)(ip6 + 1) > data_end)
			return 0;
		if (ip6->nexthdr != IPPROTO_IPV6)
			return 0;
		if (lb6_parse_at(skb, t, ETH_HLEN + sizeof(struct ipv6hdr)) < 0 || !(*fe = lb_frontend_of(t)))
			return 0;
		if (bpf_skb_adjust_room(skb, -(__s32)sizeof(struct ipv6hdr), BPF_ADJ_ROOM_MAC,
					BPF_F_ADJ_ROOM_DECAP_L3_IPV6) < 0 &&
		    bpf_skb_adjust_room(skb, -(__s32)sizeof(struct ipv6hdr), BPF_ADJ_ROOM_MAC, 0) < 0)
			return -1;
		t->l4_off -= sizeof(struct ipv6hdr);
	} else {
		return 0;
	}
	lb_stat(HERALD_STAT_DSR_RECEIVED);
	return 1;
}

/* Keeps a tunnelled flow's segments small enough for the tunnel: the backend's SYN-ACK tells
 * the client how large to make them, so its MSS is lowered by the tunnel's overhead. */
static __always_inline int lb_clamp_tunnelled_mss(struct __sk_buff *skb, const struct lb_tuple *t)
{
	__u32 mtu = 0;

	if (bpf_check_mtu(skb, 0, &mtu, 0, 0) < 0 || mtu == 0)
		mtu = 1500;
	__u32 headers = t->family == HERALD_FAMILY_V4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
	headers += sizeof(struct tcphdr) + lb_tunnel_overhead(t->family);
	if (mtu <= headers + 536)
		return 0;
	int rc = lb_clamp_mss(skb, t, mtu - headers);
	if (rc > 0)
		lb_stat(HERALD_STAT_MSS_CLAMPED);
	return rc;
}

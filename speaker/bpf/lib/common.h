/* Shared definitions of Herald's eBPF service map: constants, packet tuple, map structs.
 * Every struct here that Rust also writes has a mirror in speaker/src/dataplane/maps.rs
 * ("must match struct X in bpf/lib/common.h"); a Rust test checks their sizes. */
#pragma once

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

/* Slots in one frontend's Maglev table. Prime, so every backend's skip walks all slots.
 * Must equal MAGLEV_TABLE_SIZE in speaker/src/dataplane/maglev.rs. */
#define HERALD_MAGLEV_SIZE 1021
/* Fixed seed of the flow hash: equal on every node, so every node picks the same slot. */
#define HERALD_FLOW_SEED 0x48524c44u
#define HERALD_MAX_FRONTENDS 65536
#define HERALD_MAX_BACKENDS 65536
#define HERALD_CT_ENTRIES 262144

#define HERALD_FAMILY_V4 4
#define HERALD_FAMILY_V6 6

/* lb_backend.flags: the backend sits on another node; translate the client's source to
 * snat_addr so the reply comes back through this node. */
#define HERALD_BACKEND_SNAT 1

/* Key of the frontend map: an address (IPv4 in addr[0], rest zero), port, protocol. */
struct lb_frontend_key {
	__u32 addr[4];
	__be16 port;
	__u8 proto;
	__u8 family;
};

/* Value of the frontend map: the frontend's id (Maglev row and counter index). */
struct lb_frontend {
	__u32 id;
	__u32 backend_count;
};

struct lb_backend {
	__u32 addr[4];
	__u32 snat_addr[4];
	__be16 port;
	__u8 family;
	__u8 flags;
};

struct lb_maglev_row {
	__u32 backend_ids[HERALD_MAGLEV_SIZE];
};

struct lb_counters {
	__u64 packets;
	__u64 bytes;
};

/* A parsed packet: addresses in network order, l4_off where the TCP/UDP header starts. */
struct lb_tuple {
	__u32 saddr[4];
	__u32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 family;
	__u16 pad;
	__u32 l4_off;
};

/* Conntrack key: a flow as seen on the wire in one direction. */
struct ct_key {
	__u32 saddr[4];
	__u32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 family;
	__u16 pad;
};

/* Forward entry (key = client → frontend): where the flow went and how it was translated. */
struct ct_forward {
	__u32 backend_id;
	__u32 backend_addr[4];
	__u32 snat_addr[4];
	__be16 backend_port;
	__be16 snat_port;
};

/* Reverse entry (key = backend → client, or backend → node when SNATed): what to write back. */
struct ct_reverse {
	__u32 frontend_addr[4];
	__u32 client_addr[4];
	__be16 frontend_port;
	__be16 client_port;
};

static __always_inline int addr_eq(const __u32 *a, const __u32 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

static __always_inline void addr_copy(__u32 *dst, const __u32 *src)
{
	dst[0] = src[0];
	dst[1] = src[1];
	dst[2] = src[2];
	dst[3] = src[3];
}

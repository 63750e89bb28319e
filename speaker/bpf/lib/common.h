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
/* Established flows; flows that have not completed a handshake live in a smaller map of their
 * own, so a flood of spoofed SYNs evicts only other unestablished flows. */
#define HERALD_CT_ENTRIES 262144
#define HERALD_CT_NEW_ENTRIES 65536
/* A reverse entry for every flow either map can hold. */
#define HERALD_CT_REVERSE_ENTRIES (HERALD_CT_ENTRIES + HERALD_CT_NEW_ENTRIES)

#define HERALD_FAMILY_V4 4
#define HERALD_FAMILY_V6 6

/* lb_backend.flags: how a backend on another node is reached. Neither flag: the backend is on
 * this node. SNAT: the client's source becomes snat_addr:port, so the reply comes back here.
 * DSR: the client's packet is sent unchanged inside IPIP/IP6IP6 from snat_addr to node_addr
 * (the backend's node), which translates it and replies to the client directly. */
#define HERALD_BACKEND_SNAT 1
#define HERALD_BACKEND_DSR 2

/* Key of the frontend map: an address (IPv4 in addr[0], rest zero), port, protocol. */
struct lb_frontend_key {
	__u32 addr[4];
	__be16 port;
	__u8 proto;
	__u8 family;
};

/* lb_frontend.flags: only clients in herald_source_ranges (loadBalancerSourceRanges) get in. */
#define HERALD_FRONTEND_SOURCE_RANGES 1
#define HERALD_MAX_SOURCE_RANGES 65536

/* Value of the frontend map: the frontend's id (Maglev row and counter index). */
struct lb_frontend {
	__u32 id;
	__u32 backend_count;
	__u32 flags;
};

/* Key of herald_source_ranges (an LPM trie): the frontend id, then the client network;
 * prefixlen counts 32 bits of id plus the network's prefix. */
struct lb_source_key {
	__u32 prefixlen;
	__u32 frontend_id;
	__u32 addr[4];
};

struct lb_backend {
	__u32 addr[4];
	/* This node's address of the backend's family: SNAT source or tunnel source. */
	__u32 snat_addr[4];
	/* The backend's node (DSR tunnel destination). */
	__u32 node_addr[4];
	/* Changes whenever the id is given to a backend anew: a flow remembers the generation it
	 * was sent to and never follows the id to a different backend. */
	__u32 generation;
	__be16 port;
	__u8 family;
	__u8 flags;
};

/* The source ports of backends, a bit per port (one entry, index 0): only a packet from one
 * of them can be a reply that egress translates, so every other packet leaving the node skips
 * the reverse table. */
#define HERALD_PORT_WORDS (65536 / 64)
struct lb_port_set {
	__u64 words[HERALD_PORT_WORDS];
};

/* The node-wide settings (one entry, index 0), written by the speaker. */
struct lb_config {
	/* CLOCK_MONOTONIC of the speaker's last heartbeat; 0 until the first one. Programs
	 * stop translating new packets when it is older than HERALD_OWNER_GRACE_NS, so maps a
	 * removed speaker left behind do not forward to addresses that may belong to others. */
	__u64 heartbeat_ns;
	/* SNAT source ports: [snat_port_min, snat_port_min + snat_port_count). */
	__u16 snat_port_min;
	__u16 snat_port_count;
	__u32 pad;
};

/* How long pinned programs keep translating after the speaker's last heartbeat. */
#define HERALD_OWNER_GRACE_NS (120ull * 1000000000ull)

/* Event and drop counters (per CPU), indexed by HERALD_STAT_*; names in Rust's dataplane::maps. */
#define HERALD_STAT_FLOW_NEW 0
#define HERALD_STAT_FLOW_ESTABLISHED 1
#define HERALD_STAT_FLOW_REUSED 2
#define HERALD_STAT_DROP_NO_BACKEND 3
#define HERALD_STAT_DROP_NO_SNAT_PORT 4
#define HERALD_STAT_DROP_TUNNEL_NOT_LOCAL 5
#define HERALD_STAT_DROP_REWRITE_FAILED 6
#define HERALD_STAT_DROP_NO_ROUTE 7
#define HERALD_STAT_DSR_SENT 8
#define HERALD_STAT_DSR_RECEIVED 9
#define HERALD_STAT_MSS_CLAMPED 10
#define HERALD_STAT_OWNER_STALE 11
#define HERALD_STAT_DROP_SOURCE_RANGE 12
#define HERALD_STAT_MAX 13

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
	/* TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, ACK 0x10); 0 for UDP. */
	__u8 tcp_flags;
	__u8 pad;
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

/* Flow states (ct_forward.state). */
#define CT_SYN 1
#define CT_ESTABLISHED 2
#define CT_CLOSING 3
#define CT_UDP 4

/* ct_forward.flags */
#define CT_FLAG_SNAT HERALD_BACKEND_SNAT
#define CT_FLAG_DSR HERALD_BACKEND_DSR
/* The flow arrived here through another node's DSR tunnel. */
#define CT_FLAG_TUNNELLED 4
/* A reply of the flow was seen. */
#define CT_FLAG_REPLIED 8
/* A FIN was seen from the client / from the backend. */
#define CT_FLAG_FIN_CLIENT 16
#define CT_FLAG_FIN_BACKEND 32

/* Forward entry (key = client → frontend): the flow's state and where it went. The reverse
 * entry of a flow is valid only while its forward entry is (see ct.h). */
struct ct_forward {
	/* lb_now() after which the flow is over. */
	__u64 expires;
	__u32 frontend_id;
	__u32 backend_id;
	__u32 backend_generation;
	__u32 backend_addr[4];
	__u32 snat_addr[4];
	__be16 backend_port;
	__be16 snat_port;
	__u8 state;
	__u8 flags;
	__u16 pad;
	__u32 pad2;
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

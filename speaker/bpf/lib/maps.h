/* The service map's BPF maps. Pinned by name under the speaker's pin directory, so a restarted
 * speaker reuses them (conntrack survives) and replaces only the programs. */
#pragma once

#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, HERALD_MAX_FRONTENDS);
	__type(key, struct lb_frontend_key);
	__type(value, struct lb_frontend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} herald_frontends SEC(".maps");

/* Indexed by backend id (ids are dense, from 1): every packet of a flow reads its backend, and
 * an array lookup is an inlined bounds check where a hash lookup hashes and walks a bucket. An
 * unused id is all zeroes: family 0 and generation 0 match no packet and no flow. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HERALD_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct lb_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} herald_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_port_set);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} herald_reply_ports SEC(".maps");

/* Clients admitted to frontends that have HERALD_FRONTEND_SOURCE_RANGES. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, HERALD_MAX_SOURCE_RANGES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb_source_key);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} herald_source_ranges SEC(".maps");

/* One Maglev table per frontend id. Not preallocated: each row is 4 KiB. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, HERALD_MAX_FRONTENDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct lb_maglev_row);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} herald_maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HERALD_MAX_FRONTENDS);
	__type(key, __u32);
	__type(value, struct lb_counters);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} herald_counters SEC(".maps");

/* Conntrack: per-CPU LRU lists, so new flows on different CPUs do not contend on one lock.
 * Established flows live in herald_ct_forward, flows still in their handshake in herald_ct_new
 * (moved over once established), so unestablished flows can only evict each other. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, HERALD_CT_NEW_ENTRIES);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__type(key, struct ct_key);
	__type(value, struct ct_forward);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} herald_ct_new SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, HERALD_CT_ENTRIES);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__type(key, struct ct_key);
	__type(value, struct ct_forward);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} herald_ct_forward SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, HERALD_CT_REVERSE_ENTRIES);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__type(key, struct ct_key);
	__type(value, struct ct_reverse);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} herald_ct_reverse SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_config);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} herald_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, HERALD_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} herald_stats SEC(".maps");

/* Per backend id: the next SNAT port offset to try. Ports are handed out round robin, so a port
 * comes back to the same backend only after every other port of the range was used. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, HERALD_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} herald_snat_cursor SEC(".maps");

/* The frontend a packet is addressed to, or NULL. */
static __always_inline struct lb_frontend *lb_frontend_of(const struct lb_tuple *t)
{
	struct lb_frontend_key fkey;

	__builtin_memset(&fkey, 0, sizeof(fkey));
	addr_copy(fkey.addr, t->daddr);
	fkey.port = t->dport;
	fkey.proto = t->proto;
	fkey.family = t->family;
	return bpf_map_lookup_elem(&herald_frontends, &fkey);
}

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

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, HERALD_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct lb_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} herald_backends SEC(".maps");

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

/* Conntrack: per-CPU LRU lists, so new flows on different CPUs do not contend on one lock. */
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
	__uint(max_entries, HERALD_CT_ENTRIES);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__type(key, struct ct_key);
	__type(value, struct ct_reverse);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} herald_ct_reverse SEC(".maps");

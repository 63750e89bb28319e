//! Flow state kept by the eBPF programs (conntrack), seen from user space: the sweep that
//! removes flows that are over, and the counters of flow events and drops.
//!
//! The programs treat an expired entry as absent, so the sweep is not needed for correctness;
//! it frees the slots (the tables are LRU maps, which otherwise evict only when full) and
//! counts live flows for the `herald_dataplane_flows` gauge. A reverse entry lives only as long
//! as the forward entry it derives from names the same translation (see `bpf/lib/ct.h`).
//!
//! The programs keep working while a sweep runs, so it never removes what may have just
//! become live. It reads the tables, picks the entries that were over then, and hands them in
//! batches to `herald_sweep` (bpf/lib/sweep.h), which checks each again by the programs' own
//! rules and removes it in the same step. A flow that took an entry's tuple since the read
//! keeps its entry; what remains is the few instructions between that check and the delete.
//! Checking from user space and deleting after, or taking an entry out and putting it back,
//! left a window of a syscall or more: a soak at 12,000 connections a second took live
//! entries out and put them back about 150 times a second.

use std::collections::HashMap;

use aya::maps::{HashMap as BpfHashMap, MapData, PerCpuArray};
use aya::programs::ProgramFd;

use super::maps::{BACKEND_SNAT, CtForward, CtKey, CtReverse, MapsError};

/// Names of `herald_stats` entries, in index order (`HERALD_STAT_*` in bpf/lib/common.h).
pub const STAT_NAMES: [(&str, &str); 13] = [
    ("event", "flow_new"),
    ("event", "flow_established"),
    ("event", "flow_reused"),
    ("drop", "no_backend"),
    ("drop", "no_snat_port"),
    ("drop", "tunnel_not_local"),
    ("drop", "rewrite_failed"),
    ("drop", "no_route"),
    ("event", "dsr_sent"),
    ("event", "dsr_received"),
    ("event", "mss_clamped"),
    ("event", "owner_stale"),
    ("drop", "source_range"),
];

/// What one sweep found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepStats {
    /// Live flows left in the map of established flows.
    pub established: usize,
    /// Live flows left in the map of unestablished flows.
    pub new: usize,
    /// Reverse entries left.
    pub reverse: usize,
    /// Entries removed.
    pub removed: usize,
}

/// The forward key a reverse entry derives from (client → frontend).
pub fn forward_key_of(reverse_key: &CtKey, reverse: &CtReverse) -> CtKey {
    CtKey {
        saddr: reverse.client_addr,
        daddr: reverse.frontend_addr,
        sport: reverse.client_port,
        dport: reverse.frontend_port,
        proto: reverse_key.proto,
        family: reverse_key.family,
        pad: 0,
    }
}

/// Whether a reverse entry belongs to `forward` (same backend, and same SNAT port for SNAT).
/// Must agree with `ct_owner_of` in bpf/lib/ct.h.
pub fn reverse_belongs_to(reverse_key: &CtKey, forward: &CtForward) -> bool {
    if forward.backend_addr != reverse_key.saddr || forward.backend_port != reverse_key.sport {
        return false;
    }
    forward.flags & BACKEND_SNAT == 0
        || (forward.snat_port == reverse_key.dport && forward.snat_addr == reverse_key.daddr)
}

/// The reverse entry the programs write for a flow on `forward_key` (as `lb_forward` in
/// bpf/lib/lb.h does): keyed by the backend's reply, to the SNAT port for a SNATed flow.
#[cfg(any(test, feature = "testing"))]
pub fn reverse_entry_for(forward_key: &CtKey, forward: &CtForward) -> (CtKey, CtReverse) {
    let snat = forward.flags & BACKEND_SNAT != 0;
    let key = CtKey {
        saddr: forward.backend_addr,
        sport: forward.backend_port,
        daddr: if snat { forward.snat_addr } else { forward_key.saddr },
        dport: if snat { forward.snat_port } else { forward_key.sport },
        ..*forward_key
    };
    let reverse = CtReverse {
        frontend_addr: forward_key.daddr,
        client_addr: forward_key.saddr,
        frontend_port: forward_key.dport,
        client_port: forward_key.sport,
    };
    (key, reverse)
}

/// The keys of forward entries that are over at `now` (CLOCK_MONOTONIC ns).
pub fn expired_forward(entries: impl IntoIterator<Item = (CtKey, CtForward)>, now: u64) -> (Vec<CtKey>, usize) {
    let mut dead = Vec::new();
    let mut live = 0;
    for (key, value) in entries {
        if value.expires <= now {
            dead.push(key);
        } else {
            live += 1;
        }
    }
    (dead, live)
}

/// The reverse entries whose flow is over or now carries another translation, and how many
/// are not. `forward` looks a live forward entry up (in either table).
pub fn orphaned_reverse(
    entries: impl IntoIterator<Item = (CtKey, CtReverse)>,
    forward: impl Fn(&CtKey) -> Option<CtForward>,
) -> (Vec<(CtKey, CtReverse)>, usize) {
    let mut dead = Vec::new();
    let mut live = 0;
    for (key, value) in entries {
        match forward(&forward_key_of(&key, &value)) {
            Some(f) if reverse_belongs_to(&key, &f) => live += 1,
            _ => dead.push((key, value)),
        }
    }
    (dead, live)
}

/// The conntrack maps.
pub(crate) struct FlowMaps {
    pub(crate) established: BpfHashMap<MapData, CtKey, CtForward>,
    pub(crate) new: BpfHashMap<MapData, CtKey, CtForward>,
    pub(crate) reverse: BpfHashMap<MapData, CtKey, CtReverse>,
    pub(crate) stats: PerCpuArray<MapData, u64>,
    /// `herald_sweep`, which removes the entries a sweep found over if they still are.
    pub(crate) sweeper: ProgramFd,
}

impl FlowMaps {
    /// Slots of each conntrack table as the kernel reports them (`None` if it cannot be read).
    pub(crate) fn capacities(&self) -> [(&'static str, Option<u32>); 3] {
        use aya::maps::IterableMap;
        let slots = |map: &MapData| map.info().ok().map(|info| info.max_entries());
        [
            ("established", slots(self.established.map())),
            ("new", slots(self.new.map())),
            ("reverse", slots(self.reverse.map())),
        ]
    }
}

/// Every entry of a conntrack map: in batches of [`BATCH`] per syscall where the kernel can
/// (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6+), else one entry at a time through aya (two syscalls
/// per entry, about 2.5 µs each here). Entries the programs add or delete meanwhile may be
/// missed or seen twice: the next sweep sees what this one missed.
fn collect<V: aya::Pod + Default>(
    map: &BpfHashMap<MapData, CtKey, V>,
    name: &'static str,
) -> Result<Vec<(CtKey, V)>, MapsError> {
    match raw::lookup_all(map) {
        Ok(entries) => return Ok(entries),
        Err(e) if not_supported(&e) => {}
        Err(e) => {
            return Err(MapsError {
                map: name,
                op: "batch lookup",
                source: aya::maps::MapError::IoError(e),
            });
        }
    }
    let mut out = Vec::new();
    for entry in map.iter() {
        match entry {
            Ok(kv) => out.push(kv),
            Err(aya::maps::MapError::KeyNotFound) => continue,
            Err(source) => {
                return Err(MapsError {
                    map: name,
                    op: "iterate",
                    source,
                });
            }
        }
    }
    Ok(out)
}

/// Whether a `bpf(2)` command failed for want of it: EINVAL (a command this kernel does not
/// have), ENOTSUPP (524, kernel-internal: not for this map type).
fn not_supported(error: &std::io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP | 524))
}

/// Entries per `BPF_MAP_LOOKUP_BATCH` call.
const BATCH: usize = 8192;

/// The `bpf(2)` commands aya 0.14 does not wrap (batch lookup of a hash map, a program's test
/// run): one syscall each, with buffers this module owns and sizes.
#[allow(unsafe_code)]
mod raw {
    use std::os::fd::{AsFd, AsRawFd};

    use aya::maps::{HashMap as BpfHashMap, IterableMap, MapData};
    use aya::programs::ProgramFd;

    use super::{BATCH, CtKey};

    /// `BPF_PROG_TEST_RUN` and `BPF_MAP_LOOKUP_BATCH` in `enum bpf_cmd`.
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

    /// The `test` member of `union bpf_attr`.
    #[repr(C)]
    #[derive(Default)]
    struct TestRunAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        pad: u32,
    }

    /// Runs a program once with `packet` as its packet; returns what it returned.
    pub(super) fn run(program: &ProgramFd, packet: &[u8]) -> std::io::Result<u32> {
        let mut attr = TestRunAttr {
            prog_fd: program.as_fd().as_raw_fd() as u32,
            data_size_in: packet.len() as u32,
            data_in: packet.as_ptr() as u64,
            repeat: 1,
            ..TestRunAttr::default()
        };
        // SAFETY: attr points at `packet`, of the length passed, live for the call; with no
        // output buffer the kernel writes only into attr.
        unsafe { sys_bpf(BPF_PROG_TEST_RUN, &mut attr) }?;
        Ok(attr.retval)
    }

    /// `bpf(2)` with `attr` as the command's member of `union bpf_attr`.
    ///
    /// # Safety
    /// Every pointer in `attr` must point at memory of the size and type the command expects
    /// for this map, live for the call.
    unsafe fn sys_bpf<A>(cmd: libc::c_long, attr: &mut A) -> std::io::Result<()> {
        // SAFETY: the caller vouches for the pointers in attr; attr itself is a live, writable
        // value of the size passed.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), std::mem::size_of::<A>()) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// The `batch` member of `union bpf_attr`.
    #[repr(C)]
    #[derive(Default)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }

    pub(super) fn lookup_all<V: aya::Pod + Default>(
        map: &BpfHashMap<MapData, CtKey, V>,
    ) -> std::io::Result<Vec<(CtKey, V)>> {
        let fd = map.map().fd().as_fd().as_raw_fd();
        let mut keys = vec![CtKey::default(); BATCH];
        let mut values = vec![V::default(); BATCH];
        let mut out = Vec::new();
        // Hash maps resume from a bucket index, which the kernel writes to out_batch.
        let (mut cursor, mut next) = (0u32, 0u32);
        let mut first = true;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { std::ptr::from_ref(&cursor) as u64 },
                out_batch: std::ptr::from_mut(&mut next) as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: BATCH as u32,
                map_fd: fd as u32,
                ..BatchAttr::default()
            };
            // SAFETY: attr points at buffers of BATCH keys and BATCH values of the map's key and
            // value types (repr(C) mirrors whose sizes equal the map's), and at two u32 cursors;
            // all outlive the call, and the kernel writes at most `count` entries.
            let result = unsafe { sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) };
            let n = (attr.count as usize).min(BATCH);
            out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
            match result {
                Ok(()) => {}
                // ENOENT: the walk is over (this call may still have returned entries).
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
                Err(e) => return Err(e),
            }
            cursor = next;
            first = false;
        }
    }
}

/// Which table a batch of removals is for (`HERALD_SWEEP_*` in bpf/lib/sweep.h).
#[derive(Debug, Clone, Copy)]
enum SweepTable {
    Established = 0,
    New = 1,
    Reverse = 2,
}

/// Records per run of `herald_sweep` (`HERALD_SWEEP_BATCH` in bpf/lib/sweep.h).
const SWEEP_BATCH: usize = 32;
/// Bytes of a `struct sweep_record`: a key and a reverse value.
const RECORD_LEN: usize = std::mem::size_of::<CtKey>() + std::mem::size_of::<CtReverse>();
/// The test packet's Ethernet header, which `herald_sweep` skips.
const ETH_HLEN: usize = 14;

/// Appends a record as `struct sweep_record` lays it out: the key, then the reverse value the
/// sweep read (zeros for forward tables, whose entries are judged by their expiry alone).
fn put_record(packet: &mut Vec<u8>, key: &CtKey, seen: &CtReverse) {
    packet.extend_from_slice(&key.saddr);
    packet.extend_from_slice(&key.daddr);
    packet.extend_from_slice(&key.sport);
    packet.extend_from_slice(&key.dport);
    packet.extend_from_slice(&[key.proto, key.family]);
    packet.extend_from_slice(&key.pad.to_ne_bytes());
    packet.extend_from_slice(&seen.frontend_addr);
    packet.extend_from_slice(&seen.client_addr);
    packet.extend_from_slice(&seen.frontend_port);
    packet.extend_from_slice(&seen.client_port);
}

/// What `herald_sweep` did with the entries it was given: removed, or kept because they are
/// live again (entries already gone count as neither).
#[derive(Debug, Default)]
struct Removal {
    removed: usize,
    kept: usize,
}

impl FlowMaps {
    /// Removes the entries of `table` that are still over, in runs of [`SWEEP_BATCH`].
    fn remove<'a>(
        &self,
        table: SweepTable,
        name: &'static str,
        entries: impl IntoIterator<Item = (&'a CtKey, &'a CtReverse)>,
    ) -> Result<Removal, MapsError> {
        let mut removal = Removal::default();
        let mut packet = Vec::with_capacity(ETH_HLEN + 8 + SWEEP_BATCH * RECORD_LEN);
        let mut entries = entries.into_iter().peekable();
        while entries.peek().is_some() {
            packet.clear();
            packet.resize(ETH_HLEN + 8, 0);
            let mut count = 0u32;
            for (key, seen) in entries.by_ref().take(SWEEP_BATCH) {
                put_record(&mut packet, key, seen);
                count += 1;
            }
            packet[ETH_HLEN..ETH_HLEN + 4].copy_from_slice(&(table as u32).to_ne_bytes());
            packet[ETH_HLEN + 4..ETH_HLEN + 8].copy_from_slice(&count.to_ne_bytes());
            let outcome = raw::run(&self.sweeper, &packet).map_err(|e| MapsError {
                map: name,
                op: "sweep (run herald_sweep)",
                source: aya::maps::MapError::IoError(e),
            })?;
            let (removed, absent) = ((outcome & 0xffff) as usize, (outcome >> 16) as usize);
            removal.removed += removed;
            removal.kept += (count as usize).saturating_sub(removed + absent);
        }
        Ok(removal)
    }

    /// Removes every flow that is over at `now` and the reverse entries of flows that are gone.
    pub(crate) fn sweep(&self, now: u64) -> Result<SweepStats, MapsError> {
        let mut stats = SweepStats::default();
        let no_reverse = CtReverse::default();
        let established = collect(&self.established, "herald_ct_forward")?;
        let (dead, live) = expired_forward(established.iter().copied(), now);
        let removal = self.remove(
            SweepTable::Established,
            "herald_ct_forward",
            dead.iter().map(|k| (k, &no_reverse)),
        )?;
        stats.established = live + removal.kept;
        stats.removed += removal.removed;
        let new = collect(&self.new, "herald_ct_new")?;
        let (dead, live) = expired_forward(new.iter().copied(), now);
        let removal = self.remove(SweepTable::New, "herald_ct_new", dead.iter().map(|k| (k, &no_reverse)))?;
        stats.new = live + removal.kept;
        stats.removed += removal.removed;
        let reverse = collect(&self.reverse, "herald_ct_reverse")?;
        // Only reverse entries need the live flows by key. A node whose flows all leave by
        // DSR (an owner's, in DSR mode) has none, and skips hashing every flow it holds.
        let mut live: HashMap<CtKey, CtForward> = HashMap::new();
        if !reverse.is_empty() {
            live.reserve(stats.established + stats.new);
            live.extend(established.into_iter().chain(new).filter(|(_, v)| v.expires > now));
        }
        let (orphans, live_reverse) = orphaned_reverse(reverse, |k| live.get(k).copied());
        let removal = self.remove(
            SweepTable::Reverse,
            "herald_ct_reverse",
            orphans.iter().map(|(k, v)| (k, v)),
        )?;
        stats.reverse = live_reverse + removal.kept;
        stats.removed += removal.removed;
        Ok(stats)
    }

    /// `herald_stats` summed over CPUs, in [`STAT_NAMES`] order.
    pub(crate) fn stats(&self) -> Vec<u64> {
        (0..STAT_NAMES.len() as u32)
            .map(|i| self.stats.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0))
            .collect()
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of the programs (`lb_now` in bpf/lib/ct.h, which
/// lags it by at most a tick).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into memory we own.
    #[allow(unsafe_code)]
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0);
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(client: u8, port: u16, frontend: u8) -> CtKey {
        let mut k = CtKey {
            proto: 6,
            family: 4,
            ..CtKey::default()
        };
        k.saddr[..4].copy_from_slice(&[10, 0, 0, client]);
        k.daddr[..4].copy_from_slice(&[203, 0, 113, frontend]);
        k.sport = port.to_be_bytes();
        k.dport = 80u16.to_be_bytes();
        k
    }

    fn forward(backend: u8, expires: u64, snat_port: Option<u16>) -> CtForward {
        let mut f = CtForward {
            expires,
            backend_port: 8080u16.to_be_bytes(),
            ..CtForward::default()
        };
        f.backend_addr[..4].copy_from_slice(&[10, 244, 2, backend]);
        if let Some(p) = snat_port {
            f.flags = BACKEND_SNAT;
            f.snat_port = p.to_be_bytes();
            f.snat_addr[..4].copy_from_slice(&[192, 168, 1, 10]);
        }
        f
    }

    #[test]
    fn expired_forward_entries_go_and_live_ones_stay() {
        let entries = vec![
            (key(1, 1000, 1), forward(5, 100, None)),
            (key(2, 1000, 1), forward(5, 101, None)),
        ];
        let (dead, live) = expired_forward(entries, 100);
        assert_eq!(dead, vec![key(1, 1000, 1)], "expires == now is over");
        assert_eq!(live, 1);
    }

    #[test]
    fn a_reverse_entry_lives_exactly_as_long_as_its_flow() {
        let (fa, a) = (key(1, 1000, 1), forward(5, 500, None));
        let (fb, b) = (key(2, 2000, 1), forward(6, 500, Some(20_001)));
        let (fc, c) = (key(3, 3000, 1), forward(7, 500, Some(20_002)));
        let reverse = vec![
            reverse_entry_for(&fa, &a),
            reverse_entry_for(&fb, &b),
            reverse_entry_for(&fc, &c),
        ];
        // a: live; b: its client tuple now carries a new flow with another SNAT port; c: gone.
        let mut live = HashMap::new();
        live.insert(fa, a);
        live.insert(fb, forward(6, 900, Some(20_777)));
        let (dead, kept) = orphaned_reverse(reverse.clone(), |k| live.get(k).copied());
        assert_eq!(kept, 1);
        assert_eq!(dead, vec![reverse[1], reverse[2]]);
        assert_eq!(forward_key_of(&reverse[0].0, &reverse[0].1), fa);
    }

    #[test]
    fn a_sweep_record_is_laid_out_as_the_program_reads_it() {
        let mut key = key(7, 40_007, 1);
        key.pad = 0x0102;
        let seen = CtReverse {
            frontend_addr: [3; 16],
            client_addr: [4; 16],
            frontend_port: [5, 6],
            client_port: [7, 8],
        };
        let mut packet = Vec::new();
        put_record(&mut packet, &key, &seen);
        assert_eq!(packet.len(), RECORD_LEN);
        assert_eq!(RECORD_LEN, 76, "struct sweep_record in bpf/lib/sweep.h");
        assert_eq!(&packet[..16], &key.saddr);
        assert_eq!(&packet[32..36], &[key.sport, key.dport].concat()[..]);
        assert_eq!(
            &packet[36..40],
            &[&[key.proto, key.family][..], &key.pad.to_ne_bytes()].concat()[..]
        );
        assert_eq!(&packet[40..56], &[3; 16]);
        assert_eq!(&packet[72..76], &[5, 6, 7, 8]);
    }

    #[test]
    fn stat_names_match_the_c_indices() {
        let header = include_str!("../../bpf/lib/common.h");
        let max: usize = header
            .lines()
            .find_map(|l| l.strip_prefix("#define HERALD_STAT_MAX "))
            .and_then(|v| v.trim().parse().ok())
            .expect("HERALD_STAT_MAX in common.h");
        assert_eq!(STAT_NAMES.len(), max);
        for (i, (_, name)) in STAT_NAMES.iter().enumerate() {
            let define = header
                .lines()
                .filter_map(|l| l.strip_prefix("#define HERALD_STAT_"))
                .find(|l| l.ends_with(&format!(" {i}")))
                .unwrap_or_else(|| panic!("no HERALD_STAT_ with index {i}"));
            let c_name = define.split_whitespace().next().unwrap().to_lowercase();
            assert_eq!(c_name.trim_start_matches("drop_"), *name, "index {i}");
        }
    }
}

//! Cost of the conntrack sweep with full tables (run as root):
//!
//! ```text
//! cargo bench -p herald-speaker --bench dataplane_sweep
//! ```
//!
//! Starts a dataplane in a private namespace, fills its pinned conntrack maps to capacity
//! (262,144 established flows, 65,536 handshakes, 262,144 reverse entries; half of each
//! expired or orphaned), then times sweeps: the first removes half of every table, the next
//! ones walk tables that are half full and remove nothing. The maps are LRU maps with per-CPU
//! lists, so each CPU's share is filled by a thread pinned to that CPU.

#[path = "../tests/dataplane_support/mod.rs"]
mod dataplane_support;

use std::time::Instant;

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use dataplane_support::start_dataplane;
use herald_speaker::dataplane::MAP_LAYOUT_DIR;
use herald_speaker::dataplane::flows::monotonic_ns;
use herald_speaker::dataplane::maps::{CtForward, CtKey, CtReverse};
use herald_testkit::routed::RoutedLab;

const ESTABLISHED: u32 = 262_144;
const NEW: u32 = 65_536;
const STATE_ESTABLISHED: u8 = 2;
const STATE_SYN: u8 = 1;

fn open<V: aya::Pod>(lab: &RoutedLab, name: &str) -> BpfHashMap<MapData, CtKey, V> {
    let pin = lab.pin_dir(1).join(MAP_LAYOUT_DIR).join(name);
    BpfHashMap::try_from(Map::from_map_data(MapData::from_pin(&pin).expect("pinned map")).expect("map"))
        .expect("hash map")
}

fn flow_key(n: u32) -> CtKey {
    let mut k = CtKey {
        proto: 6,
        family: 4,
        ..CtKey::default()
    };
    k.saddr[..4].copy_from_slice(&(0x0a00_0000 | (n >> 6)).to_be_bytes());
    k.daddr[..4].copy_from_slice(&[203, 0, 113, 1]);
    k.sport = (1024 + (n & 63) as u16).to_be_bytes();
    k.dport = 80u16.to_be_bytes();
    k
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: sched_setaffinity on this thread with a cpu_set_t we own.
    #[allow(unsafe_code)]
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    #[allow(unsafe_code)]
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("dataplane sweep bench: needs root (network namespaces, eBPF)");
        return;
    }
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as u32;
    let lab = RoutedLab::new(1);
    let dp = start_dataplane(&lab, 1).expect("dataplane");
    let now = monotonic_ns();
    let live = now + 3_600_000_000_000;
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for cpu in 0..cpus {
            let lab = &lab;
            s.spawn(move || {
                {
                    pin_to_cpu(cpu as usize);
                    let mut established = open::<CtForward>(lab, "herald_ct_forward");
                    let mut new = open::<CtForward>(lab, "herald_ct_new");
                    let mut reverse = open::<CtReverse>(lab, "herald_ct_reverse");
                    let mut n = cpu;
                    while n < ESTABLISHED {
                        let key = flow_key(n);
                        let expires = if n % 2 == 0 { live } else { now - 1 };
                        let mut f = CtForward {
                            expires,
                            state: STATE_ESTABLISHED,
                            backend_port: 8080u16.to_be_bytes(),
                            ..CtForward::default()
                        };
                        f.backend_addr[..4].copy_from_slice(&[10, 244, 1, 5]);
                        established.insert(key, f, 0).expect("insert established");
                        // The reverse entry of every flow (half of them orphaned by expiry).
                        let rkey = CtKey {
                            saddr: f.backend_addr,
                            daddr: key.saddr,
                            sport: f.backend_port,
                            dport: key.sport,
                            ..key
                        };
                        let rev = CtReverse {
                            frontend_addr: key.daddr,
                            client_addr: key.saddr,
                            frontend_port: key.dport,
                            client_port: key.sport,
                        };
                        reverse.insert(rkey, rev, 0).expect("insert reverse");
                        if n < NEW {
                            let syn = CtForward { state: STATE_SYN, ..f };
                            new.insert(flow_key(n + ESTABLISHED), syn, 0).expect("insert new");
                        }
                        n += cpus;
                    }
                }
            });
        }
    });
    println!("filled the conntrack maps in {:.1} s", t0.elapsed().as_secs_f64());
    println!("| sweep | established | new | reverse | removed | took |");
    println!("|---|---|---|---|---|---|");
    for round in 1..=4 {
        let t0 = Instant::now();
        let stats = dp.sweep_flows().expect("sweep");
        let took = t0.elapsed();
        println!(
            "| {round} | {} | {} | {} | {} | {:.0} ms |",
            stats.established,
            stats.new,
            stats.reverse,
            stats.removed,
            took.as_secs_f64() * 1000.0
        );
    }
    dp.shutdown().unwrap();
}

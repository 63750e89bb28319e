//! A routed lab, for the eBPF service map's tests and benchmarks (and membership's): a client
//! and up to three nodes on a switch, backend "pods" behind each node (a veth each, /32
//! routes, host-gw routes between nodes), tiny echo servers that report their name and the
//! peer they see, load and connection tools, and a private bpffs for pinned maps. Everything
//! is removed when the [`RoutedLab`] drops (also on panic).
//!
//! Addresses (k = the lab's index, unique within the process):
//! - LAN 10.204.k.0/24, fd00:204:k::/64: node i at .i / ::i, client at .100 (+m), VIPs at .200 (+m)
//! - pods of node i: 10.205.k.(16i + j)/32, fd00:205:k:i::j/128

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{Namespaces, Segment, add_address, cleanup, enter_netns, in_netns, run};

static NEXT_LAB: AtomicU32 = AtomicU32::new(1);
/// What the lab's namespaces and bpffs are named after.
const KIND: &str = "hrl-dp";

/// The bridge port that connects namespace `ns` (`<prefix>-<role>`) to the switch.
fn switch_port(ns: &str) -> String {
    let role = ns.rsplit('-').next().unwrap_or(ns);
    format!("p-{role}")
}

/// A running echo server; stops when dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            eprintln!("a server thread panicked");
        }
    }
}

pub struct RoutedLab {
    pub k: u8,
    pub prefix: String,
    namespaces: Namespaces,
    segment: Segment,
    bpffs: PathBuf,
    servers: Vec<Server>,
}

impl Drop for RoutedLab {
    fn drop(&mut self) {
        self.servers.clear();
        self.namespaces.delete_all();
        cleanup(
            format!("unmounting {}", self.bpffs.display()),
            Command::new("umount").arg(&self.bpffs).output(),
        );
        cleanup(
            format!("removing {}", self.bpffs.display()),
            std::fs::remove_dir_all(&self.bpffs),
        );
    }
}

impl RoutedLab {
    /// Client, switch, `nodes` nodes (1 to 3, each routing the others' pods); no pods yet.
    pub fn new(nodes: u8) -> RoutedLab {
        remove_orphaned_bpffs();
        let k = (NEXT_LAB.fetch_add(1, Ordering::Relaxed) % 250) as u8;
        let mut namespaces = Namespaces::new(KIND, k);
        let segment = Segment::new(&namespaces.add("sw"));
        let prefix = namespaces.prefix().to_string();
        let bpffs = PathBuf::from(format!("/tmp/{prefix}-bpffs"));
        let mut lab = RoutedLab {
            k,
            prefix,
            namespaces,
            segment,
            bpffs,
            servers: Vec::new(),
        };
        std::fs::create_dir_all(&lab.bpffs).unwrap();
        run("mount", &["-t", "bpf", "bpf", lab.bpffs.to_str().unwrap()]);
        let client = lab.add_ns("client");
        lab.lan_port(
            &client,
            lab.client_addr(0, false),
            lab.client_addr(0, true),
            &format!("02:04:{k:02x}:00:00:64"),
        );
        for m in 1..8u8 {
            add_address(&client, "eth0", lab.client_addr(m, false), 24);
            add_address(&client, "eth0", lab.client_addr(m, true), 64);
        }
        for i in 1..=nodes {
            let node = lab.add_ns(&format!("node{i}"));
            lab.lan_port(&node, lab.node_addr(i, false), lab.node_addr(i, true), &node_mac(k, i));
            for (key, value) in [
                ("net.ipv4.ip_forward", "1"),
                ("net.ipv6.conf.all.forwarding", "1"),
                ("net.ipv4.conf.all.send_redirects", "0"),
                ("net.ipv4.conf.eth0.send_redirects", "0"),
            ] {
                run(
                    "ip",
                    &["netns", "exec", &node, "sysctl", "-qw", &format!("{key}={value}")],
                );
            }
        }
        for i in 1..=nodes {
            for other in (1..=nodes).filter(|&o| o != i) {
                let node = lab.node(i);
                let pods4 = format!("{}/28", lab.pod_addr(other, 0, false));
                let pods6 = format!("{}/64", lab.pod_addr(other, 0, true));
                run(
                    "ip",
                    &[
                        "-n",
                        &node,
                        "route",
                        "add",
                        &pods4,
                        "via",
                        &lab.node_addr(other, false).to_string(),
                    ],
                );
                run(
                    "ip",
                    &[
                        "-n",
                        &node,
                        "-6",
                        "route",
                        "add",
                        &pods6,
                        "via",
                        &lab.node_addr(other, true).to_string(),
                    ],
                );
            }
        }
        lab
    }

    fn add_ns(&mut self, role: &str) -> String {
        self.namespaces.add(role)
    }

    /// Connects `ns` to the switch as eth0 with the given LAN addresses.
    fn lan_port(&self, ns: &str, v4: IpAddr, v6: IpAddr, mac: &str) {
        self.segment.plug(ns, "eth0", mac, &switch_port(ns));
        add_address(ns, "eth0", v4, 24);
        add_address(ns, "eth0", v6, 64);
    }

    pub fn sw(&self) -> String {
        format!("{}-sw", self.prefix)
    }
    pub fn client(&self) -> String {
        format!("{}-client", self.prefix)
    }
    pub fn node(&self, i: u8) -> String {
        format!("{}-node{i}", self.prefix)
    }
    pub fn pod(&self, i: u8, j: u8) -> String {
        format!("{}-pod{i}-{j}", self.prefix)
    }
    pub fn node_addr(&self, i: u8, v6: bool) -> IpAddr {
        if v6 {
            Ipv6Addr::new(0xfd00, 0x204, self.k as u16, 0, 0, 0, 0, i as u16).into()
        } else {
            Ipv4Addr::new(10, 204, self.k, i).into()
        }
    }
    /// Client source address number m (0 = its primary address).
    pub fn client_addr(&self, m: u8, v6: bool) -> IpAddr {
        if v6 {
            Ipv6Addr::new(0xfd00, 0x204, self.k as u16, 0, 0, 0, 0, 100 + m as u16).into()
        } else {
            Ipv4Addr::new(10, 204, self.k, 100 + m).into()
        }
    }
    pub fn vip(&self, m: u8, v6: bool) -> IpAddr {
        if v6 {
            Ipv6Addr::new(0xfd00, 0x204, self.k as u16, 0, 0, 0, 0, 200 + m as u16).into()
        } else {
            Ipv4Addr::new(10, 204, self.k, 200 + m).into()
        }
    }
    pub fn pod_addr(&self, i: u8, j: u8, v6: bool) -> IpAddr {
        if v6 {
            Ipv6Addr::new(0xfd00, 0x205, self.k as u16, i as u16, 0, 0, 0, j as u16).into()
        } else {
            Ipv4Addr::new(10, 205, self.k, 16 * i + j).into()
        }
    }

    /// Makes the client send traffic for VIP m to node `i` (ARP/NDP is another module's job).
    pub fn route_vip_to_node(&self, m: u8, i: u8) {
        self.route_vip_to_mac(m, &node_mac(self.k, i));
    }

    /// A MAC address no lab host has: frames to it are flooded by the switch.
    pub fn unknown_mac(&self) -> String {
        node_mac(self.k, 0x99)
    }

    /// Makes the client send traffic for VIP m to the Ethernet address `mac`.
    pub fn route_vip_to_mac(&self, m: u8, mac: &str) {
        for v6 in [false, true] {
            let vip = self.vip(m, v6).to_string();
            run(
                "ip",
                &[
                    "-n",
                    &self.client(),
                    "neigh",
                    "replace",
                    &vip,
                    "lladdr",
                    mac,
                    "dev",
                    "eth0",
                    "nud",
                    "permanent",
                ],
            );
        }
    }

    /// Makes the client reach node `pods_of`'s pod addresses (IPv4) through node `via`.
    pub fn route_pods_via(&self, pods_of: u8, via: u8) {
        run(
            "ip",
            &[
                "-n",
                &self.client(),
                "route",
                "add",
                &format!("{}/28", self.pod_addr(pods_of, 0, false)),
                "via",
                &self.node_addr(via, false).to_string(),
            ],
        );
    }

    /// Pulls node `i`'s cable: its uplink goes down, so nothing reaches it or leaves it.
    pub fn cut_uplink(&self, i: u8) {
        run("ip", &["-n", &self.node(i), "link", "set", "eth0", "down"]);
    }

    /// Pulls node `i`'s cable at the switch (`connected: false`) or plugs it back in.
    pub fn set_cable(&self, i: u8, connected: bool) {
        self.segment.set_cable(&switch_port(&self.node(i)), connected);
    }

    /// A backend namespace behind node `i` with addresses pod_addr(i, j).
    pub fn add_pod(&mut self, i: u8, j: u8) -> String {
        let pod = self.add_ns(&format!("pod{i}-{j}"));
        let node = self.node(i);
        let veth = format!("vp{j}");
        run(
            "ip",
            &[
                "-n", &node, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &pod,
            ],
        );
        run("ip", &["-n", &node, "link", "set", &veth, "up"]);
        run("ip", &["-n", &node, "addr", "add", "169.254.1.1/32", "dev", &veth]);
        run("ip", &["-n", &node, "addr", "add", "fe80::1/64", "dev", &veth, "nodad"]);
        run(
            "ip",
            &[
                "-n",
                &node,
                "route",
                "add",
                &format!("{}/32", self.pod_addr(i, j, false)),
                "dev",
                &veth,
            ],
        );
        run(
            "ip",
            &[
                "-n",
                &node,
                "-6",
                "route",
                "add",
                &format!("{}/128", self.pod_addr(i, j, true)),
                "dev",
                &veth,
            ],
        );
        run("ip", &["-n", &pod, "link", "set", "eth0", "up"]);
        add_address(&pod, "eth0", self.pod_addr(i, j, false), 32);
        add_address(&pod, "eth0", self.pod_addr(i, j, true), 128);
        run(
            "ip",
            &[
                "-n",
                &pod,
                "route",
                "add",
                "169.254.1.1",
                "dev",
                "eth0",
                "scope",
                "link",
            ],
        );
        run(
            "ip",
            &[
                "-n",
                &pod,
                "route",
                "add",
                "default",
                "via",
                "169.254.1.1",
                "dev",
                "eth0",
            ],
        );
        run(
            "ip",
            &[
                "-n", &pod, "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0",
            ],
        );
        pod
    }

    /// TCP echo server in pod (i, j) on `port` (both families): answers each line with
    /// "<name> <peer ip>".
    pub fn serve_tcp(&mut self, i: u8, j: u8, port: u16) {
        self.spawn_server(i, j, move |name, stop, ready| {
            let v4 = TcpListener::bind(("0.0.0.0", port)).unwrap();
            let v6 = bind_tcp_v6_only(port);
            v4.set_nonblocking(true).unwrap();
            v6.set_nonblocking(true).unwrap();
            ready();
            while !stop.load(Ordering::Relaxed) {
                let mut idle = true;
                for l in [&v4, &v6] {
                    if let Ok((stream, peer)) = l.accept() {
                        idle = false;
                        let name = name.clone();
                        std::thread::spawn(move || echo_connection(stream, &name, peer));
                    }
                }
                if idle {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
    }

    /// UDP echo server in pod (i, j) on `port` (both families).
    pub fn serve_udp(&mut self, i: u8, j: u8, port: u16) {
        self.spawn_server(i, j, move |name, stop, ready| {
            let v4 = UdpSocket::bind(("0.0.0.0", port)).unwrap();
            let v6 = bind_udp_v6_only(port);
            for s in [&v4, &v6] {
                s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
            }
            ready();
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) {
                for s in [&v4, &v6] {
                    if let Ok((_, peer)) = s.recv_from(&mut buf) {
                        // A lost reply is the client's timeout to report.
                        s.send_to(format!("{name} {}\n", peer.ip()).as_bytes(), peer).ok();
                    }
                }
            }
        });
    }

    /// Runs `serve(name, stop, ready)` on a thread inside pod (i, j)'s namespace, named
    /// `pod<i>-<j>`; returns once it called `ready` (bound), and stops it when the lab drops.
    fn spawn_server(&mut self, i: u8, j: u8, serve: impl FnOnce(String, &AtomicBool, &dyn Fn()) + Send + 'static) {
        let name = format!("pod{i}-{j}");
        let path = format!("/run/netns/{}", self.pod(i, j));
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            enter_netns(&path);
            serve(name, &stop2, &|| ready_tx.send(()).expect("the lab awaits the server"));
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).expect("server ready");
        self.servers.push(Server {
            stop,
            thread: Some(thread),
        });
    }

    /// Where node `i`'s pinned maps go: under this lab's own bpffs.
    pub fn pin_dir(&self, i: u8) -> PathBuf {
        self.bpffs.join(format!("node{i}"))
    }
}

/// Unmounts and removes the bpffs of labs whose test process has exited (their namespaces
/// go with [`Namespaces::new`]).
fn remove_orphaned_bpffs() {
    let orphaned = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix(KIND).and_then(|r| r.strip_prefix('-')) else {
            return false;
        };
        let pid = rest.split('-').next().unwrap_or("");
        !pid.is_empty()
            && pid.chars().all(|c| c.is_ascii_digit())
            && !std::path::Path::new(&format!("/proc/{pid}")).exists()
    };
    let Ok(entries) = std::fs::read_dir("/tmp") else { return };
    for entry in entries.flatten().take(10_000) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if orphaned(&name) && name.ends_with("-bpffs") {
            cleanup(
                format!("unmounting {}", entry.path().display()),
                Command::new("umount").arg(entry.path()).output(),
            );
            cleanup(
                format!("removing {}", entry.path().display()),
                std::fs::remove_dir_all(entry.path()),
            );
        }
    }
}

fn node_mac(k: u8, i: u8) -> String {
    format!("02:04:{k:02x}:00:00:{i:02x}")
}

fn bind_tcp_v6_only(port: u16) -> TcpListener {
    let fd = bind_v6_only(port, libc::SOCK_STREAM);
    // SAFETY: a bound stream socket fd that we own.
    #[allow(unsafe_code)]
    unsafe {
        assert_eq!(libc::listen(std::os::fd::AsRawFd::as_raw_fd(&fd), 1024), 0);
    }
    TcpListener::from(fd)
}

fn bind_udp_v6_only(port: u16) -> UdpSocket {
    UdpSocket::from(bind_v6_only(port, libc::SOCK_DGRAM))
}

/// A socket bound to [::]:port with IPV6_V6ONLY: std's [::] listeners are dual-stack and
/// would collide with the IPv4 listener on the same port.
fn bind_v6_only(port: u16, kind: libc::c_int) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket syscalls on a fresh fd that we own and hand to TcpListener.
    #[allow(unsafe_code)]
    unsafe {
        let fd = libc::socket(libc::AF_INET6, kind | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let one: libc::c_int = 1;
        let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        libc::setsockopt(
            fd,
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            &one as *const _ as *const libc::c_void,
            len,
        );
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const _ as *const libc::c_void,
            len,
        );
        let mut addr: libc::sockaddr_in6 = std::mem::zeroed();
        addr.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        addr.sin6_port = port.to_be();
        let rc = libc::bind(
            fd,
            &addr as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "bind [::]:{port}: {}", std::io::Error::last_os_error());
        std::os::fd::OwnedFd::from_raw_fd(fd)
    }
}

fn echo_connection(stream: TcpStream, name: &str, peer: SocketAddr) {
    if let Err(error) = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_read_timeout(Some(Duration::from_secs(30))))
    {
        eprintln!("echo server: setting up a connection from {peer}: {error}");
        return;
    }
    let mut writer = match stream.try_clone() {
        Ok(w) => w,
        Err(_) => return,
    };
    let reader = BufReader::new(stream);
    for line in reader.lines().take(100_000) {
        if line.is_err() {
            return;
        }
        if writer.write_all(format!("{name} {}\n", peer.ip()).as_bytes()).is_err() {
            return;
        }
    }
}

/// Response of [`serve_http`]'s servers.
pub const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

/// A minimal HTTP server in a pod: each connection gets one response, then the server closes.
pub fn serve_http(lab: &RoutedLab, i: u8, j: u8, port: u16) {
    let path = format!("/run/netns/{}", lab.pod(i, j));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        enter_netns(&path);
        let listener = TcpListener::bind(("0.0.0.0", port)).unwrap();
        let listener = std::sync::Arc::new(listener);
        for _ in 0..2 {
            let l = listener.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                loop {
                    let Ok((mut s, _)) = l.accept() else { continue };
                    // A client that went away is its own failure to report.
                    s.read(&mut buf).and_then(|_| s.write_all(RESPONSE)).ok();
                }
            });
        }
        tx.send(()).unwrap();
        // The accept threads live until the process exits.
        loop {
            std::thread::park();
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).expect("server ready");
}

/// `count` (source, target) pairs for [`load`], the direct baseline of a load-balanced path:
/// source `i % sources.len()`, and a target drawn at random (fixed seed) for each pair, so a
/// client thread's connections spread over the targets independently of the thread, as a load
/// balancer spreads them over its backends. A thread pinned to one target is not a fair
/// baseline: the scheduler keeps it on one CPU with that target's server thread, a locality
/// that connections spread by a load balancer never get (measured in BENCHMARKS.md).
pub fn spread_flows(sources: &[IpAddr], targets: &[SocketAddr], count: usize) -> Vec<(IpAddr, SocketAddr)> {
    (0..count)
        .map(|i| {
            // splitmix64 of the index: uniform, and the same in every run.
            let mut z = (i as u64).wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (sources[i % sources.len()], targets[(z % targets.len() as u64) as usize])
        })
        .collect()
}

pub struct Sample {
    pub conns_per_sec: f64,
    pub p50_us: u32,
    pub p99_us: u32,
    pub errors: usize,
}

/// T threads in the client namespace doing connect/request/close for `secs`; connection k of
/// thread t uses the (source, destination) pair `flows[(t + k * T) % flows.len()]`.
pub fn load(lab: &RoutedLab, flows: &[(IpAddr, SocketAddr)], secs: u64, threads: usize) -> Sample {
    let path = format!("/run/netns/{}", lab.client());
    let deadline = Instant::now() + Duration::from_secs(secs);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let path = path.clone();
            let flows = flows.to_vec();
            std::thread::spawn(move || {
                enter_netns(&path);
                let mut lat = Vec::with_capacity(200_000);
                let mut errors = 0;
                let mut buf = [0u8; 256];
                let mut k = 0;
                while Instant::now() < deadline && lat.len() < 5_000_000 {
                    let (from, to) = flows[(t + k * threads) % flows.len()];
                    k += 1;
                    let t0 = Instant::now();
                    let ok = (|| -> std::io::Result<()> {
                        let fd = tcp_socket_bound(from)?;
                        // Let connect() pick the source port per destination (no bind-time
                        // exhaustion of the port range).
                        let one: libc::c_int = 1;
                        // SAFETY: setsockopt on an fd we own with a c_int option.
                        #[allow(unsafe_code)]
                        unsafe {
                            libc::setsockopt(
                                fd.as_raw_fd(),
                                libc::IPPROTO_IP,
                                libc::IP_BIND_ADDRESS_NO_PORT,
                                &one as *const _ as *const libc::c_void,
                                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                            );
                        }
                        let mut s = connect_timeout(fd, to, Duration::from_secs(2))?;
                        s.set_read_timeout(Some(Duration::from_secs(2)))?;
                        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
                        let mut total = 0;
                        loop {
                            let n = s.read(&mut buf)?;
                            if n == 0 {
                                break;
                            }
                            total += n;
                        }
                        if total < RESPONSE.len() {
                            return Err(std::io::Error::other("short response"));
                        }
                        Ok(())
                    })();
                    match ok {
                        Ok(()) => lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32),
                        Err(e) => {
                            if std::env::var_os("HERALD_BENCH_DEBUG").is_some() {
                                eprintln!("{from} -> {to}: {e}");
                            }
                            errors += 1
                        }
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let start = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (lat, e) = h.join().unwrap();
        all.extend(lat);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64().max(secs as f64);
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Sample {
        conns_per_sec: all.len() as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        errors,
    }
}

/// A persistent client connection (opened from the client namespace).
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    /// Sends a line and returns the answer "<backend name> <peer the backend saw>".
    pub fn ask(&mut self) -> std::io::Result<String> {
        self.ask_with(0)
    }

    /// [`Conn::ask`] with a request line of `padding` more bytes (many full-sized segments).
    pub fn ask_with(&mut self, padding: usize) -> std::io::Result<String> {
        let mut request = vec![b'x'; padding];
        request.extend_from_slice(b"?\n");
        self.writer.write_all(&request)?;
        let mut line = String::new();
        let n = self.reader.read_line(&mut line)?;
        if n == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed"));
        }
        Ok(line.trim().to_owned())
    }
}

/// Opens a TCP connection from the client namespace (bound to `from`) to `to`.
pub fn connect(ns: &str, from: IpAddr, to: SocketAddr) -> std::io::Result<Conn> {
    let ns = ns.to_owned();
    in_netns(&ns, move || {
        let socket = tcp_socket_bound(from)?;
        let stream = connect_timeout(socket, to, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        Ok(Conn {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    })
}

/// One request on a fresh connection: the backend's answer.
pub fn ask_once(ns: &str, from: IpAddr, to: SocketAddr) -> std::io::Result<String> {
    connect(ns, from, to)?.ask()
}

/// One question from the fixed address and port `from`, giving up the connect after
/// `timeout`; the connection ends with a reset, so the port is free again at once (no
/// TIME_WAIT) and the dataplane sees the flow close.
pub fn ask_from_port(ns: &str, from: SocketAddr, to: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    let ns = ns.to_owned();
    in_netns(&ns, move || {
        let socket = tcp_socket_bound_to(from)?;
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setsockopt on an fd we own, with a correctly sized option value.
        #[allow(unsafe_code)]
        unsafe {
            use std::os::fd::AsRawFd;
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
        let stream = connect_timeout(socket, to, timeout)?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut conn = Conn {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        };
        conn.ask()
    })
}

/// One UDP datagram from the client namespace; returns (answer, the address it came from).
pub fn ask_udp(ns: &str, from: SocketAddr, to: SocketAddr) -> std::io::Result<(String, SocketAddr)> {
    let ns = ns.to_owned();
    in_netns(&ns, move || {
        let s = UdpSocket::bind(from)?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.send_to(b"?", to)?;
        let mut buf = [0u8; 512];
        let (n, peer) = s.recv_from(&mut buf)?;
        Ok((String::from_utf8_lossy(&buf[..n]).trim().to_owned(), peer))
    })
}

/// A TCP socket bound to `addr` (port 0), so the caller picks its source address.
pub fn tcp_socket_bound(addr: IpAddr) -> std::io::Result<std::os::fd::OwnedFd> {
    tcp_socket_bound_to(SocketAddr::new(addr, 0))
}

/// A TCP socket bound to `sa` (a fixed port: the same flow tuple again and again).
pub fn tcp_socket_bound_to(sa: SocketAddr) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let addr = sa.ip();
    // SAFETY: plain socket syscalls on a fresh fd that we own.
    #[allow(unsafe_code)]
    unsafe {
        let family = if addr.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
        let fd = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let (storage, len) = sockaddr(&sa);
        if libc::bind(fd, &storage as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(owned)
    }
}

fn sockaddr(sa: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; we fill the variant matching the family.
    #[allow(unsafe_code)]
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        match sa {
            SocketAddr::V4(v4) => {
                let p = &mut storage as *mut _ as *mut libc::sockaddr_in;
                (*p).sin_family = libc::AF_INET as libc::sa_family_t;
                (*p).sin_port = v4.port().to_be();
                (*p).sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
                (storage, std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t)
            }
            SocketAddr::V6(v6) => {
                let p = &mut storage as *mut _ as *mut libc::sockaddr_in6;
                (*p).sin6_family = libc::AF_INET6 as libc::sa_family_t;
                (*p).sin6_port = v6.port().to_be();
                (*p).sin6_addr.s6_addr = v6.ip().octets();
                (storage, std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t)
            }
        }
    }
}

/// Connects a bound socket with a timeout (blocking connect under SO_SNDTIMEO).
pub fn connect_timeout(fd: std::os::fd::OwnedFd, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    use std::os::fd::{AsRawFd, IntoRawFd};
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    let (storage, len) = sockaddr(&to);
    // SAFETY: plain socket syscalls on an fd we own; ownership passes to TcpStream on success.
    #[allow(unsafe_code)]
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        if libc::connect(fd.as_raw_fd(), &storage as *const _ as *const libc::sockaddr, len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        use std::os::fd::FromRawFd;
        Ok(TcpStream::from_raw_fd(fd.into_raw_fd()))
    }
}

/// Retries `f` until it returns Some, at most `tries` times over at most `limit`.
pub fn eventually<T>(tries: usize, limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    for _ in 0..tries {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > limit {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_flows_give_every_thread_every_target_about_equally() {
        let sources: Vec<IpAddr> = (1..=2).map(|i| IpAddr::V4(Ipv4Addr::new(10, 0, 0, i))).collect();
        let targets: Vec<SocketAddr> = (1..=2)
            .map(|i| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, 0, i)), 80))
            .collect();
        let flows = spread_flows(&sources, &targets, 1024);
        assert_eq!(flows, spread_flows(&sources, &targets, 1024), "the same in every run");
        for (i, (source, _)) in flows.iter().enumerate() {
            assert_eq!(*source, sources[i % 2]);
        }
        // Thread t of T uses flows t, t + T, ... (see `load`): with 2 and 4 threads, each
        // thread sends 40-60 % of its connections to each target, and its next connection
        // keeps its target about as often as it changes it (spread, not alternated).
        for threads in [2, 4] {
            for t in 0..threads {
                let mine: Vec<SocketAddr> = flows.iter().skip(t).step_by(threads).map(|(_, to)| *to).collect();
                let first = mine.iter().filter(|to| **to == targets[0]).count();
                assert!(
                    (40..=60).contains(&(first * 100 / mine.len())),
                    "thread {t} of {threads}: {first} of {}",
                    mine.len()
                );
                let changes = mine.windows(2).filter(|w| w[0] != w[1]).count();
                assert!(
                    (40..=60).contains(&(changes * 100 / mine.len())),
                    "thread {t} of {threads}: {changes} changes"
                );
            }
        }
    }
}

//! The running announcer: a thread that follows the published links and opens or closes a
//! reader per link, one reader thread per link that answers requests (pnet is blocking, so a
//! thread per link keeps the receive path short), and a scheduler thread for gratuitous
//! announcements.
//!
//! Lock order: `control` before `senders` or `owned`; readers and the scheduler never hold
//! two of these at once, so they cannot deadlock with the control path.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch};

use super::frame::MacAddr;
use super::io::{FrameSink, FrameSource, LinkOpener, MulticastMembership};
use super::metrics::IpCounters;
use super::priority::set_current_thread_nice;
use super::responder::{Verdict, respond};
use super::{
    AnnounceSchedule, AnnounceTarget, AnnouncerConfig, AnnouncerError, AnnouncerMetrics, AnnouncerStatus, Backends,
    arp, ndp,
};
use crate::links::{InterfacePolicy, LinkInfo, Links, interfaces_for_ip};

/// Waits for `thread` to end; a panic in it is logged (it has stopped answering or announcing).
fn join_logging_panic(thread: JoinHandle<()>) {
    let name = thread.thread().name().unwrap_or("announcer").to_string();
    if thread.join().is_err() {
        tracing::error!(thread = %name, "an announcer thread had panicked");
    }
}

/// How often links that failed to open are tried again.
const REOPEN_INTERVAL: Duration = Duration::from_secs(5);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

type SharedSink = Arc<Mutex<Box<dyn FrameSink>>>;

/// The send side of an open link, shared by its reader and the scheduler.
#[derive(Clone)]
struct LinkSender {
    mac: MacAddr,
    sink: SharedSink,
}

/// Handle on the layer-2 announcer. Dropping it shuts it down.
pub struct Announcer {
    shared: Arc<Shared>,
    /// Dropped to stop the links thread.
    links_stop: Mutex<Option<oneshot::Sender<()>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    usable: watch::Receiver<Vec<String>>,
}

struct Shared {
    policy: InterfacePolicy,
    schedule: AnnounceSchedule,
    read_timeout: Duration,
    reader_nice: Option<i32>,
    metrics: AnnouncerMetrics,
    opener: Arc<dyn LinkOpener>,
    stopping: AtomicBool,
    /// IP → interfaces it is announced on; read by every reader for every request.
    owned: RwLock<HashMap<IpAddr, OwnedIp>>,
    senders: RwLock<HashMap<String, LinkSender>>,
    control: Mutex<Control>,
    usable_tx: watch::Sender<Vec<String>>,
    /// IP → the links it is answered on: what the readers' table holds, for the status writer.
    answered_tx: watch::Sender<BTreeMap<IpAddr, Vec<String>>>,
}

/// An owned IP as the readers see it.
struct OwnedIp {
    /// Links it is announced on.
    interfaces: Vec<String>,
    /// Its counters, looked up once here so the receive path does not format label values.
    counters: IpCounters,
}

/// State changed only by `set_owned` and the links thread.
struct Control {
    targets: BTreeMap<IpAddr, AnnounceTarget>,
    links: Links,
    open: BTreeMap<String, OpenLink>,
    retired_readers: Vec<JoinHandle<()>>,
    link_errors: BTreeMap<String, String>,
    last_reopen: Instant,
    multicast: Box<dyn MulticastMembership>,
    joined: BTreeSet<(u32, Ipv6Addr)>,
    commands: mpsc::Sender<Command>,
}

struct OpenLink {
    info: LinkInfo,
    stop: Arc<AtomicBool>,
    alive: Arc<AtomicBool>,
    reader: JoinHandle<()>,
}

enum Command {
    /// Start (or restart) the announcement schedule of an IP.
    Announce(IpAddr),
    Stop,
}

impl Control {
    /// Starts `ip`'s gratuitous announcements; if the scheduler thread is gone (it panicked),
    /// says so: the IP is answered but the network is not told it moved.
    fn announce(&self, ip: IpAddr) {
        if self.commands.send(Command::Announce(ip)).is_err() {
            tracing::error!(%ip, "the announcement scheduler has stopped: no gratuitous ARP/NA sent");
        }
    }
}

impl Announcer {
    /// Starts the announcer on the host's real links (needs CAP_NET_RAW), following `links`
    /// (a [`crate::links::LinkWatch`]'s).
    pub fn start(config: AnnouncerConfig, links: watch::Receiver<Links>) -> Result<Announcer, AnnouncerError> {
        Announcer::start_with(config, Backends::system(), links)
    }

    /// Starts the announcer on the given side effects (fakes in tests), following `links`.
    ///
    /// The current links are opened before this returns, so [`Announcer::usable_interfaces`]
    /// is meaningful at once. Links that fail to open are reported in
    /// [`AnnouncerStatus::link_errors`] and retried, they do not fail the start.
    pub fn start_with(
        config: AnnouncerConfig,
        backends: Backends,
        mut links: watch::Receiver<Links>,
    ) -> Result<Announcer, AnnouncerError> {
        let current = links.borrow_and_update().clone();
        // The links thread waits for a change or its next check, whichever comes first: a
        // runtime of its own gives it both, whether or not the caller runs one.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(AnnouncerError::Runtime)?;
        let (commands, command_rx) = mpsc::channel();
        let (usable_tx, usable) = watch::channel(Vec::new());
        let shared = Arc::new(Shared {
            policy: config.interfaces,
            schedule: config.schedule,
            read_timeout: config.read_timeout,
            reader_nice: config.reader_nice,
            metrics: config.metrics,
            opener: backends.links,
            stopping: AtomicBool::new(false),
            owned: RwLock::new(HashMap::new()),
            senders: RwLock::new(HashMap::new()),
            control: Mutex::new(Control {
                targets: BTreeMap::new(),
                links: current,
                open: BTreeMap::new(),
                retired_readers: Vec::new(),
                link_errors: BTreeMap::new(),
                last_reopen: Instant::now(),
                multicast: backends.multicast,
                joined: BTreeSet::new(),
                commands,
            }),
            usable_tx,
            answered_tx: watch::Sender::new(BTreeMap::new()),
        });
        shared.reconcile(&mut lock(&shared.control));

        let (links_stop, stop_rx) = oneshot::channel();
        let announcer = Announcer {
            shared: Arc::clone(&shared),
            links_stop: Mutex::new(Some(links_stop)),
            threads: Mutex::new(Vec::new()),
            usable,
        };
        let scheduler_shared = Arc::clone(&shared);
        announcer.spawn("herald-l2-announce", move || {
            run_scheduler(&scheduler_shared, command_rx)
        })?;
        let check_interval = config.check_interval;
        announcer.spawn("herald-l2-links", move || {
            runtime.block_on(follow_links(&shared, links, stop_rx, check_interval));
        })?;
        Ok(announcer)
    }

    fn spawn(&self, name: &str, body: impl FnOnce() + Send + 'static) -> Result<(), AnnouncerError> {
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(body)
            .map_err(|source| AnnouncerError::SpawnThread {
                name: name.to_string(),
                source,
            })?;
        lock(&self.threads).push(handle);
        Ok(())
    }

    /// Replaces the set of owned IPs. Idempotent: IPs that are new (or newly reachable on an
    /// interface) get an announcement burst; IPs no longer present stop being answered
    /// before this returns.
    pub fn set_owned(&self, owned: BTreeMap<IpAddr, AnnounceTarget>) {
        let mut control = lock(&self.shared.control);
        control.targets = owned;
        self.shared.reconcile(&mut control);
    }

    /// Starts the gratuitous announcement schedule of every owned IP again, as on a gain: for
    /// when the network may have been switched to another node without this one losing its
    /// IPs in its own view (peers declared it dead while it was frozen).
    pub fn announce_again(&self) {
        let control = lock(&self.shared.control);
        for ip in control.targets.keys() {
            control.announce(*ip);
        }
    }

    /// Every owned IP and the links it is answered on (none: its links failed to open or went
    /// away), changed whenever that changes: on `set_owned` and when links come and go.
    pub fn watch_answered(&self) -> watch::Receiver<BTreeMap<IpAddr, Vec<String>>> {
        self.shared.answered_tx.subscribe()
    }

    /// Node-wide announcing interfaces right now; empty means this node cannot announce.
    pub fn usable_interfaces(&self) -> Vec<String> {
        self.usable.borrow().clone()
    }

    /// Interfaces that could announce outside the node-wide selection (see
    /// [`InterfacePolicy::others`]): usable where an advertisement names them.
    pub fn other_interfaces(&self) -> Vec<String> {
        let control = lock(&self.shared.control);
        self.shared
            .policy
            .others(&control.links)
            .iter()
            .map(|l| l.name.clone())
            .collect()
    }

    /// Changes of [`Announcer::usable_interfaces`], for the election's eligibility gossip.
    pub fn watch_usable_interfaces(&self) -> watch::Receiver<Vec<String>> {
        self.usable.clone()
    }

    /// Whether the announcer runs (see [`AnnouncerStatus::ready`]); cheap, unlike
    /// [`Announcer::status`], which lists every owned IP.
    pub fn ready(&self) -> bool {
        !self.shared.stopping.load(Ordering::Relaxed)
    }

    /// Readiness and, per owned IP, the interfaces it is announced on.
    pub fn status(&self) -> AnnouncerStatus {
        let control = lock(&self.shared.control);
        let owned = read(&self.shared.owned);
        AnnouncerStatus {
            ready: self.ready(),
            usable_interfaces: self.usable_interfaces(),
            announced: owned
                .iter()
                .map(|(ip, entry)| (*ip, entry.interfaces.clone()))
                .collect(),
            link_errors: control.link_errors.clone(),
        }
    }

    /// The announcer's counters.
    pub fn metrics(&self) -> &AnnouncerMetrics {
        &self.shared.metrics
    }

    /// Stops answering and announcing, leaves multicast groups and joins every thread.
    /// Idempotent; bounded by the read timeout and the poll interval.
    pub fn shutdown(&self) {
        if self.shared.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        write(&self.shared.owned).clear();
        // The scheduler may have ended already (it stops on its own when the channel closes).
        drop(lock(&self.shared.control).commands.send(Command::Stop));
        lock(&self.links_stop).take();
        for thread in lock(&self.threads).drain(..) {
            join_logging_panic(thread);
        }
        let mut control = lock(&self.shared.control);
        let readers: Vec<JoinHandle<()>> = std::mem::take(&mut control.open)
            .into_values()
            .map(|link| {
                link.stop.store(true, Ordering::SeqCst);
                link.reader
            })
            .chain(std::mem::take(&mut control.retired_readers))
            .collect();
        write(&self.shared.senders).clear();
        for (index, group) in std::mem::take(&mut control.joined) {
            if let Err(error) = control.multicast.leave(index, group) {
                tracing::debug!(%error, %group, "leaving a multicast group at shutdown");
            }
        }
        drop(control);
        for reader in readers {
            join_logging_panic(reader);
        }
        self.shared.usable_tx.send_replace(Vec::new());
        self.shared.answered_tx.send_replace(BTreeMap::new());
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Shared {
    /// The counters of `ip` if it is announced on `link` right now.
    fn owned_on(&self, ip: IpAddr, link: &str) -> Option<IpCounters> {
        read(&self.owned)
            .get(&ip)
            .filter(|entry| entry.interfaces.iter().any(|name| name == link))
            .map(|entry| entry.counters.clone())
    }

    /// Brings open links, the owned table, multicast groups and the usable list in line with
    /// `control.links` and `control.targets`; schedules announcements for what was gained.
    fn reconcile(self: &Arc<Self>, control: &mut Control) {
        if self.stopping.load(Ordering::SeqCst) {
            return;
        }
        let links = control.links.clone();
        let usable = self.policy.usable(&links);
        let mut wanted: BTreeMap<IpAddr, Vec<String>> = control
            .targets
            .iter()
            .map(|(ip, target)| {
                let only = target.interfaces.as_deref();
                (*ip, interfaces_for_ip(&links, &usable, only))
            })
            .collect();
        let mut needed: BTreeMap<&str, &LinkInfo> = usable.iter().map(|link| (link.name.as_str(), *link)).collect();
        for name in wanted.values().flatten() {
            if let Some(link) = links.iter().find(|link| link.name == *name) {
                needed.insert(link.name.as_str(), link);
            }
        }

        let stale: Vec<String> = control
            .open
            .iter()
            .filter(|(name, open)| match needed.get(name.as_str()) {
                None => true,
                Some(link) => {
                    link.index != open.info.index || link.mac != open.info.mac || !open.alive.load(Ordering::SeqCst)
                }
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in &stale {
            self.close_link(control, name);
        }
        control.link_errors.retain(|name, _| needed.contains_key(name.as_str()));
        let mut reopened = BTreeSet::new();
        for (name, link) in &needed {
            if control.open.contains_key(*name) {
                continue;
            }
            match self.open_link(link) {
                Ok(open) => {
                    tracing::info!(interface = %name, "announcing on interface");
                    control.open.insert(name.to_string(), open);
                    control.link_errors.remove(*name);
                    reopened.insert(name.to_string());
                }
                Err(error) => {
                    let error = error.to_string();
                    if control.link_errors.get(*name) != Some(&error) {
                        tracing::warn!(interface = %name, %error, "cannot open interface");
                    }
                    control.link_errors.insert(name.to_string(), error);
                }
            }
        }
        control.last_reopen = Instant::now();
        for interfaces in wanted.values_mut() {
            interfaces.retain(|name| control.open.contains_key(name));
        }

        // Built under the read lock (only this function, under `control`, writes the table),
        // swapped in under a short write lock: readers are not held up while 10,000 entries
        // are built, and a lost IP stops being answered at the swap.
        let (gained, table): (Vec<IpAddr>, HashMap<IpAddr, OwnedIp>) = {
            let owned = read(&self.owned);
            let gained = wanted
                .iter()
                .filter(|(ip, interfaces)| {
                    let before = owned.get(ip);
                    interfaces
                        .iter()
                        .any(|name| reopened.contains(name) || before.is_none_or(|old| !old.interfaces.contains(name)))
                })
                .map(|(ip, _)| *ip)
                .collect();
            let table = wanted
                .iter()
                .map(|(ip, interfaces)| {
                    let counters = match owned.get(ip) {
                        Some(entry) => entry.counters.clone(),
                        None => self.metrics.counters_for(*ip),
                    };
                    let interfaces = interfaces.clone();
                    (*ip, OwnedIp { interfaces, counters })
                })
                .collect();
            (gained, table)
        };
        let announced = |table: &HashMap<IpAddr, OwnedIp>| -> HashSet<IpAddr> {
            table
                .iter()
                .filter(|(_, entry)| !entry.interfaces.is_empty())
                .map(|(ip, _)| *ip)
                .collect()
        };
        let now = announced(&table);
        let previous = std::mem::replace(&mut *write(&self.owned), table);
        let before = announced(&previous);
        drop(previous);
        for ip in before.difference(&now) {
            self.metrics.set_announced(*ip, false);
        }
        for ip in now.difference(&before) {
            self.metrics.set_announced(*ip, true);
        }
        self.sync_multicast(control, &wanted);
        for ip in gained {
            control.announce(ip);
        }
        self.answered_tx.send_if_modified(|current| {
            let changed = *current != wanted;
            if changed {
                *current = wanted;
            }
            changed
        });
        let usable_names: Vec<String> = usable
            .iter()
            .filter(|link| control.open.contains_key(&link.name))
            .map(|link| link.name.clone())
            .collect();
        self.usable_tx.send_if_modified(|current| {
            let changed = *current != usable_names;
            if changed {
                tracing::info!(interfaces = ?usable_names, "usable interfaces changed");
                *current = usable_names;
            }
            changed
        });
        control.retired_readers.retain(|reader| !reader.is_finished());
    }

    fn open_link(self: &Arc<Self>, link: &LinkInfo) -> std::io::Result<OpenLink> {
        let mac = link
            .mac
            .ok_or_else(|| std::io::Error::other("interface has no MAC address"))?;
        let (sink, source) = self.opener.open(link, self.read_timeout)?;
        let sink: SharedSink = Arc::new(Mutex::new(sink));
        let stop = Arc::new(AtomicBool::new(false));
        let alive = Arc::new(AtomicBool::new(true));
        let reader = {
            let shared = Arc::clone(self);
            let (name, sink, stop, alive) = (
                link.name.clone(),
                Arc::clone(&sink),
                Arc::clone(&stop),
                Arc::clone(&alive),
            );
            std::thread::Builder::new()
                .name(format!("herald-l2-{}", link.name))
                .spawn(move || {
                    read_link(&shared, &name, mac, source, &sink, &stop);
                    alive.store(false, Ordering::SeqCst);
                })?
        };
        write(&self.senders).insert(link.name.clone(), LinkSender { mac, sink });
        Ok(OpenLink {
            info: link.clone(),
            stop,
            alive,
            reader,
        })
    }

    fn close_link(&self, control: &mut Control, name: &str) {
        write(&self.senders).remove(name);
        if let Some(open) = control.open.remove(name) {
            tracing::info!(interface = %name, "stopped announcing on interface");
            open.stop.store(true, Ordering::SeqCst);
            // Joined later: the reader notices within one read timeout, and the control
            // lock should not wait for it.
            control.retired_readers.push(open.reader);
        }
    }

    /// Joins the solicited-node group of every announced IPv6 address on each of its links,
    /// and leaves the groups no longer needed.
    fn sync_multicast(&self, control: &mut Control, wanted: &BTreeMap<IpAddr, Vec<String>>) {
        let mut desired = BTreeSet::new();
        for (ip, interfaces) in wanted {
            let IpAddr::V6(ip) = ip else { continue };
            for name in interfaces {
                if let Some(open) = control.open.get(name) {
                    desired.insert((open.info.index, ndp::solicited_node_group(*ip)));
                }
            }
        }
        let leaving: Vec<_> = control.joined.difference(&desired).copied().collect();
        for (index, group) in leaving {
            if let Err(error) = control.multicast.leave(index, group) {
                tracing::debug!(%group, index, %error, "leaving multicast group");
            }
            control.joined.remove(&(index, group));
        }
        let joining: Vec<_> = desired.difference(&control.joined).copied().collect();
        for (index, group) in joining {
            match control.multicast.join(index, group) {
                Ok(()) => {
                    control.joined.insert((index, group));
                }
                Err(error) => tracing::warn!(%group, index, %error, "joining multicast group"),
            }
        }
    }

    /// Sends one gratuitous ARP or unsolicited NA for `ip` on each of its links; false if
    /// the IP is no longer owned.
    fn announce_once(&self, ip: IpAddr) -> bool {
        let Some((interfaces, counters)) = read(&self.owned)
            .get(&ip)
            .map(|entry| (entry.interfaces.clone(), entry.counters.clone()))
        else {
            return false;
        };
        for name in interfaces {
            let Some(sender) = read(&self.senders).get(&name).cloned() else {
                continue;
            };
            let frame = match ip {
                IpAddr::V4(ip) => arp::build(&arp::gratuitous(ip, sender.mac)),
                IpAddr::V6(ip) => ndp::build(&ndp::unsolicited_advertisement(ip, sender.mac)),
            };
            match lock(&sender.sink).send(&frame) {
                Ok(()) => {
                    counters.gratuitous_sent.inc();
                }
                Err(error) => tracing::debug!(%ip, interface = %name, %error, "announce failed"),
            }
        }
        true
    }
}

/// Reader of one link: answers requests until told to stop or the link fails.
fn read_link(
    shared: &Shared,
    name: &str,
    mac: MacAddr,
    mut source: Box<dyn FrameSource>,
    sink: &SharedSink,
    stop: &AtomicBool,
) {
    if let Some(nice) = shared.reader_nice
        && let Err(error) = set_current_thread_nice(nice)
    {
        tracing::warn!(interface = %name, nice, %error, "cannot set reader priority");
    }
    while !stop.load(Ordering::Relaxed) && !shared.stopping.load(Ordering::Relaxed) {
        let frame = match source.recv() {
            Ok(Some(frame)) => frame,
            Ok(None) => continue,
            Err(error) => {
                if !stop.load(Ordering::Relaxed) {
                    tracing::warn!(interface = %name, %error, "reading interface failed");
                }
                return;
            }
        };
        // The responder asks at most once per frame; keep that IP's counters from the answer.
        let mut counters = None;
        let verdict = respond(frame, mac, |ip| {
            counters = shared.owned_on(ip, name);
            counters.is_some()
        });
        match verdict {
            Verdict::Answer { ip, frame } => {
                let counters = counters.unwrap_or_else(|| shared.metrics.counters_for(ip));
                counters.requests_received.inc();
                match lock(sink).send(&frame) {
                    Ok(()) => {
                        counters.responses_sent.inc();
                    }
                    Err(error) => tracing::debug!(%ip, interface = %name, %error, "reply failed"),
                }
            }
            Verdict::Ignore => {}
            Verdict::Drop(error) => shared.metrics.dropped(error.reason()),
        }
    }
}

/// Reconciles when the published links change, and every `check_interval` when a reader died
/// or a link that failed to open is due for another try, until `stop` resolves.
async fn follow_links(
    shared: &Arc<Shared>,
    mut links: watch::Receiver<Links>,
    mut stop: oneshot::Receiver<()>,
    check_interval: Duration,
) {
    let mut checks = tokio::time::interval(check_interval);
    checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut following = true;
    loop {
        let published = tokio::select! {
            _ = &mut stop => return,
            changed = links.changed(), if following => match changed {
                Ok(()) => Some(links.borrow_and_update().clone()),
                Err(_) => {
                    tracing::warn!("the link watch has stopped: link changes are no longer followed");
                    following = false;
                    None
                }
            },
            _ = checks.tick() => None,
        };
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let mut control = lock(&shared.control);
        let reader_died = control.open.values().any(|open| !open.alive.load(Ordering::SeqCst));
        let retry_due = !control.link_errors.is_empty() && control.last_reopen.elapsed() >= REOPEN_INTERVAL;
        let changed = published.is_some_and(|published| {
            let changed = published != control.links;
            control.links = published;
            changed
        });
        if changed || reader_died || retry_due {
            shared.reconcile(&mut control);
        }
    }
}

/// Due announcement: (when, generation of the IP's schedule, IP, step in the schedule).
type Due = Reverse<(Instant, u64, IpAddr, usize)>;

/// Sends gratuitous announcements following the schedule from each IP's (latest) gain.
fn run_scheduler(shared: &Shared, commands: mpsc::Receiver<Command>) {
    let mut queue: BinaryHeap<Due> = BinaryHeap::new();
    // IP → (generation, gained at); a newer gain replaces the older schedule.
    let mut schedules: HashMap<IpAddr, (u64, Instant)> = HashMap::new();
    let mut generation = 0u64;
    loop {
        let wait = queue
            .peek()
            .map(|Reverse((due, ..))| due.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(1));
        let mut next = commands.recv_timeout(wait);
        loop {
            match next {
                Ok(Command::Announce(ip)) => {
                    generation += 1;
                    let now = Instant::now();
                    schedules.insert(ip, (generation, now));
                    if let Some(offset) = shared.schedule.offset(0) {
                        queue.push(Reverse((now + offset, generation, ip, 0)));
                    }
                }
                Ok(Command::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => break,
            }
            next = match commands.try_recv() {
                Ok(command) => Ok(command),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => Err(RecvTimeoutError::Disconnected),
            };
        }
        let now = Instant::now();
        while let Some(Reverse((due, entry_generation, ip, step))) = queue.peek().copied() {
            if due > now {
                break;
            }
            queue.pop();
            let Some((current, gained_at)) = schedules.get(&ip).copied() else {
                continue;
            };
            if current != entry_generation {
                continue;
            }
            if !shared.announce_once(ip) {
                schedules.remove(&ip);
                continue;
            }
            match shared.schedule.offset(step + 1) {
                Some(offset) => queue.push(Reverse((gained_at + offset, current, ip, step + 1))),
                None => {
                    schedules.remove(&ip);
                }
            }
        }
    }
}

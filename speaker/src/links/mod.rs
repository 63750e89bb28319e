//! The node's network links: one thread lists them ([`LinkWatch`]) and publishes the list on a
//! watch channel whenever it changes; [`select`] says which of them announce. The announcer
//! follows the channel (it opens a reader per link), and through it the node's health and the
//! dataplane's attachments do too.
//!
//! Listing is polling (getifaddrs, so it follows the caller's network namespace): one list per
//! [`POLL_INTERVAL`], whatever the number of consumers.

pub mod select;
mod system;

use std::io;
use std::sync::Arc;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

use crate::announcer::MacAddr;
pub use select::{DEFAULT_EXCLUDED_INTERFACES, InterfacePolicy, interfaces_for_ip};
pub use system::SystemInterfaces;

/// How often [`LinkWatch`] lists the links by default: a cable pulled or a link renamed is
/// noticed within this.
pub const POLL_INTERVAL: Duration = Duration::from_millis(300);

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub name: String,
    pub index: u32,
    pub mac: Option<MacAddr>,
    pub up: bool,
    /// The lower layer is up (carrier); a link that is up without carrier cannot announce.
    pub running: bool,
    pub broadcast: bool,
    pub loopback: bool,
    /// Enslaved to a bond or bridge: frames are handled by the master, announce there.
    pub has_master: bool,
}

impl LinkInfo {
    /// Whether frames can be announced on this link at all.
    pub fn can_announce(&self) -> bool {
        self.up && self.running && self.broadcast && !self.loopback && self.mac.is_some_and(|mac| mac != MacAddr::ZERO)
    }
}

/// The links as last listed; shared, since every consumer reads the same list.
pub type Links = Arc<[LinkInfo]>;

/// Lists the host's network interfaces (a side effect behind a trait, so tests list their own).
pub trait InterfaceSource: Send + Sync {
    fn links(&self) -> io::Result<Vec<LinkInfo>>;
}

/// Errors of [`LinkWatch::start`].
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("listing network interfaces")]
    List(#[source] io::Error),
    #[error("starting the link watch thread")]
    Spawn(#[source] io::Error),
}

/// The thread that lists the links every poll interval and publishes them when they change.
/// Dropping it stops the thread; subscribers then keep the last list.
pub struct LinkWatch {
    links: watch::Receiver<Links>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl LinkWatch {
    /// Lists the links once, so the first value subscribers see is real (a failure here is
    /// returned), then every `interval` on a thread of its own.
    pub fn start(source: impl InterfaceSource + 'static, interval: Duration) -> Result<LinkWatch, LinkError> {
        let first: Links = source.links().map_err(LinkError::List)?.into();
        let (links_tx, links) = watch::channel(first);
        let (stop, stop_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("herald-links".into())
            .spawn(move || follow(&source, &links_tx, &stop_rx, interval))
            .map_err(LinkError::Spawn)?;
        Ok(LinkWatch {
            links,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The links now, and every change after.
    pub fn subscribe(&self) -> watch::Receiver<Links> {
        self.links.clone()
    }
}

impl Drop for LinkWatch {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the link watch thread had panicked");
        }
    }
}

/// The watch thread: lists every `interval` until `stop` is dropped; publishes only changes.
/// A failed listing keeps the last list (a link is not taken away for a failed syscall) and is
/// logged once until listing works again.
fn follow(source: &dyn InterfaceSource, links: &watch::Sender<Links>, stop: &mpsc::Receiver<()>, interval: Duration) {
    let mut failing: Option<String> = None;
    loop {
        match stop.recv_timeout(interval) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        match source.links() {
            Ok(listed) => {
                if failing.take().is_some() {
                    tracing::info!("listing network interfaces works again");
                }
                links.send_if_modified(|current| {
                    let changed = **current != *listed;
                    if changed {
                        *current = listed.into();
                    }
                    changed
                });
            }
            Err(error) => {
                let error = error.to_string();
                if failing.as_ref() != Some(&error) {
                    tracing::warn!(%error, "listing network interfaces failed; keeping the last list");
                }
                failing = Some(error);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Instant;

    use super::*;

    /// A list the test sets; `None` makes listing fail.
    #[derive(Clone, Default)]
    struct SetLinks(Arc<Mutex<Option<Vec<LinkInfo>>>>);

    impl InterfaceSource for SetLinks {
        fn links(&self) -> io::Result<Vec<LinkInfo>> {
            self.0
                .lock()
                .unwrap()
                .clone()
                .ok_or_else(|| io::Error::other("listing refused"))
        }
    }

    fn link(name: &str, index: u32) -> LinkInfo {
        LinkInfo {
            name: name.into(),
            index,
            mac: Some(MacAddr([2, 0, 0, 0, 0, 1])),
            up: true,
            running: true,
            broadcast: true,
            loopback: false,
            has_master: false,
        }
    }

    fn names(links: &Links) -> Vec<String> {
        links.iter().map(|l| l.name.clone()).collect()
    }

    #[test]
    fn publishes_the_first_list_at_once_then_only_changes_and_keeps_the_last_on_failure() {
        let source = SetLinks::default();
        *source.0.lock().unwrap() = None;
        assert!(matches!(
            LinkWatch::start(source.clone(), Duration::from_millis(5)),
            Err(LinkError::List(_))
        ));

        *source.0.lock().unwrap() = Some(vec![link("eth0", 2)]);
        let watch = LinkWatch::start(source.clone(), Duration::from_millis(5)).unwrap();
        let mut rx = watch.subscribe();
        assert_eq!(names(&rx.borrow_and_update()), ["eth0"]);

        // Unchanged lists and failed listings publish nothing.
        std::thread::sleep(Duration::from_millis(50));
        *source.0.lock().unwrap() = None;
        std::thread::sleep(Duration::from_millis(50));
        assert!(!rx.has_changed().unwrap(), "nothing changed, nothing published");
        assert_eq!(names(&rx.borrow()), ["eth0"], "a failed listing keeps the last list");

        let mut down = link("eth0", 2);
        down.running = false;
        *source.0.lock().unwrap() = Some(vec![down, link("eth1", 3)]);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !rx.has_changed().unwrap() {
            assert!(Instant::now() < deadline, "the change was not published");
            std::thread::sleep(Duration::from_millis(5));
        }
        let links = rx.borrow_and_update().clone();
        assert_eq!(names(&links), ["eth0", "eth1"]);
        assert!(!links[0].running);

        drop(watch);
        assert!(rx.has_changed().is_err(), "dropping the watch stops it");
    }
}

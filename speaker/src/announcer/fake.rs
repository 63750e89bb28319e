//! In-memory stand-ins for the announcer's side effects, so the responder, the link handling
//! and the announce schedule are tested without root: a network whose links take injected
//! frames and record sent ones, and a multicast membership log. (The links themselves are a
//! watch channel the test sends on.)

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io;
use std::net::Ipv6Addr;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::io::{FrameSink, FrameSource, LinkOpener, MulticastMembership};
use crate::links::LinkInfo;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One frame the announcer sent.
#[derive(Debug, Clone)]
pub struct SentFrame {
    pub link: String,
    pub at: Instant,
    pub frame: Vec<u8>,
}

#[derive(Debug, Default)]
struct NetworkState {
    inboxes: HashMap<String, mpsc::Sender<Vec<u8>>>,
    sent: Vec<SentFrame>,
    refuse_open: HashSet<String>,
}

/// Links whose receive side takes frames from [`FakeNetwork::inject`] and whose send side
/// records into [`FakeNetwork::sent`].
#[derive(Debug, Clone, Default)]
pub struct FakeNetwork {
    state: Arc<Mutex<NetworkState>>,
}

impl FakeNetwork {
    /// Delivers `frame` to the announcer on `link`; false if the link is not open.
    pub fn inject(&self, link: &str, frame: Vec<u8>) -> bool {
        let state = lock(&self.state);
        state.inboxes.get(link).is_some_and(|inbox| inbox.send(frame).is_ok())
    }

    /// Every frame sent so far.
    pub fn sent(&self) -> Vec<SentFrame> {
        lock(&self.state).sent.clone()
    }

    /// Frames sent so far, forgetting them.
    pub fn take_sent(&self) -> Vec<SentFrame> {
        std::mem::take(&mut lock(&self.state).sent)
    }

    /// Waits (bounded by `timeout`) until at least `count` frames were sent; returns them.
    pub fn wait_for_sent(&self, count: usize, timeout: Duration) -> Vec<SentFrame> {
        let deadline = Instant::now() + timeout;
        loop {
            let sent = self.sent();
            if sent.len() >= count || Instant::now() >= deadline {
                return sent;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Makes opening `link` fail, as a missing CAP_NET_RAW would.
    pub fn refuse_open(&self, link: &str) {
        lock(&self.state).refuse_open.insert(link.to_string());
    }
}

impl LinkOpener for FakeNetwork {
    fn open(&self, link: &LinkInfo, read_timeout: Duration) -> io::Result<(Box<dyn FrameSink>, Box<dyn FrameSource>)> {
        let mut state = lock(&self.state);
        if state.refuse_open.contains(&link.name) {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "fake: open refused"));
        }
        let (inbox, receiver) = mpsc::channel();
        state.inboxes.insert(link.name.clone(), inbox);
        Ok((
            Box::new(FakeSink {
                link: link.name.clone(),
                state: Arc::clone(&self.state),
            }),
            Box::new(FakeSource {
                receiver,
                read_timeout,
                current: Vec::new(),
            }),
        ))
    }
}

struct FakeSink {
    link: String,
    state: Arc<Mutex<NetworkState>>,
}

impl FrameSink for FakeSink {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        lock(&self.state).sent.push(SentFrame {
            link: self.link.clone(),
            at: Instant::now(),
            frame: frame.to_vec(),
        });
        Ok(())
    }
}

struct FakeSource {
    receiver: mpsc::Receiver<Vec<u8>>,
    read_timeout: Duration,
    current: Vec<u8>,
}

impl FrameSource for FakeSource {
    fn recv(&mut self) -> io::Result<Option<&[u8]>> {
        match self.receiver.recv_timeout(self.read_timeout) {
            Ok(frame) => {
                self.current = frame;
                Ok(Some(&self.current))
            }
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(io::Error::other("fake link closed")),
        }
    }
}

/// Records the multicast groups currently joined.
#[derive(Debug, Clone, Default)]
pub struct FakeMulticast {
    joined: Arc<Mutex<BTreeSet<(u32, Ipv6Addr)>>>,
}

impl FakeMulticast {
    pub fn joined(&self) -> BTreeSet<(u32, Ipv6Addr)> {
        lock(&self.joined).clone()
    }
}

impl MulticastMembership for FakeMulticast {
    fn join(&mut self, interface_index: u32, group: Ipv6Addr) -> io::Result<()> {
        lock(&self.joined).insert((interface_index, group));
        Ok(())
    }

    fn leave(&mut self, interface_index: u32, group: Ipv6Addr) -> io::Result<()> {
        lock(&self.joined).remove(&(interface_index, group));
        Ok(())
    }
}

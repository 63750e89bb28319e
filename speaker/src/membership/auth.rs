//! Message authentication: HMAC-SHA256 envelopes under the speakers' shared key, and
//! rejection of replayed or misdirected messages. Nothing here depends on clocks agreeing.
//!
//! A receiver checks, in order, before anything in the message is acted on:
//! 1. a MAC over the exact payload bytes (constant-time compare) under one of the keys it holds
//!    ([`KeyRing`]: the current key, a next key during a rotation, the previous key for
//!    [`PREVIOUS_KEY_GRACE`] after one) — a speaker without a key cannot make anyone believe
//!    anything;
//! 2. that the payload decodes, that it does not claim to come from the receiver itself (a
//!    reflected message), and that it is addressed to the receiver (a message from S to R
//!    cannot be replayed to T). Speakers older than the `receiver` field leave it empty, and an
//!    empty one is accepted so that a rolling upgrade does not split the cluster;
//! 3. `(boot, seq)` is new from that sender. Boots are ordered by the sender's start time: a
//!    message from an earlier boot than the sender's current one is a replay, unless the
//!    current boot has been silent for [`BOOT_SILENCE`] (its node's clock went back across a
//!    restart), so one replayed message from a past boot cannot lock a sender out. Within a
//!    boot, seq rises with every message the sender seals for anyone; the receiver remembers the
//!    last [`REPLAY_WINDOW`] seqs it accepted *from that sender* and rejects a repeat or
//!    anything older, so gRPC calls may arrive out of order, and however many messages the
//!    sender meanwhile sent to others.
//!
//! The sender's wall-clock timestamp is reported, not checked: [`Opened::clock_offset_ms`]
//! feeds a metric and a log line, and a skewed clock changes nothing else.
//!
//! What is left: a receiver that restarted remembers no seqs, so a recorded message from a
//! sender's current boot could be replayed to it once. It only repeats what that sender really
//! said, whose states carry incarnations that newer ones override.
//!
//! The shared key authenticates the group, not the individual: any holder of the key can
//! claim any node name. Kubernetes RBAC on the Secret is the boundary.
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herald_proto::membership::v1::{Envelope, Message};
use hmac::{Hmac, Mac};
use prost::Message as _;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Seqs remembered per sender: a message that arrives after this many later ones from the
/// same sender is rejected as a replay.
pub const REPLAY_WINDOW: usize = 128;
/// Boot ids remembered per sender after it restarted.
const RETIRED_BOOTS: usize = 8;
/// Senders remembered at most; past that the one heard from longest ago is forgotten (a holder
/// of the key could otherwise claim endless names).
pub const MAX_SENDERS: usize = 8192;
/// How long a sender's current boot must have been silent before an earlier-started boot is
/// believed (a node whose clock went back across a restart).
pub const BOOT_SILENCE: Duration = Duration::from_secs(5);
/// How long the key a rotation replaced is still accepted, so that speakers that have not seen
/// the change yet are not cut off.
pub const PREVIOUS_KEY_GRACE: Duration = Duration::from_secs(120);

/// A shared key's bytes. `Debug` does not print them.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(Vec<u8>);

impl SecretKey {
    /// Wraps the key's bytes (e.g. a Kubernetes Secret's data value).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        SecretKey(bytes.into())
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length; this cannot fail.
        <HmacSha256 as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!())
    }

    fn sign(&self, payload: &[u8]) -> Vec<u8> {
        let mut mac = self.mac();
        mac.update(payload);
        mac.finalize().into_bytes().to_vec()
    }

    fn verifies(&self, payload: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.mac();
        mac.update(payload);
        mac.verify_slice(tag).is_ok()
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({} bytes)", self.0.len())
    }
}

/// The keys of the speakers' Secret: `current` signs every message; during a rotation `next`
/// signs it too (a second MAC), and both are accepted. See README, "Rotating the speakers' key".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRing {
    /// The Secret's `secretkey`.
    pub current: SecretKey,
    /// The Secret's `secretkey-next`, while a rotation is under way.
    pub next: Option<SecretKey>,
}

impl KeyRing {
    /// One key, no rotation.
    pub fn single(key: SecretKey) -> Self {
        KeyRing {
            current: key,
            next: None,
        }
    }

    /// How many keys sign each message (1, or 2 during a rotation).
    pub fn signing_keys(&self) -> usize {
        1 + usize::from(self.next.is_some())
    }
}

impl From<SecretKey> for KeyRing {
    fn from(key: SecretKey) -> Self {
        KeyRing::single(key)
    }
}

/// Why a received envelope was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, thiserror::Error)]
pub enum Rejection {
    /// No MAC matches the payload under any key we hold.
    #[error("bad MAC")]
    BadMac,
    /// The payload is not a valid message.
    #[error("malformed message")]
    Malformed,
    /// The message claims to come from the receiver itself.
    #[error("message claims to come from ourselves")]
    FromSelf,
    /// The message is addressed to another node.
    #[error("message addressed to another node")]
    WrongReceiver,
    /// This (boot, seq) or an older one was already accepted from the sender.
    #[error("replayed message")]
    Replay,
}

impl Rejection {
    /// Every reason, for metrics that should show zeros.
    pub const ALL: [Rejection; 5] = [
        Rejection::BadMac,
        Rejection::Malformed,
        Rejection::FromSelf,
        Rejection::WrongReceiver,
        Rejection::Replay,
    ];

    /// Short stable name, for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::BadMac => "bad_mac",
            Rejection::Malformed => "malformed",
            Rejection::FromSelf => "from_self",
            Rejection::WrongReceiver => "wrong_receiver",
            Rejection::Replay => "replay",
        }
    }
}

/// Wraps `message` in an envelope with a MAC under each key of `keys`.
pub fn seal(keys: &KeyRing, message: &Message) -> Envelope {
    let payload = message.encode_to_vec();
    Envelope {
        mac: keys.current.sign(&payload),
        next_mac: keys.next.as_ref().map(|k| k.sign(&payload)).unwrap_or_default(),
        payload,
    }
}

/// Checks that one MAC of `envelope` verifies under one of `keys` and decodes its message.
/// Nothing else is checked.
pub fn open<'a>(
    keys: impl IntoIterator<Item = &'a SecretKey> + Clone,
    envelope: &Envelope,
) -> Result<Message, Rejection> {
    let tags = [&envelope.mac, &envelope.next_mac];
    let verified = tags
        .iter()
        .filter(|tag| !tag.is_empty())
        .any(|tag| keys.clone().into_iter().any(|key| key.verifies(&envelope.payload, tag)));
    if !verified {
        return Err(Rejection::BadMac);
    }
    Message::decode(envelope.payload.as_slice()).map_err(|_| Rejection::Malformed)
}

/// A sender's process start: `id` is random, `started_unix_ms` orders boots of one sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Boot {
    /// Random per process start.
    pub id: u64,
    /// The process's start by its own node's clock (0: a speaker too old to say).
    pub started_unix_ms: i64,
}

impl Boot {
    /// Whether this boot started after `other` (ties broken by id). A boot that does not say
    /// when it started is never "earlier": such a sender's every new boot id is believed.
    fn is_earlier_than(&self, other: &Boot) -> bool {
        self.started_unix_ms != 0
            && other.started_unix_ms != 0
            && (self.started_unix_ms, self.id) < (other.started_unix_ms, other.id)
    }
}

/// Per-sender memory of accepted `(boot, seq)` pairs, bounded to [`MAX_SENDERS`] senders.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    senders: HashMap<String, SenderWindow>,
}

#[derive(Debug)]
struct SenderWindow {
    boot: Boot,
    /// The last [`REPLAY_WINDOW`] seqs accepted from `boot`.
    seen: BTreeSet<u64>,
    retired: VecDeque<u64>,
    last_accepted: Instant,
}

impl SenderWindow {
    fn new(boot: Boot, seq: u64, now: Instant) -> Self {
        SenderWindow {
            boot,
            seen: BTreeSet::from([seq]),
            retired: VecDeque::new(),
            last_accepted: now,
        }
    }
}

impl ReplayGuard {
    /// Accepts `(boot, seq)` from `sender` once; see the module docs for what is a
    /// [`Rejection::Replay`].
    pub fn accept(&mut self, sender: &str, boot: Boot, seq: u64, now: Instant) -> Result<(), Rejection> {
        let Some(window) = self.senders.get_mut(sender) else {
            if self.senders.len() >= MAX_SENDERS
                && let Some(stalest) = self
                    .senders
                    .iter()
                    .min_by_key(|(_, w)| w.last_accepted)
                    .map(|(name, _)| name.clone())
            {
                self.senders.remove(&stalest);
            }
            self.senders
                .insert(sender.to_string(), SenderWindow::new(boot, seq, now));
            return Ok(());
        };
        if boot.id != window.boot.id {
            let silent = now.saturating_duration_since(window.last_accepted) >= BOOT_SILENCE;
            if window.retired.contains(&boot.id) || (boot.is_earlier_than(&window.boot) && !silent) {
                return Err(Rejection::Replay);
            }
            // The sender restarted: forget the old boot's window but never accept it again.
            if window.retired.len() == RETIRED_BOOTS {
                window.retired.pop_front();
            }
            let retired = std::mem::take(&mut window.retired);
            let old = window.boot.id;
            *window = SenderWindow::new(boot, seq, now);
            window.retired = retired;
            window.retired.push_back(old);
            return Ok(());
        }
        let full = window.seen.len() >= REPLAY_WINDOW;
        let below = window.seen.first().is_some_and(|&lowest| seq < lowest);
        if window.seen.contains(&seq) || (full && below) {
            return Err(Rejection::Replay);
        }
        window.seen.insert(seq);
        if window.seen.len() > REPLAY_WINDOW {
            window.seen.pop_first();
        }
        window.last_accepted = now;
        Ok(())
    }

    /// How many senders are remembered.
    pub fn senders(&self) -> usize {
        self.senders.len()
    }
}

/// Milliseconds since the Unix epoch by the system clock.
pub fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A message that passed every check, and what its timestamp says about the sender's clock.
#[derive(Debug)]
pub struct Opened {
    /// The message.
    pub message: Message,
    /// The sender's clock minus ours, in milliseconds (includes the time in flight).
    pub clock_offset_ms: i64,
}

impl Opened {
    /// Whether the sender's clock is off ours by more than `threshold` (counted, logged).
    pub fn clock_off_by_more_than(&self, threshold: Duration) -> bool {
        Duration::from_millis(self.clock_offset_ms.unsigned_abs()) > threshold
    }
}

#[derive(Debug)]
struct Keys {
    ring: KeyRing,
    /// The key a rotation replaced, accepted until the instant.
    previous: Option<(SecretKey, Instant)>,
}

/// One speaker's signing identity and receive-side checks, shared by its client and server.
#[derive(Debug)]
pub struct Authenticator {
    keys: RwLock<Keys>,
    node: String,
    boot: Boot,
    next_seq: AtomicU64,
    guard: Mutex<ReplayGuard>,
}

impl Authenticator {
    /// `boot.id` must be random per process start, `boot.started_unix_ms` the start time.
    pub fn new(keys: KeyRing, node: impl Into<String>, boot: Boot) -> Self {
        Authenticator {
            keys: RwLock::new(Keys {
                ring: keys,
                previous: None,
            }),
            node: node.into(),
            boot,
            next_seq: AtomicU64::new(1),
            guard: Mutex::new(ReplayGuard::default()),
        }
    }

    /// This speaker's boot.
    pub fn boot(&self) -> Boot {
        self.boot
    }

    /// The keys in use now.
    pub fn keys(&self) -> KeyRing {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).ring.clone()
    }

    /// Takes the Secret's keys as they are now. A current key that changes stays accepted for
    /// [`PREVIOUS_KEY_GRACE`]. Returns whether anything changed.
    pub fn set_keys(&self, ring: KeyRing, now: Instant) -> bool {
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        if keys.ring == ring {
            return false;
        }
        if keys.ring.current != ring.current {
            keys.previous = Some((keys.ring.current.clone(), now + PREVIOUS_KEY_GRACE));
        }
        keys.ring = ring;
        true
    }

    /// Stamps `message` with our name and boot, its receiver, the next seq and `now_unix_ms`,
    /// and seals it.
    pub fn seal(&self, mut message: Message, to: &str, now_unix_ms: i64) -> Envelope {
        message.sender = self.node.clone();
        message.receiver = to.to_string();
        message.boot_id = self.boot.id;
        message.boot_started_unix_ms = self.boot.started_unix_ms;
        message.seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        message.sent_at_unix_ms = now_unix_ms;
        seal(&self.keys.read().unwrap_or_else(|e| e.into_inner()).ring, &message)
    }

    /// Runs every check of the module docs; `Ok` only for a message to act on.
    pub fn open(&self, envelope: &Envelope, now: Instant, now_unix_ms: i64) -> Result<Opened, Rejection> {
        let message = {
            let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
            let previous = keys.previous.as_ref().filter(|(_, until)| now < *until).map(|(k, _)| k);
            let held = [Some(&keys.ring.current), keys.ring.next.as_ref(), previous];
            open(held.iter().flatten().copied(), envelope)?
        };
        if message.sender == self.node {
            return Err(Rejection::FromSelf);
        }
        if !message.receiver.is_empty() && message.receiver != self.node {
            return Err(Rejection::WrongReceiver);
        }
        let boot = Boot {
            id: message.boot_id,
            started_unix_ms: message.boot_started_unix_ms,
        };
        // A poisoned lock only means another thread panicked mid-update; the window is still
        // a valid (if conservative) state.
        let mut guard = self.guard.lock().unwrap_or_else(|e| e.into_inner());
        guard.accept(&message.sender, boot, message.seq, now)?;
        Ok(Opened {
            clock_offset_ms: message.sent_at_unix_ms.saturating_sub(now_unix_ms),
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_proto::membership::v1::message::Body;

    const NOW: i64 = 1_800_000_000_000;

    fn ping() -> Message {
        Message {
            body: Some(Body::Ping(Default::default())),
            ..Default::default()
        }
    }

    fn ring(key: &[u8]) -> KeyRing {
        KeyRing::single(SecretKey::new(key))
    }

    fn node(name: &str, keys: KeyRing, started_unix_ms: i64) -> Authenticator {
        let id = u64::from(name.as_bytes()[0]) * 1000 + started_unix_ms.unsigned_abs() % 1000;
        Authenticator::new(keys, name, Boot { id, started_unix_ms })
    }

    fn pair(secret_a: &[u8], secret_b: &[u8]) -> (Authenticator, Authenticator) {
        (node("a", ring(secret_a), NOW - 10), node("b", ring(secret_b), NOW - 20))
    }

    fn accept(to: &Authenticator, envelope: &Envelope) -> Result<Message, Rejection> {
        to.open(envelope, Instant::now(), NOW).map(|o| o.message)
    }

    #[test]
    fn good_mac_is_accepted() {
        let (a, b) = pair(b"s3cret", b"s3cret");
        let message = accept(&b, &a.seal(ping(), "b", NOW)).unwrap();
        assert_eq!(message.sender, "a");
        assert_eq!(message.receiver, "b");
        assert_eq!(message.seq, 1);
        assert_eq!(message.body, ping().body);
    }

    #[test]
    fn wrong_key_is_rejected() {
        let (a, b) = pair(b"s3cret", b"other");
        assert_eq!(accept(&b, &a.seal(ping(), "b", NOW)), Err(Rejection::BadMac));
    }

    #[test]
    fn tampered_payload_or_mac_is_rejected() {
        let (a, b) = pair(b"k", b"k");
        let mut envelope = a.seal(ping(), "b", NOW);
        envelope.payload.push(0);
        assert_eq!(accept(&b, &envelope), Err(Rejection::BadMac));
        let mut envelope = a.seal(ping(), "b", NOW);
        envelope.mac[0] ^= 1;
        assert_eq!(accept(&b, &envelope), Err(Rejection::BadMac));
        let mut envelope = a.seal(ping(), "b", NOW);
        envelope.mac.truncate(16);
        assert_eq!(accept(&b, &envelope), Err(Rejection::BadMac));
        assert_eq!(accept(&b, &Envelope::default()), Err(Rejection::BadMac));
    }

    #[test]
    fn garbage_with_valid_mac_is_malformed() {
        let key = SecretKey::new(b"k".to_vec());
        let payload = vec![0xff, 0xff, 0xff];
        let envelope = Envelope {
            mac: key.sign(&payload),
            payload,
            ..Default::default()
        };
        assert_eq!(open([&key], &envelope), Err(Rejection::Malformed));
    }

    #[test]
    fn replay_is_rejected() {
        let (a, b) = pair(b"k", b"k");
        let first = a.seal(ping(), "b", NOW);
        let second = a.seal(ping(), "b", NOW);
        assert!(accept(&b, &second).is_ok());
        // Out of order within the window is fine once.
        assert!(accept(&b, &first).is_ok());
        assert_eq!(accept(&b, &first), Err(Rejection::Replay));
        assert_eq!(accept(&b, &second), Err(Rejection::Replay));
    }

    #[test]
    fn reflected_message_is_rejected() {
        let (a, _) = pair(b"k", b"k");
        assert_eq!(accept(&a, &a.seal(ping(), "a", NOW)), Err(Rejection::FromSelf));
    }

    #[test]
    fn a_message_for_one_node_cannot_be_replayed_to_another() {
        let (a, b) = pair(b"k", b"k");
        let t = node("t", ring(b"k"), NOW - 30);
        let to_b = a.seal(ping(), "b", NOW);
        assert_eq!(accept(&t, &to_b), Err(Rejection::WrongReceiver));
        assert!(accept(&b, &to_b).is_ok());
        // A speaker from before the receiver field names nobody: accepted (rolling upgrade).
        let mut legacy = ping();
        legacy.sender = "old".into();
        legacy.boot_id = 5;
        legacy.seq = 1;
        assert!(accept(&t, &seal(&ring(b"k"), &legacy)).is_ok());
    }

    #[test]
    fn clocks_an_hour_apart_still_talk_and_the_offset_is_reported() {
        let a = node("a", ring(b"k"), NOW + 3_600_000);
        let b = node("b", ring(b"k"), NOW);
        let opened = b
            .open(&a.seal(ping(), "b", NOW + 3_600_000), Instant::now(), NOW)
            .unwrap();
        assert_eq!(opened.clock_offset_ms, 3_600_000);
        let opened = a
            .open(&b.seal(ping(), "a", NOW), Instant::now(), NOW + 3_600_000)
            .unwrap();
        assert_eq!(opened.clock_offset_ms, -3_600_000);
    }

    #[test]
    fn a_replayed_message_of_an_earlier_boot_does_not_lock_the_sender_out() {
        let b = node("b", ring(b"k"), NOW);
        let first_boot = node("a", ring(b"k"), NOW - 60_000);
        let recorded = first_boot.seal(ping(), "b", NOW - 60_000);
        let second_boot = node("a", ring(b"k"), NOW - 1_000);
        let t0 = Instant::now();
        assert!(b.open(&second_boot.seal(ping(), "b", NOW), t0, NOW).is_ok());
        // The receiver never saw the first boot, and still knows it is the past.
        assert_eq!(b.open(&recorded, t0, NOW).map(|o| o.message), Err(Rejection::Replay));
        assert!(b.open(&second_boot.seal(ping(), "b", NOW), t0, NOW).is_ok());
    }

    #[test]
    fn an_earlier_started_boot_is_believed_once_the_current_one_fell_silent() {
        // A node whose clock went back across a restart.
        let b = node("b", ring(b"k"), NOW);
        let before = node("a", ring(b"k"), NOW);
        let after = node("a", ring(b"k"), NOW - 3_600_000);
        let t0 = Instant::now();
        assert!(b.open(&before.seal(ping(), "b", NOW), t0, NOW).is_ok());
        let early = t0 + BOOT_SILENCE / 2;
        assert_eq!(
            b.open(&after.seal(ping(), "b", NOW), early, NOW).map(|o| o.message),
            Err(Rejection::Replay)
        );
        let late = t0 + BOOT_SILENCE;
        assert!(b.open(&after.seal(ping(), "b", NOW), late, NOW).is_ok());
        // From then on the old boot is retired.
        assert_eq!(
            b.open(&before.seal(ping(), "b", NOW), late, NOW).map(|o| o.message),
            Err(Rejection::Replay)
        );
    }

    #[test]
    fn a_late_reply_is_accepted_however_much_the_sender_said_to_others() {
        let (a, b) = pair(b"k", b"k");
        let late = a.seal(ping(), "b", NOW);
        for _ in 0..1_000 {
            a.seal(ping(), "t", NOW);
        }
        for _ in 0..5 {
            assert!(accept(&b, &a.seal(ping(), "b", NOW)).is_ok());
        }
        assert!(accept(&b, &late).is_ok());
    }

    #[test]
    fn the_window_holds_the_last_accepted_seqs_of_each_sender() {
        let mut guard = ReplayGuard::default();
        let boot = |id| Boot {
            id,
            started_unix_ms: NOW,
        };
        let t = Instant::now();
        for seq in 1..=REPLAY_WINDOW as u64 {
            assert!(guard.accept("a", boot(1), seq * 10, t).is_ok());
        }
        assert!(guard.accept("a", boot(1), 5000, t).is_ok());
        // 10 was pushed out by 5000: it and anything older are replays now; 15 was never seen
        // but is older than everything remembered.
        assert_eq!(guard.accept("a", boot(1), 10, t), Err(Rejection::Replay));
        assert_eq!(guard.accept("a", boot(1), 15, t), Err(Rejection::Replay));
        assert!(guard.accept("a", boot(1), 25, t).is_ok());
        assert_eq!(guard.accept("a", boot(1), 20, t), Err(Rejection::Replay));
        // Other senders are independent.
        assert!(guard.accept("b", boot(1), 1, t).is_ok());
    }

    #[test]
    fn senders_are_bounded_and_the_longest_silent_is_forgotten() {
        let mut guard = ReplayGuard::default();
        let boot = Boot {
            id: 1,
            started_unix_ms: NOW,
        };
        let t0 = Instant::now();
        for i in 0..MAX_SENDERS {
            let at = t0 + Duration::from_millis(u64::try_from(i).unwrap());
            assert!(guard.accept(&format!("n{i}"), boot, 1, at).is_ok());
        }
        let later = t0 + Duration::from_secs(60);
        assert!(guard.accept("newcomer", boot, 1, later).is_ok());
        assert_eq!(guard.senders(), MAX_SENDERS);
        // n0 was forgotten (its window with it); n1 was not.
        assert!(guard.accept("n0", boot, 1, later).is_ok());
        assert_eq!(guard.accept("n2", boot, 1, later), Err(Rejection::Replay));
    }

    #[test]
    fn a_rotation_through_a_next_key_never_leaves_two_speakers_without_a_common_key() {
        let (k1, k2) = (SecretKey::new(b"one".to_vec()), SecretKey::new(b"two".to_vec()));
        let old = KeyRing::single(k1.clone());
        let both = KeyRing {
            current: k1.clone(),
            next: Some(k2.clone()),
        };
        let new = KeyRing::single(k2.clone());
        // Step 1 reaches the speakers one by one, then step 2: at every moment each pair of
        // neighbouring states (old/both, both/new) understands each other.
        for (x, y) in [(&old, &both), (&both, &new)] {
            let a = node("a", x.clone(), NOW - 1);
            let b = node("b", y.clone(), NOW - 2);
            assert!(accept(&b, &a.seal(ping(), "b", NOW)).is_ok(), "{x:?} -> {y:?}");
            assert!(accept(&a, &b.seal(ping(), "a", NOW)).is_ok(), "{y:?} -> {x:?}");
        }
        // Skipping the next key: old and new have none in common.
        let a = node("a", old.clone(), NOW - 1);
        let b = node("b", new.clone(), NOW - 2);
        assert_eq!(accept(&b, &a.seal(ping(), "b", NOW)), Err(Rejection::BadMac));
    }

    #[test]
    fn a_replaced_key_is_accepted_for_a_grace_period() {
        let (a, b) = pair(b"one", b"one");
        let t0 = Instant::now();
        assert!(b.set_keys(ring(b"two"), t0));
        assert!(!b.set_keys(ring(b"two"), t0), "no change");
        assert_eq!(b.keys(), ring(b"two"));
        // a has not seen the change yet.
        assert!(b.open(&a.seal(ping(), "b", NOW), t0, NOW).is_ok());
        let after = t0 + PREVIOUS_KEY_GRACE;
        assert_eq!(
            b.open(&a.seal(ping(), "b", NOW), after, NOW).map(|o| o.message),
            Err(Rejection::BadMac)
        );
    }
}

//! Message authentication: HMAC-SHA256 envelopes under the speakers' shared secret, and
//! rejection of replayed or stale messages.
//!
//! A receiver checks, in order, before anything in the message is acted on:
//! 1. the MAC over the exact payload bytes (constant-time compare) — a speaker with another
//!    secret cannot make anyone believe anything;
//! 2. that the payload decodes, and that it does not claim to come from the receiver itself
//!    (a reflected message);
//! 3. the sender's timestamp is within ±`max_clock_skew` of the receiver's clock;
//! 4. `(boot_id, seq)` was not seen before from that sender: per sender, the current boot id,
//!    the highest seq, and a 128-message window below it (gRPC calls run concurrently and may
//!    arrive out of order). A seq below the window, or a boot id the sender has already
//!    replaced, is a replay. A replay of a message from a boot the receiver never saw is only
//!    possible within the timestamp bound and only repeats something that sender really said.
//!
//! The shared secret authenticates the group, not the individual: any holder of the secret can
//! claim any node name. Kubernetes RBAC on the Secret is the boundary.
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_proto::membership::v1::{Envelope, Message};
use hmac::{Hmac, Mac};
use prost::Message as _;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Width of the per-sender window of recently seen sequence numbers.
const REPLAY_WINDOW: u64 = 128;
/// Boot ids remembered per sender after it restarted.
const RETIRED_BOOTS: usize = 8;

/// The shared secret's bytes. `Debug` does not print them.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(Vec<u8>);

impl SecretKey {
    /// Wraps the secret's bytes (e.g. a Kubernetes Secret's data value).
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        SecretKey(bytes.into())
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC accepts keys of any length; this cannot fail.
        <HmacSha256 as Mac>::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!())
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({} bytes)", self.0.len())
    }
}

/// Why a received envelope was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, thiserror::Error)]
pub enum Rejection {
    /// The MAC does not match the payload under our secret.
    #[error("bad MAC")]
    BadMac,
    /// The payload is not a valid message.
    #[error("malformed message")]
    Malformed,
    /// The message claims to come from the receiver itself.
    #[error("message claims to come from ourselves")]
    FromSelf,
    /// The timestamp is too far from the receiver's clock.
    #[error("timestamp outside the allowed clock skew")]
    StaleTimestamp,
    /// This (boot id, seq) or an older one was already accepted from the sender.
    #[error("replayed message")]
    Replay,
}

impl Rejection {
    /// Short stable name, for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::BadMac => "bad_mac",
            Rejection::Malformed => "malformed",
            Rejection::FromSelf => "from_self",
            Rejection::StaleTimestamp => "stale_timestamp",
            Rejection::Replay => "replay",
        }
    }
}

/// Wraps `message` in an envelope with its MAC.
pub fn seal(key: &SecretKey, message: &Message) -> Envelope {
    let payload = message.encode_to_vec();
    let mut mac = key.mac();
    mac.update(&payload);
    Envelope {
        payload,
        mac: mac.finalize().into_bytes().to_vec(),
    }
}

/// Checks the MAC of `envelope` and decodes its message. Nothing else is checked.
pub fn open(key: &SecretKey, envelope: &Envelope) -> Result<Message, Rejection> {
    let mut mac = key.mac();
    mac.update(&envelope.payload);
    mac.verify_slice(&envelope.mac).map_err(|_| Rejection::BadMac)?;
    Message::decode(envelope.payload.as_slice()).map_err(|_| Rejection::Malformed)
}

/// Whether `sent_at_unix_ms` is within `max_skew` of `now_unix_ms`.
pub fn check_timestamp(sent_at_unix_ms: i64, now_unix_ms: i64, max_skew: Duration) -> Result<(), Rejection> {
    let skew = i64::try_from(max_skew.as_millis()).unwrap_or(i64::MAX);
    if sent_at_unix_ms.abs_diff(now_unix_ms) > skew.unsigned_abs() {
        return Err(Rejection::StaleTimestamp);
    }
    Ok(())
}

/// Per-sender memory of accepted `(boot_id, seq)` pairs.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    senders: HashMap<String, SenderWindow>,
}

#[derive(Debug)]
struct SenderWindow {
    boot_id: u64,
    highest: u64,
    /// Bit i set: `highest - i` was accepted.
    seen: u128,
    retired: VecDeque<u64>,
}

impl ReplayGuard {
    /// Accepts `(boot_id, seq)` from `sender` once; any repeat, any seq below the window, and
    /// any boot id the sender has since replaced is a [`Rejection::Replay`].
    pub fn accept(&mut self, sender: &str, boot_id: u64, seq: u64) -> Result<(), Rejection> {
        let Some(window) = self.senders.get_mut(sender) else {
            self.senders.insert(
                sender.to_string(),
                SenderWindow {
                    boot_id,
                    highest: seq,
                    seen: 1,
                    retired: VecDeque::new(),
                },
            );
            return Ok(());
        };
        if boot_id != window.boot_id {
            if window.retired.contains(&boot_id) {
                return Err(Rejection::Replay);
            }
            // The sender restarted: forget the old boot's window but never accept it again.
            if window.retired.len() == RETIRED_BOOTS {
                window.retired.pop_front();
            }
            window.retired.push_back(window.boot_id);
            window.boot_id = boot_id;
            window.highest = seq;
            window.seen = 1;
            return Ok(());
        }
        if seq > window.highest {
            let shift = seq - window.highest;
            window.seen = if shift >= REPLAY_WINDOW {
                0
            } else {
                window.seen << shift
            };
            window.seen |= 1;
            window.highest = seq;
            return Ok(());
        }
        let age = window.highest - seq;
        if age >= REPLAY_WINDOW || window.seen & (1u128 << age) != 0 {
            return Err(Rejection::Replay);
        }
        window.seen |= 1u128 << age;
        Ok(())
    }
}

/// Milliseconds since the Unix epoch by the system clock.
pub fn unix_ms_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// One speaker's signing identity and receive-side checks, shared by its client and server.
#[derive(Debug)]
pub struct Authenticator {
    key: SecretKey,
    node: String,
    boot_id: u64,
    next_seq: AtomicU64,
    max_skew: Duration,
    guard: Mutex<ReplayGuard>,
}

impl Authenticator {
    /// `boot_id` must be random per process start.
    pub fn new(key: SecretKey, node: impl Into<String>, boot_id: u64, max_skew: Duration) -> Self {
        Authenticator {
            key,
            node: node.into(),
            boot_id,
            next_seq: AtomicU64::new(1),
            max_skew,
            guard: Mutex::new(ReplayGuard::default()),
        }
    }

    /// This speaker's boot id.
    pub fn boot_id(&self) -> u64 {
        self.boot_id
    }

    /// Stamps `message` with our name, boot id, the next seq and `now_unix_ms`, and seals it.
    pub fn seal(&self, mut message: Message, now_unix_ms: i64) -> Envelope {
        message.sender = self.node.clone();
        message.boot_id = self.boot_id;
        message.seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        message.sent_at_unix_ms = now_unix_ms;
        seal(&self.key, &message)
    }

    /// Runs every check of the module docs; `Ok` only for a message to act on.
    pub fn open(&self, envelope: &Envelope, now_unix_ms: i64) -> Result<Message, Rejection> {
        let message = open(&self.key, envelope)?;
        if message.sender == self.node {
            return Err(Rejection::FromSelf);
        }
        check_timestamp(message.sent_at_unix_ms, now_unix_ms, self.max_skew)?;
        // A poisoned lock only means another thread panicked mid-update; the window is still
        // a valid (if conservative) state.
        let mut guard = self.guard.lock().unwrap_or_else(|e| e.into_inner());
        guard.accept(&message.sender, message.boot_id, message.seq)?;
        Ok(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_proto::membership::v1::message::Body;

    const NOW: i64 = 1_800_000_000_000;
    const SKEW: Duration = Duration::from_secs(30);

    fn ping() -> Message {
        Message {
            body: Some(Body::Ping(Default::default())),
            ..Default::default()
        }
    }

    fn pair(secret_a: &[u8], secret_b: &[u8]) -> (Authenticator, Authenticator) {
        (
            Authenticator::new(SecretKey::new(secret_a), "a", 1, SKEW),
            Authenticator::new(SecretKey::new(secret_b), "b", 2, SKEW),
        )
    }

    #[test]
    fn good_mac_is_accepted() {
        let (a, b) = pair(b"s3cret", b"s3cret");
        let message = b.open(&a.seal(ping(), NOW), NOW).unwrap();
        assert_eq!(message.sender, "a");
        assert_eq!(message.seq, 1);
        assert_eq!(message.body, ping().body);
    }

    #[test]
    fn wrong_key_is_rejected() {
        let (a, b) = pair(b"s3cret", b"other");
        assert_eq!(b.open(&a.seal(ping(), NOW), NOW), Err(Rejection::BadMac));
    }

    #[test]
    fn tampered_payload_or_mac_is_rejected() {
        let (a, b) = pair(b"k", b"k");
        let mut envelope = a.seal(ping(), NOW);
        envelope.payload.push(0);
        assert_eq!(b.open(&envelope, NOW), Err(Rejection::BadMac));
        let mut envelope = a.seal(ping(), NOW);
        envelope.mac[0] ^= 1;
        assert_eq!(b.open(&envelope, NOW), Err(Rejection::BadMac));
        let mut envelope = a.seal(ping(), NOW);
        envelope.mac.truncate(16);
        assert_eq!(b.open(&envelope, NOW), Err(Rejection::BadMac));
        assert_eq!(b.open(&Envelope::default(), NOW), Err(Rejection::BadMac));
    }

    #[test]
    fn garbage_with_valid_mac_is_malformed() {
        let key = SecretKey::new(b"k".to_vec());
        let payload = vec![0xff, 0xff, 0xff];
        let mut mac = key.mac();
        mac.update(&payload);
        let envelope = Envelope {
            payload,
            mac: mac.finalize().into_bytes().to_vec(),
        };
        assert_eq!(open(&key, &envelope), Err(Rejection::Malformed));
    }

    #[test]
    fn replay_is_rejected() {
        let (a, b) = pair(b"k", b"k");
        let first = a.seal(ping(), NOW);
        let second = a.seal(ping(), NOW);
        assert!(b.open(&second, NOW).is_ok());
        // Out of order within the window is fine once.
        assert!(b.open(&first, NOW).is_ok());
        assert_eq!(b.open(&first, NOW), Err(Rejection::Replay));
        assert_eq!(b.open(&second, NOW), Err(Rejection::Replay));
    }

    #[test]
    fn reflected_message_is_rejected() {
        let (a, _) = pair(b"k", b"k");
        assert_eq!(a.open(&a.seal(ping(), NOW), NOW), Err(Rejection::FromSelf));
    }

    #[test]
    fn stale_or_future_timestamp_is_rejected() {
        let (a, b) = pair(b"k", b"k");
        let old = a.seal(ping(), NOW - 31_000);
        assert_eq!(b.open(&old, NOW), Err(Rejection::StaleTimestamp));
        let future = a.seal(ping(), NOW + 31_000);
        assert_eq!(b.open(&future, NOW), Err(Rejection::StaleTimestamp));
        assert!(b.open(&a.seal(ping(), NOW - 29_000), NOW).is_ok());
    }

    #[test]
    fn window_slides_and_old_boots_stay_rejected() {
        let mut guard = ReplayGuard::default();
        assert!(guard.accept("a", 1, 1).is_ok());
        assert!(guard.accept("a", 1, 500).is_ok());
        assert_eq!(guard.accept("a", 1, 372), Err(Rejection::Replay));
        assert!(guard.accept("a", 1, 373).is_ok());
        assert_eq!(guard.accept("a", 1, 373), Err(Rejection::Replay));
        // Restart: new boot id starts from seq 1; the old boot is never accepted again.
        assert!(guard.accept("a", 9, 1).is_ok());
        assert_eq!(guard.accept("a", 1, 501), Err(Rejection::Replay));
        assert!(guard.accept("a", 9, 2).is_ok());
        // Other senders are independent.
        assert!(guard.accept("b", 1, 1).is_ok());
    }
}

//! When gratuitous ARP / unsolicited Neighbor Advertisements go out after an IP is gained:
//! a burst at fixed offsets from the gain, then optionally forever at a fixed period.

use std::time::Duration;

/// Offsets from the gain of an IP at which it is announced.
///
/// The default burst (0, 0.5, 1, 2, 4 s) switches Linux neighbour entries in REACHABLE, STALE
/// and DELAY with its first frame; the repeats cover frames lost on the way and clients whose
/// entry is still inside the 1 s ARP `locktime` of an answer from the previous owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceSchedule {
    /// Offsets from the gain, ascending.
    pub burst: Vec<Duration>,
    /// After the burst, re-announce at this period (for switches whose FDB entries age out
    /// when the VIP is quiet). Off by default.
    pub periodic: Option<Duration>,
}

impl Default for AnnounceSchedule {
    fn default() -> Self {
        AnnounceSchedule {
            burst: [0, 500, 1000, 2000, 4000]
                .into_iter()
                .map(Duration::from_millis)
                .collect(),
            periodic: None,
        }
    }
}

impl AnnounceSchedule {
    /// Offset from the gain of announcement number `step` (0-based); `None` once done.
    pub fn offset(&self, step: usize) -> Option<Duration> {
        if let Some(offset) = self.burst.get(step) {
            return Some(*offset);
        }
        let period = self.periodic.filter(|period| !period.is_zero())?;
        let after_burst = u32::try_from(step - self.burst.len() + 1).ok()?;
        let last = self.burst.last().copied().unwrap_or_default();
        last.checked_add(period.checked_mul(after_burst)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn default_is_a_five_frame_burst_without_repeats() {
        let schedule = AnnounceSchedule::default();
        let offsets: Vec<_> = (0..7).map(|step| schedule.offset(step)).collect();
        assert_eq!(
            offsets,
            [
                Some(ms(0)),
                Some(ms(500)),
                Some(ms(1000)),
                Some(ms(2000)),
                Some(ms(4000)),
                None,
                None
            ]
        );
    }

    #[test]
    fn periodic_follows_the_burst() {
        let schedule = AnnounceSchedule {
            burst: vec![ms(0), ms(100)],
            periodic: Some(ms(1000)),
        };
        assert_eq!(schedule.offset(2), Some(ms(1100)));
        assert_eq!(schedule.offset(4), Some(ms(3100)));
        let only_periodic = AnnounceSchedule {
            burst: vec![],
            periodic: Some(ms(30_000)),
        };
        assert_eq!(only_periodic.offset(0), Some(ms(30_000)));
        let zero_period = AnnounceSchedule {
            burst: vec![],
            periodic: Some(Duration::ZERO),
        };
        assert_eq!(zero_period.offset(0), None);
    }
}

//! How a log tailer waits when it found nothing new.
//!
//! On PostgreSQL [`EventStore::read_log`] returns only events of transactions below the
//! snapshot's xmin, so a commit announced while an older transaction (of any database of the
//! cluster) still runs is not returned yet, and its announcement has been spent
//! ([`EventStore::read_log_tail`] says so). A tailer that
//! then waited for the next announcement or its poll would hold that event back for up to the
//! poll interval: [`TailPause`] looks again after a short, growing pause instead.

#[cfg(doc)]
use super::EventStore;
use std::time::Duration;

/// The first pause while events are held back; it doubles on each empty read.
const FIRST: Duration = Duration::from_millis(2);
/// The longest pause while events are held back (a long transaction elsewhere must not make
/// the tailer spin, nor stall it for a whole poll).
const MOST: Duration = Duration::from_millis(50);

/// The pause of one tailer.
#[derive(Debug, Clone)]
pub struct TailPause {
    poll: Duration,
    next: Duration,
}

impl TailPause {
    /// A tailer that otherwise polls every `poll`.
    pub fn new(poll: Duration) -> Self {
        Self { poll, next: FIRST }
    }

    /// The tailer read events: the next held-back pause starts short again.
    pub fn reset(&mut self) {
        self.next = FIRST;
    }

    /// How long to wait (for an announcement, at most) after a read that returned fewer events
    /// than it asked for: short while committed events are `held_back` (as
    /// [`EventStore::read_log_tail`] tells), else the poll interval.
    pub fn after_short_read(&mut self, held_back: bool) -> Duration {
        if held_back {
            let d = self.next.min(self.poll);
            self.next = (self.next * 2).min(MOST);
            d
        } else {
            self.reset();
            self.poll
        }
    }
}

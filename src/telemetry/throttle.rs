//! Rate limits for log lines that a peer can cause at will (a wrong token, a malformed body,
//! an unknown handler) or that repeat while a fault lasts (trace export): at most one line per
//! kind per interval, the next one saying how many were held back. Owned by [`super::Metrics`],
//! so each executor has its own (no global state).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a line is about; each kind has its own budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogKind {
    /// A request with a missing or wrong access token.
    TokenRefused,
    /// A request whose body or target could not be used.
    BadRequest,
    /// A trigger `/run` refused (unknown handler, queue full, ...).
    TriggerRefused,
    /// A run that failed, timed out or was killed.
    RunFailed,
    /// A failed span export.
    TraceExport,
}

impl LogKind {
    const ALL: [LogKind; 5] = [
        LogKind::TokenRefused,
        LogKind::BadRequest,
        LogKind::TriggerRefused,
        LogKind::RunFailed,
        LogKind::TraceExport,
    ];

    fn index(self) -> usize {
        match self {
            Self::TokenRefused => 0,
            Self::BadRequest => 1,
            Self::TriggerRefused => 2,
            Self::RunFailed => 3,
            Self::TraceExport => 4,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Slot {
    last: Option<Instant>,
    suppressed: u64,
}

/// One budget per [`LogKind`].
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    slots: Mutex<[Slot; LogKind::ALL.len()]>,
}

/// The default interval: a line a minute per kind is enough to see that something is wrong,
/// the counters say how much.
pub const EVERY: Duration = Duration::from_secs(60);

impl Throttle {
    /// At most one line per kind per `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            slots: Mutex::new([Slot::default(); LogKind::ALL.len()]),
        }
    }

    /// `Some(n)` when a line of this kind may be written now, `n` being how many were held back
    /// since the last one; `None` when this one is held back.
    pub fn allow(&self, kind: LogKind, now: Instant) -> Option<u64> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut slots[kind.index()];
        let due = slot
            .last
            .is_none_or(|t| now.saturating_duration_since(t) >= self.every);
        if due {
            slot.last = Some(now);
            Some(std::mem::take(&mut slot.suppressed))
        } else {
            slot.suppressed += 1;
            None
        }
    }
}

impl Throttle {
    /// [`Throttle::allow`] now.
    pub fn log_allowed(&self, kind: LogKind) -> Option<u64> {
        self.allow(kind, Instant::now())
    }
}

impl Default for Throttle {
    fn default() -> Self {
        Self::new(EVERY)
    }
}

/// Logs at `$level` when the kind's budget allows (with `held_back`, the number of lines of
/// that kind held back since the last one), else at DEBUG: `RUST_LOG=debug` still shows
/// every line, `info` and `warn` never flood.
///
/// `throttled!(metrics, LogKind::RunFailed, warn, log_id = 7, "Run failed.")`
macro_rules! throttled {
    ($metrics:expr, $kind:expr, $level:ident, $($rest:tt)+) => {{
        match $metrics.log_allowed($kind) {
            Some(held_back) => ::tracing::$level!(held_back, $($rest)+),
            None => ::tracing::debug!($($rest)+),
        }
    }};
}
pub(crate) use throttled;

/// At most `max` characters of `text`: for text a peer or a handler chose, in a log line.
pub fn cut(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_keeps_whole_characters() {
        assert_eq!(cut("héllo", 2), "hé");
        assert_eq!(cut("abc", 10), "abc");
        assert_eq!(cut("", 0), "");
    }

    #[test]
    fn one_line_per_kind_per_interval_then_the_count_of_held_back_ones() {
        let t = Throttle::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(t.allow(LogKind::TokenRefused, t0), Some(0));
        for i in 1..=5 {
            assert_eq!(
                t.allow(LogKind::TokenRefused, t0 + Duration::from_secs(i)),
                None
            );
        }
        // Another kind has its own budget.
        assert_eq!(t.allow(LogKind::BadRequest, t0), Some(0));
        assert_eq!(
            t.allow(LogKind::TokenRefused, t0 + Duration::from_secs(60)),
            Some(5)
        );
        assert_eq!(
            t.allow(LogKind::TokenRefused, t0 + Duration::from_secs(61)),
            None
        );
        assert_eq!(
            t.allow(LogKind::TokenRefused, t0 + Duration::from_secs(200)),
            Some(1)
        );
    }
}

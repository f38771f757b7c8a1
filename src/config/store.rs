//! `[store]`: the sled store's cache, durability mode and budgets.

use std::time::Duration;

use serde::Deserialize;

use super::check::Check;

/// `[store]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    cache_bytes: Option<i64>,
    /// 0 (default) means every acknowledgement is flushed first.
    flush_every_ms: Option<i64>,
    max_bytes: Option<i64>,
    min_free_bytes: Option<i64>,
    max_log_bytes_per_run: Option<i64>,
    log_flush_ms: Option<i64>,
    flush_stall_secs: Option<i64>,
}

/// Store settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// sled's page cache.
    pub cache_bytes: u64,
    /// `None`: every acknowledgement waits for a (shared) flush. `Some(d)`: flush every `d`.
    pub flush_every: Option<Duration>,
    /// Budget for the store on disk; finished, reported runs are pruned beyond it.
    pub max_bytes: u64,
    /// `/run` is refused when the data directory's file system has less free space.
    pub min_free_bytes: u64,
    /// Log bytes kept per run; later lines are dropped with one marker line.
    pub max_log_bytes_per_run: u64,
    /// A run's output is on disk at most this long after it was written (a crash keeps it).
    pub log_flush_every: Duration,
    /// A flush still under way after this long is a storage fault (the executor exits 75).
    pub flush_stall: Duration,
}

impl Raw {
    pub(super) fn convert(self, c: &mut Check) -> StoreConfig {
        let flush_ms = c.int("store.flush_every_ms", self.flush_every_ms, 0, 0..=60_000);
        StoreConfig {
            cache_bytes: c.int(
                "store.cache_bytes",
                self.cache_bytes,
                4 * 1024 * 1024,
                64 * 1024..=1 << 40,
            ) as u64,
            flush_every: (flush_ms > 0).then(|| Duration::from_millis(flush_ms as u64)),
            max_bytes: c.int(
                "store.max_bytes",
                self.max_bytes,
                256 * 1024 * 1024,
                1024 * 1024..=1 << 50,
            ) as u64,
            min_free_bytes: c.int(
                "store.min_free_bytes",
                self.min_free_bytes,
                16 * 1024 * 1024,
                0..=1 << 50,
            ) as u64,
            max_log_bytes_per_run: c.int(
                "store.max_log_bytes_per_run",
                self.max_log_bytes_per_run,
                4 * 1024 * 1024,
                1024..=1 << 40,
            ) as u64,
            log_flush_every: Duration::from_millis(c.int(
                "store.log_flush_ms",
                self.log_flush_ms,
                1000,
                10..=3_600_000,
            ) as u64),
            flush_stall: Duration::from_secs(c.int(
                "store.flush_stall_secs",
                self.flush_stall_secs,
                60,
                5..=3600,
            ) as u64),
        }
    }
}

//! The durable state of the executor, in one sled database: the only module that names sled.
//!
//! Trees (keys big-endian so scans run in id order):
//! - `runs`: logId → [`RunRecord`] (the journal: accepted, running, finished, reported); a
//!   finished run's record is also its callback until an admin acknowledges it (see `outbox`);
//! - `keys`: idempotency key → [`KeyRecord`];
//! - `logs`: (logId, line) → text: one tree instead of a file per run, which would exhaust
//!   inodes on small flash;
//! - `fleet_keys`: (key, logId) → the fleet-Redis lock a run holds, until it is settled (used
//!   only with `keys.backend = "redis"`; see `fleet_keys` in the crate root);
//! - `meta`: schema version, store id and pruned watermark (see [`anchor`]), the watermark of
//!   delivered callbacks (`outbox`), and the handler names that run records refer to by number
//!   (`records::names`);
//! - `acks`: (a delivered batch's highest place + 1) → [`records::AckRecord`]: when the admin
//!   acknowledged it and the line each run's "callback finish" takes in its log, read by
//!   `/log` (see `logs`);
//! - `outbox`: empty; schema 2 kept its callbacks there (sequence → [`OutboxEntry`]).
//!
//! Values of `runs` and `keys` are in the store's own encoding (see `records::v2`); a store
//! of schema 1 (JSON values) or 2 (an outbox tree) is migrated in place at open (`migrate`).
//!
//! Large trigger text (params and GLUE source over [`BULK_THRESHOLD`] bytes together) is kept out
//! of sled, in a file per run under `store/params/`: sled keeps every version of a value in its
//! page cache and log, so a 4 MiB trigger in a record that is written three times (accepted,
//! running, finished) stayed resident three times over, and `store.cache_bytes` did not bound it.
//! The record holds a [`Bulk`] marker naming the file. The file is written and fsynced before the
//! record, and removed only after a flush that made the record's end (finished, forgotten,
//! pruned) durable, so after a crash a record that needs its file finds it; a file no unfinished
//! record names is an orphan and is removed at open.
//!
//! Durability: writes land in sled's memory first. [`Store::durable`] waits until they are on
//! disk; concurrent callers share one flush (group commit), so an fsync is paid per batch of
//! requests, not per request. With `store.flush_every_ms` set, `durable` returns at once and
//! sled flushes on its timer: faster, but a crash can lose the last few milliseconds.
//!
//! Only single-key operations: the first sled transaction or batch switches every sled
//! operation of the process onto a global reader-writer lock for good (end-to-end throughput
//! fell by 2.5x). Each state change of a run is one key's write; where two keys change (a run
//! and its idempotency key), the order of the writes stands in for a transaction, because
//! sled recovers a prefix of its log after a crash.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::StoreConfig;
use crate::job::LogId;

mod anchor;
mod bulk;
mod commit;
mod health;
mod held;
mod inflight;
mod journal;
mod keys;
mod logs;
mod migrate;
mod open;
mod outbox;
mod records;
mod retention;
#[cfg(test)]
mod tests;

pub(crate) use anchor::{copy_store, ScratchDir};
pub(crate) use bulk::bulk_bytes;
pub use journal::Recovery;
pub use keys::KeyCheck;
// Named by the benches and tools built with the `internals` feature, not by the crate itself.
#[allow(unused_imports)]
pub use journal::Stats;
#[allow(unused_imports)]
pub use logs::LogPage;
#[allow(unused_imports)]
pub use records::{Bulk, KeyRecord, OutboxEntry, RunRecord};

/// How long `serve` waits for the store's lock before it gives up.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Params and GLUE source above this many bytes (together) are kept in a file, not in sled.
pub const BULK_THRESHOLD: usize = 64 * 1024;

/// The directory under `store/` that holds the large triggers.
const BULK_DIR: &str = "params";

/// Bump when the on-disk format changes incompatibly (and teach `migrate` the step).
/// 1: JSON of the domain types; 2: the store's own compact records (`records::v2`);
/// 3: no outbox tree, a finished run's record is its callback (see `outbox`);
/// 4: a finished record may keep the last lines of its run's log (`records::LogTail`).
const SCHEMA_VERSION: u64 = 4;

/// A store failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// sled reported an I/O or internal error.
    #[error("store I/O error: {0}")]
    Sled(#[from] sled::Error),
    /// The database cannot be opened or read; the message says what to do.
    #[error("the store at {path} cannot be used: {reason}. Move the directory aside (mv {path} {path}.broken) to start with an empty store, or restore it from a backup; xxl-edge will not start empty by itself")]
    Unusable {
        /// The store directory.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// Another process holds the store's lock.
    #[error("the store at {path} is locked by another process: is another xxl-edge running with this data directory? Stop it, or give this executor its own executor.data_dir")]
    Locked {
        /// The store directory.
        path: String,
    },
    /// The disk is (nearly) full.
    #[error("disk full: {free} bytes free in {path}, below store.min_free_bytes = {min}; free some space and the executor accepts runs again")]
    DiskFull {
        /// Data directory.
        path: String,
        /// Free bytes.
        free: u64,
        /// The configured minimum.
        min: u64,
    },
    /// The logId is already in the journal.
    #[error("log id {0} is already in the journal")]
    Duplicate(LogId),
    /// A schema-1 (JSON) record did not decode.
    #[error("corrupt schema-1 record: {0}")]
    Decode(#[from] serde_json::Error),
    /// A record did not decode: truncated, an unknown tag, a bad length.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A large trigger's file could not be written, read or removed.
    #[error("params file {path}: {source}")]
    Bulk {
        /// The file.
        path: String,
        /// What the file system said.
        source: std::io::Error,
    },
    /// The group-commit task stopped.
    #[error("the store is closed")]
    Closed,
}

impl StoreError {
    /// A bounded name for metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sled(_) => "io",
            Self::Unusable { .. } => "unusable",
            Self::Locked { .. } => "locked",
            Self::DiskFull { .. } => "disk_full",
            Self::Duplicate(_) => "duplicate",
            Self::Decode(_) => "decode",
            Self::Corrupt(_) => "corrupt",
            Self::Bulk { .. } => "params_file",
            Self::Closed => "closed",
        }
    }
}

/// Result alias.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    runs: sled::Tree,
    keys: sled::Tree,
    logs: sled::Tree,
    /// Keys held in the fleet's Redis, for a restart to settle (see `keys`).
    fleet_keys: sled::Tree,
    /// The handler names run records refer to by number.
    names: records::names::HandlerNames,
    dir: PathBuf,
    /// `store/params`: large triggers, one file per unfinished run.
    bulk_dir: PathBuf,
    /// Large-trigger files whose run ended: removed after the next flush, once the record that
    /// no longer needs them is on disk.
    pending_removals: std::sync::Mutex<Vec<PathBuf>>,
    cfg: StoreConfig,
    /// The watermark of delivered callbacks lives here (see `outbox`).
    meta: sled::Tree,
    /// The admin's acknowledgements of callback batches, which give the runs' logs their
    /// "callback finish" lines (see [`records::AckRecord`]).
    acks: sled::Tree,
    /// The waiting callbacks' order and the oldest of them.
    waiting: outbox::Waiting,
    /// The logIds written since open above the highest held then (see [`Store::has_run`]).
    held: held::Held,
    /// The records of unfinished runs accepted by this process (see `inflight`).
    inflight: inflight::InFlight,
    flush_tx: mpsc::UnboundedSender<commit::FlushRequest>,
    /// The flush epoch read after the last recorded outcome (see [`Store::outcome_written`]).
    outcomes_epoch: AtomicU64,
    /// Outcomes between [`Store::outcome_begins`] and [`Store::outcome_written`].
    outcomes_writing: AtomicU64,
    /// A background flush request is on its way to the flush thread, which has not yet begun
    /// the flush that serves it (see `Store::flush_in_background`).
    background_flush_queued: std::sync::atomic::AtomicBool,
    on_flush: std::sync::OnceLock<FlushObserver>,
    /// Flushes begun and flushes completed successfully, in order (one flush at a time): a
    /// write made when `flushes_begun` was `n` is on disk once `flushes_done > n`.
    flushes_begun: AtomicU64,
    flushes_done: AtomicU64,
    /// The integrity anchor and the pruned watermark.
    integrity: anchor::Integrity,
    /// Set once a write failed: see `health`.
    health: health::Health,
}

/// Called with the duration of every group-commit flush (the executor feeds a histogram).
pub type FlushObserver = Arc<dyn Fn(Duration) + Send + Sync>;

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.inner.dir)
            .finish()
    }
}

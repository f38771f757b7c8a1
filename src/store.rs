//! The durable state of the executor, in one sled database: the only module that names sled.
//!
//! Trees (keys big-endian so scans run in id order):
//! - `runs`: logId → [`RunRecord`] (the journal: accepted, running, finished, reported);
//! - `outbox`: sequence → [`OutboxEntry`] (callbacks not yet acknowledged by an admin);
//! - `keys`: idempotency key → [`KeyRecord`];
//! - `logs`: (logId, line) → text: one tree instead of a file per run, which would exhaust
//!   inodes on small flash;
//! - `meta`: schema version.
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
//! Only single-key operations: no sled transactions or batches (see [`Store::finish`] for why
//! and for how the order of writes stands in for them).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::clock;
use crate::config::StoreConfig;
use crate::job::{Callback, Glue, LogId, Outcome, OutcomeKind, RunState, Trigger};

/// How long `serve` waits for the store's lock before it gives up.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

/// Params and GLUE source above this many bytes (together) are kept in a file, not in sled.
pub const BULK_THRESHOLD: usize = 64 * 1024;

/// The directory under `store/` that holds the large triggers.
const BULK_DIR: &str = "params";

/// Bump when the on-disk format changes incompatibly.
const SCHEMA_VERSION: u64 = 1;

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
    /// A record did not decode.
    #[error("corrupt record: {0}")]
    Decode(#[from] serde_json::Error),
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
            Self::Bulk { .. } => "params_file",
            Self::Closed => "closed",
        }
    }
}

/// Result alias.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One run in the journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// What was asked for.
    pub trigger: Trigger,
    /// Where it is.
    pub state: RunState,
    /// When `/run` accepted it (epoch ms).
    pub accepted_ms: i64,
    /// When the handler started.
    pub started_ms: Option<i64>,
    /// When it finished.
    pub finished_ms: Option<i64>,
    /// The result, once finished.
    pub outcome: Option<Outcome>,
    /// Why it ended, once finished.
    pub kind: Option<OutcomeKind>,
    /// The idempotency key it holds, if any.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// The outbox sequence of its callback once finished: while that entry exists the run is
    /// not yet reported.
    #[serde(default)]
    pub outbox_seq: Option<u64>,
    /// Set when the trigger's params and GLUE source were too large for the journal: `trigger`
    /// then holds neither, and until the run ends its whole trigger is in this file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bulk: Option<Bulk>,
}

/// Where a large trigger is kept while its run is unfinished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bulk {
    /// File name under `store/params/`: `{logId}.{nonce}`, the nonce unique per write, so two
    /// racing `/run`s of one logId never share a file and the loser removes only its own.
    pub file: String,
    /// Bytes of params and source together, for the record.
    pub bytes: u64,
}

/// Bytes of the trigger's text that [`BULK_THRESHOLD`] counts.
pub(crate) fn bulk_bytes(t: &Trigger) -> usize {
    let source = match &t.glue {
        Glue::Script { source, .. } => source.len(),
        Glue::Bean => 0,
    };
    t.params.as_ref().map_or(0, String::len) + source
}

/// The trigger without its params and GLUE source, built field by field so the large text is
/// never copied.
fn stripped(t: &Trigger) -> Trigger {
    Trigger {
        job_id: t.job_id,
        log_id: t.log_id,
        log_date_time: t.log_date_time,
        handler: t.handler.clone(),
        params: None,
        block: t.block,
        timeout: t.timeout,
        glue: match &t.glue {
            Glue::Bean => Glue::Bean,
            Glue::Script { kind, updated, .. } => Glue::Script {
                kind: *kind,
                source: String::new(),
                updated: *updated,
            },
        },
        shard_index: t.shard_index,
        shard_total: t.shard_total,
    }
}

impl RunRecord {
    /// A trigger just accepted at `now_ms`.
    fn accepted(trigger: Trigger, now_ms: i64) -> Self {
        Self {
            trigger,
            state: RunState::Accepted,
            accepted_ms: now_ms,
            started_ms: None,
            finished_ms: None,
            outcome: None,
            kind: None,
            idempotency_key: None,
            outbox_seq: None,
            bulk: None,
        }
    }

    /// A finished record keeps no large text (its file is going away).
    fn without_bulk_text(mut self) -> Self {
        if self.bulk.is_some() || bulk_bytes(&self.trigger) > BULK_THRESHOLD {
            self.trigger = stripped(&self.trigger);
        }
        self
    }
}

/// A callback waiting for the admin's acknowledgement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// What to send.
    pub callback: Callback,
    /// When it was queued (epoch ms), for the backlog age.
    pub queued_ms: i64,
    /// `traceid-spanid` of the run's span, so the callback span can link to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    /// Why the run ended, so a run record lost in a crash can be rebuilt from the entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<OutcomeKind>,
}

/// An idempotency key's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The run that holds the key.
    pub log_id: LogId,
    /// True once that run succeeded; a failed run releases its key.
    pub succeeded: bool,
    /// Epoch ms after which the key is forgotten.
    pub expires_ms: i64,
}

/// What an idempotency key says about a new trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyCheck {
    /// No live run holds it: go ahead (the key is now held by the new run).
    Fresh,
    /// A run with this key succeeded within the TTL.
    Succeeded(LogId),
    /// A run with this key is accepted or running.
    InFlight(LogId),
}

/// A page of a run's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPage {
    /// Lines from `from`, each without its terminator.
    pub lines: Vec<String>,
    /// Number of the last line returned, 0 if none.
    pub to: u32,
}

/// What the journal held at start.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Accepted, never started: run them again, in logId order.
    pub queued: Vec<RunRecord>,
    /// Started but not finished: the process died during the run.
    pub interrupted: Vec<RunRecord>,
    /// Unfinished runs whose large trigger file could not be read back, with the reason: they
    /// cannot run and are reported as failed.
    pub lost: Vec<(RunRecord, String)>,
    /// Runs in the journal.
    pub runs: u64,
}

/// Sizes and counts for `xxl-edge state` and metrics.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Callbacks waiting.
    pub outbox_len: u64,
    /// Age of the oldest waiting callback.
    pub outbox_oldest_age: Option<Duration>,
    /// sled's size on disk.
    pub disk_bytes: u64,
    /// Runs in the journal.
    pub runs: u64,
    /// Runs by state.
    pub accepted: u64,
    /// Runs running.
    pub running: u64,
    /// Runs finished, not yet reported.
    pub finished: u64,
    /// Runs reported.
    pub reported: u64,
}

/// Handle to the store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    runs: sled::Tree,
    outbox: sled::Tree,
    keys: sled::Tree,
    logs: sled::Tree,
    dir: PathBuf,
    /// `store/params`: large triggers, one file per unfinished run.
    bulk_dir: PathBuf,
    /// Large-trigger files whose run ended: removed after the next flush, once the record that
    /// no longer needs them is on disk.
    pending_removals: std::sync::Mutex<Vec<PathBuf>>,
    cfg: StoreConfig,
    outbox_len: AtomicU64,
    flush_tx: mpsc::UnboundedSender<oneshot::Sender<Result<(), String>>>,
    on_flush: std::sync::OnceLock<FlushObserver>,
    /// Flushes begun and flushes completed successfully, in order (one flush at a time): a
    /// write made when `flushes_begun` was `n` is on disk once `flushes_done > n`.
    flushes_begun: AtomicU64,
    flushes_done: AtomicU64,
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

fn run_key(id: LogId) -> [u8; 8] {
    // Flip the sign bit so negative ids sort before positive ones.
    ((id.0 as u64) ^ (1 << 63)).to_be_bytes()
}

fn run_id(key: &[u8]) -> Option<LogId> {
    let b: [u8; 8] = key.get(..8)?.try_into().ok()?;
    Some(LogId((u64::from_be_bytes(b) ^ (1 << 63)) as i64))
}

fn log_key(id: LogId, line: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&run_key(id));
    k[8..].copy_from_slice(&line.to_be_bytes());
    k
}

/// sled reports a held lock only as an `Other` I/O error with this message (sled 0.34's
/// `Config::open`), so the message is all there is to tell it from a corrupt store.
fn is_lock_conflict(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().starts_with("could not acquire lock"))
}

impl Store {
    /// Opens (or creates) the store under `data_dir/store` and starts the group-commit task.
    ///
    /// Must be called inside a tokio runtime.
    ///
    /// Waits up to [`LOCK_WAIT`] for the lock: see [`Store::open_waiting`].
    ///
    /// # Errors
    /// As [`Store::open_waiting`].
    pub fn open(data_dir: &Path, cfg: StoreConfig) -> Result<Self> {
        Self::open_waiting(data_dir, cfg, LOCK_WAIT)
    }

    /// Opens the store, waiting up to `lock_wait` while another process holds its lock.
    ///
    /// The wait is for restarts: right after a crash the lock can still be held for a moment,
    /// by the dying process or by a command it forked that has not reached `exec` yet (the
    /// child shares the locked file until then). A restart must not fail on that.
    ///
    /// # Errors
    /// [`StoreError::Locked`] when the lock stays taken (another executor on the same data
    /// directory); [`StoreError::Unusable`] when the database is corrupt or of an unknown
    /// schema: the executor must not silently start empty.
    pub fn open_waiting(data_dir: &Path, cfg: StoreConfig, lock_wait: Duration) -> Result<Self> {
        let dir = data_dir.join("store");
        let unusable = |reason: String| StoreError::Unusable {
            path: dir.display().to_string(),
            reason,
        };
        // Job parameters, logs and outcomes: readable by the executor's user only.
        crate::private_file::create_dir(&dir)
            .map_err(|e| unusable(format!("cannot create it: {e}")))?;
        let deadline = std::time::Instant::now() + lock_wait;
        let db = loop {
            let opened = sled::Config::new()
                .path(&dir)
                .cache_capacity(cfg.cache_bytes)
                .mode(sled::Mode::LowSpace)
                .flush_every_ms(cfg.flush_every.map(|d| d.as_millis().max(1) as u64))
                .open();
            match opened {
                Ok(db) => break db,
                Err(e) if is_lock_conflict(&e) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(StoreError::Locked {
                            path: dir.display().to_string(),
                        });
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(unusable(e.to_string())),
            }
        };
        let open = |name: &str| db.open_tree(name).map_err(|e| unusable(e.to_string()));
        let runs = open("runs")?;
        let outbox = open("outbox")?;
        let keys = open("keys")?;
        let logs = open("logs")?;
        let meta = open("meta")?;
        match meta.get("schema").map_err(|e| unusable(e.to_string()))? {
            None => {
                meta.insert("schema", &SCHEMA_VERSION.to_be_bytes())
                    .map_err(|e| unusable(e.to_string()))?;
            }
            Some(v) if v.as_ref() == SCHEMA_VERSION.to_be_bytes() => {}
            Some(v) => {
                return Err(unusable(format!(
                    "schema version {:?} is not {SCHEMA_VERSION}, this build's",
                    v.as_ref()
                )))
            }
        }
        let bulk_dir = dir.join(BULK_DIR);
        crate::private_file::create_dir(&bulk_dir)
            .map_err(|e| unusable(format!("cannot create {}: {e}", bulk_dir.display())))?;
        remove_orphans(&runs, &bulk_dir);
        private_files(&dir);
        let outbox_len = outbox.len() as u64;
        let dir_shown = dir.display().to_string();
        let (flush_tx, flush_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            db,
            runs,
            outbox,
            keys,
            logs,
            dir,
            bulk_dir,
            pending_removals: std::sync::Mutex::new(Vec::new()),
            cfg,
            outbox_len: AtomicU64::new(outbox_len),
            flush_tx,
            on_flush: std::sync::OnceLock::new(),
            flushes_begun: AtomicU64::new(0),
            flushes_done: AtomicU64::new(0),
        });
        // A weak handle: dropping the last `Store` closes the database (and its file lock).
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("xxl-edge-flush".into())
            .stack_size(128 * 1024)
            .spawn(move || group_commit(weak, flush_rx))
            .map_err(|e| StoreError::Unusable {
                path: dir_shown,
                reason: format!("cannot start the flush thread: {e}"),
            })?;
        Ok(Self { inner })
    }

    /// Waits until everything written so far is on disk (shared with concurrent callers).
    ///
    /// # Errors
    /// The flush failed (I/O error, disk full).
    pub async fn durable(&self) -> Result<()> {
        if self.inner.cfg.flush_every.is_some() {
            return Ok(());
        }
        self.synced().await
    }

    /// Waits until everything written so far is on disk, in the relaxed mode too. For writes
    /// whose effect leaves the process before the timer flush would come: a callback sent for
    /// an outcome that a crash then loses would be followed by a second, contradicting one.
    ///
    /// # Errors
    /// The flush failed (I/O error, disk full).
    pub async fn synced(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .flush_tx
            .send(tx)
            .map_err(|_| StoreError::Closed)?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(StoreError::Sled(sled::Error::Io(std::io::Error::other(
                msg,
            )))),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Sets the observer of flush durations (once).
    pub fn set_flush_observer(&self, f: FlushObserver) {
        let _ = self.inner.on_flush.set(f);
    }

    /// Asks for a flush without waiting for it: the outcome rides the next group commit.
    pub fn flush_soon(&self) {
        if self.inner.cfg.flush_every.is_none() {
            let (tx, _rx) = oneshot::channel();
            let _ = self.inner.flush_tx.send(tx);
        }
    }

    /// Flushes synchronously; for shutdown and tools.
    ///
    /// # Errors
    /// The flush failed.
    pub fn flush_now(&self) -> Result<()> {
        flush_and_remove(&self.inner).map_err(|e| StoreError::Sled(sled::Error::Io(e)))
    }

    /// The number of flushes begun so far: what is written now is on disk once
    /// [`Store::is_flushed`] says so for this value.
    pub fn flush_epoch(&self) -> u64 {
        self.inner.flushes_begun.load(Ordering::Acquire)
    }

    /// True once a flush that began after `epoch` was taken (see [`Store::flush_epoch`]) has
    /// completed: everything written before then is on disk.
    pub fn is_flushed(&self, epoch: u64) -> bool {
        self.inner.flushes_done.load(Ordering::Acquire) > epoch
    }

    /// Refuses new work when the file system is below `store.min_free_bytes`.
    ///
    /// # Errors
    /// [`StoreError::DiskFull`].
    pub fn check_space(&self) -> Result<()> {
        let min = self.inner.cfg.min_free_bytes;
        if min == 0 {
            return Ok(());
        }
        if let Ok(st) = nix::sys::statvfs::statvfs(&self.inner.dir) {
            // These are 32-bit on armv7 and 64-bit on aarch64, hence the conversion.
            #[allow(clippy::useless_conversion)]
            let free =
                u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size()));
            if free < min {
                return Err(StoreError::DiskFull {
                    path: self.inner.dir.display().to_string(),
                    free,
                    min,
                });
            }
        }
        Ok(())
    }

    /// True if the journal holds this logId.
    ///
    /// # Errors
    /// I/O.
    pub fn has_run(&self, id: LogId) -> Result<bool> {
        Ok(self.inner.runs.contains_key(run_key(id))?)
    }

    /// Reads one run, as the journal holds it: a large trigger (see [`RunRecord::bulk`]) comes
    /// without its params and GLUE source; [`Store::recover`] reads those back.
    ///
    /// # Errors
    /// I/O or a corrupt record.
    pub fn run(&self, id: LogId) -> Result<Option<RunRecord>> {
        match self.inner.runs.get(run_key(id))? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    /// Records an accepted trigger; fails if the logId is already known (never run twice).
    ///
    /// # Errors
    /// [`StoreError::Duplicate`], I/O.
    ///
    /// A trigger whose params and GLUE source exceed [`BULK_THRESHOLD`] is first written to its
    /// own file and fsynced (file and directory), and the record names the file: the file is
    /// on disk before the record can be, so the record's flush makes both durable.
    pub fn insert_accepted(&self, trigger: &Trigger) -> Result<()> {
        let now = clock::now_ms();
        let bytes = bulk_bytes(trigger);
        let (rec, file) = if bytes > BULK_THRESHOLD {
            let file = format!("{}.{}", trigger.log_id.0, self.inner.db.generate_id()?);
            let path = self.inner.bulk_dir.join(&file);
            write_bulk(&self.inner.bulk_dir, &path, trigger)?;
            let mut rec = RunRecord::accepted(stripped(trigger), now);
            rec.bulk = Some(Bulk {
                file,
                bytes: bytes as u64,
            });
            (rec, Some(path))
        } else {
            (RunRecord::accepted(trigger.clone(), now), None)
        };
        let inserted = serde_json::to_vec(&rec)
            .map_err(StoreError::from)
            .and_then(|v| {
                Ok(self.inner.runs.compare_and_swap(
                    run_key(trigger.log_id),
                    None::<&[u8]>,
                    Some(v),
                )?)
            });
        match inserted {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => {
                // No record names the file; if this removal fails, the next open removes it.
                if let Some(path) = file {
                    let _ = std::fs::remove_file(path);
                }
                Err(StoreError::Duplicate(trigger.log_id))
            }
            Err(e) => {
                if let Some(path) = file {
                    let _ = std::fs::remove_file(path);
                }
                Err(e)
            }
        }
    }

    /// Reads a large trigger back from its file; the error says why it cannot be used.
    fn read_bulk(&self, b: &Bulk, id: LogId) -> std::result::Result<Trigger, String> {
        let path = self.inner.bulk_dir.join(&b.file);
        let v = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let t = serde_json::from_slice::<Trigger>(&v)
            .map_err(|e| format!("{} does not decode: {e}", path.display()))?;
        if t.log_id != id {
            return Err(format!(
                "{} holds logId {}, not this run's",
                path.display(),
                t.log_id.0
            ));
        }
        Ok(t)
    }

    /// Removes a large trigger's file once the next flush has made its record's end durable.
    fn remove_after_flush(&self, rec: &RunRecord) {
        if let Some(b) = &rec.bulk {
            self.inner
                .pending_removals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(self.inner.bulk_dir.join(&b.file));
        }
    }

    /// Removes a run that was never acknowledged to the admin (its `/run` failed after all). It
    /// may already be marked running: its worker marks it while `/run` waits for the same flush,
    /// and starts nothing before it knows the answer.
    ///
    /// # Errors
    /// I/O.
    pub fn forget_accepted(&self, id: LogId) -> Result<()> {
        if let Some(rec) = self.run(id)? {
            if matches!(rec.state, RunState::Accepted | RunState::Running) {
                self.inner.runs.remove(run_key(id))?;
                self.remove_after_flush(&rec);
                if let Some(k) = rec.idempotency_key {
                    self.release_key(&k, id)?;
                }
            }
        }
        Ok(())
    }

    /// Marks a run started, holding its idempotency key if it has one.
    ///
    /// # Errors
    /// I/O or a corrupt record.
    pub fn mark_running(&self, id: LogId, key: Option<String>) -> Result<()> {
        self.update_run(id, |r| {
            r.state = RunState::Running;
            r.started_ms = Some(clock::now_ms());
            r.idempotency_key.clone_from(&key);
        })
    }

    fn update_run(&self, id: LogId, f: impl Fn(&mut RunRecord)) -> Result<()> {
        let key = run_key(id);
        let mut err = None;
        self.inner.runs.fetch_and_update(key, |old| {
            let old = old?;
            match serde_json::from_slice::<RunRecord>(old) {
                Ok(mut r) => {
                    f(&mut r);
                    serde_json::to_vec(&r).ok()
                }
                Err(e) => {
                    err = Some(e);
                    Some(old.to_vec())
                }
            }
        })?;
        match err {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Records a run's outcome and queues its callback. A run already finished keeps its
    /// first outcome (one result per trigger).
    ///
    /// Plain single-key writes in a fixed order, not a sled transaction: the first transaction
    /// or batch switches every sled operation of the process onto a global reader-writer lock
    /// for good, and with it end-to-end throughput fell by 2.5x. The order does the job a
    /// transaction did, because sled recovers a prefix of its log after a crash (its own batch
    /// atomicity rests on that):
    /// 1. the outbox entry: from here the callback cannot be lost;
    /// 2. the run record, `Finished`: [`Store::recover`] repairs a run left `Running` or
    ///    `Accepted` whose callback is already in the outbox, so it is neither re-run nor
    ///    reported twice;
    /// 3. the idempotency key, a hint only: [`Store::check_key`] reads the holder's record.
    ///
    /// The finished record keeps no large params or source; their file goes after the next
    /// flush.
    ///
    /// # Errors
    /// I/O or a corrupt record.
    pub fn finish(
        &self,
        trigger: &Trigger,
        outcome: &Outcome,
        kind: OutcomeKind,
        trace: Option<String>,
    ) -> Result<bool> {
        let key = run_key(trigger.log_id);
        let now = clock::now_ms();
        let old = match self.inner.runs.get(key)? {
            Some(v) => Some(serde_json::from_slice::<RunRecord>(&v)?),
            None => None,
        };
        if old
            .as_ref()
            .is_some_and(|r| matches!(r.state, RunState::Finished | RunState::Reported))
        {
            return Ok(false);
        }
        let seq = self.inner.db.generate_id()?;
        let entry = OutboxEntry {
            callback: Callback {
                log_id: trigger.log_id,
                log_date_time: trigger.log_date_time,
                outcome: outcome.clone(),
            },
            queued_ms: now,
            trace,
            kind: Some(kind),
        };
        self.inner
            .outbox
            .insert(seq.to_be_bytes(), serde_json::to_vec(&entry)?)?;
        self.inner.outbox_len.fetch_add(1, Ordering::Relaxed);
        // Rejected before acceptance never reaches here; a missing record means the trigger
        // was recovered from an older journal. Recreate it.
        let mut rec = old
            .unwrap_or_else(|| {
                let t = if bulk_bytes(trigger) > BULK_THRESHOLD {
                    stripped(trigger)
                } else {
                    trigger.clone()
                };
                RunRecord::accepted(t, now)
            })
            .without_bulk_text();
        rec.state = RunState::Finished;
        rec.finished_ms = Some(now);
        rec.outcome = Some(outcome.clone());
        rec.kind = Some(kind);
        rec.outbox_seq = Some(seq);
        self.inner.runs.insert(key, serde_json::to_vec(&rec)?)?;
        self.remove_after_flush(&rec);
        if let Some(k) = &rec.idempotency_key {
            self.settle_key(k, trigger.log_id, outcome.is_success())?;
        }
        Ok(true)
    }

    /// A succeeded run marks its key; a failed one releases it so a retry can run.
    fn settle_key(&self, key: &str, log_id: LogId, succeeded: bool) -> Result<()> {
        let Some(v) = self.inner.keys.get(key.as_bytes())? else {
            return Ok(());
        };
        let Ok(mut kr) = serde_json::from_slice::<KeyRecord>(&v) else {
            return Ok(());
        };
        if kr.log_id != log_id {
            return Ok(());
        }
        if succeeded {
            kr.succeeded = true;
            let nv = serde_json::to_vec(&kr)?;
            // A key taken over meanwhile by another run stays that run's.
            let _ = self
                .inner
                .keys
                .compare_and_swap(key.as_bytes(), Some(v), Some(nv))?;
        } else {
            let _ = self
                .inner
                .keys
                .compare_and_swap(key.as_bytes(), Some(v), None::<&[u8]>)?;
        }
        Ok(())
    }

    /// The oldest waiting callbacks, at most `max`, in the order they were queued.
    ///
    /// # Errors
    /// I/O or a corrupt record.
    pub fn outbox_batch(&self, max: usize) -> Result<Vec<(u64, OutboxEntry)>> {
        self.outbox_entries().take(max).collect()
    }

    /// The outbox in queue order, decoded.
    fn outbox_entries(&self) -> impl Iterator<Item = Result<(u64, OutboxEntry)>> + '_ {
        self.inner.outbox.iter().map(|item| {
            let (k, v) = item?;
            let seq = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            Ok((seq, serde_json::from_slice(&v)?))
        })
    }

    /// The admin acknowledged these callbacks: drop them from the outbox. A run
    /// counts as reported once it is finished and no longer in the outbox, so the run records are
    /// not rewritten here (that rewrite was most of a delivery's cost).
    ///
    /// # Errors
    /// I/O.
    pub fn ack(&self, batch: &[(u64, OutboxEntry)]) -> Result<()> {
        // Key by key, not a sled batch (see `finish`): a crash half-way re-sends the rest,
        // identical, which the admin ignores.
        for (seq, _) in batch {
            if self.inner.outbox.remove(seq.to_be_bytes())?.is_some() {
                self.inner.outbox_len.fetch_sub(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Callbacks waiting.
    pub fn outbox_len(&self) -> u64 {
        self.inner.outbox_len.load(Ordering::Relaxed)
    }

    /// Age of the oldest waiting callback.
    pub fn outbox_oldest_age(&self) -> Option<Duration> {
        let queued = self.outbox_oldest_queued_ms()?;
        let age = clock::now_ms().saturating_sub(queued).max(0);
        Some(Duration::from_millis(age as u64))
    }

    /// When the oldest waiting callback was queued (epoch ms).
    pub fn outbox_oldest_queued_ms(&self) -> Option<i64> {
        let (_, v) = self.inner.outbox.first().ok()??;
        let e: OutboxEntry = serde_json::from_slice(&v).ok()?;
        Some(e.queued_ms)
    }

    /// Checks and takes an idempotency key for a new run.
    ///
    /// # Errors
    /// I/O.
    pub fn check_key(&self, key: &str, log_id: LogId, ttl: Duration) -> Result<KeyCheck> {
        let now = clock::now_ms();
        let rec = KeyRecord {
            log_id,
            succeeded: false,
            expires_ms: now.saturating_add(ttl.as_millis() as i64),
        };
        let new = serde_json::to_vec(&rec)?;
        loop {
            let cur = self.inner.keys.get(key.as_bytes())?;
            if let Some(v) = &cur {
                if let Ok(kr) = serde_json::from_slice::<KeyRecord>(v) {
                    if kr.expires_ms > now {
                        if kr.succeeded {
                            return Ok(KeyCheck::Succeeded(kr.log_id));
                        }
                        // The holder's own record is the truth: the `succeeded` mark is
                        // written after it and a crash can lose it (see `finish`).
                        match self.run(kr.log_id)? {
                            Some(r)
                                if matches!(r.state, RunState::Accepted | RunState::Running) =>
                            {
                                return Ok(KeyCheck::InFlight(kr.log_id));
                            }
                            Some(r)
                                if kr.log_id != log_id
                                    && r.outcome.as_ref().is_some_and(Outcome::is_success) =>
                            {
                                return Ok(KeyCheck::Succeeded(kr.log_id));
                            }
                            _ => {}
                        }
                    }
                }
            }
            if self
                .inner
                .keys
                .compare_and_swap(key.as_bytes(), cur, Some(new.clone()))?
                .is_ok()
            {
                return Ok(KeyCheck::Fresh);
            }
        }
    }

    /// Whether a key's run already succeeded within its TTL, without taking the key.
    ///
    /// # Errors
    /// I/O.
    pub fn check_key_readonly(&self, key: &str) -> Result<KeyCheck> {
        if let Some(v) = self.inner.keys.get(key.as_bytes())? {
            if let Ok(kr) = serde_json::from_slice::<KeyRecord>(&v) {
                if kr.succeeded && kr.expires_ms > clock::now_ms() {
                    return Ok(KeyCheck::Succeeded(kr.log_id));
                }
            }
        }
        Ok(KeyCheck::Fresh)
    }

    /// Lets go of a key this run took (its trigger was refused after all).
    ///
    /// # Errors
    /// I/O.
    pub fn release_key(&self, key: &str, log_id: LogId) -> Result<()> {
        if let Some(v) = self.inner.keys.get(key.as_bytes())? {
            if serde_json::from_slice::<KeyRecord>(&v).is_ok_and(|k| k.log_id == log_id) {
                self.inner.keys.remove(key.as_bytes())?;
            }
        }
        Ok(())
    }

    /// Appends one line to a run's log (not flushed on its own: logs ride the next flush).
    ///
    /// # Errors
    /// I/O.
    pub fn append_log(&self, id: LogId, line: u32, text: &str) -> Result<()> {
        self.inner.logs.insert(log_key(id, line), text.as_bytes())?;
        Ok(())
    }

    /// The number of the last line of a run's log, 0 if none.
    ///
    /// # Errors
    /// I/O.
    pub fn last_log_line(&self, id: LogId) -> Result<u32> {
        let start = log_key(id, 0);
        let end = log_key(id, u32::MAX);
        // Most runs have no log yet when this is asked; a forward probe answers that for the
        // price of a lookup, where sled's reverse scan costs several.
        if self.inner.logs.range(start..=end).next().is_none() {
            return Ok(0);
        }
        Ok(match self.inner.logs.range(start..=end).next_back() {
            Some(item) => {
                let (k, _) = item?;
                u32::from_be_bytes(k[8..12].try_into().unwrap_or([0; 4]))
            }
            None => 0,
        })
    }

    /// Reads lines `from..` of a run's log, bounded by line count and bytes. `None` when the
    /// run is unknown and has no log.
    ///
    /// # Errors
    /// I/O.
    pub fn read_log(
        &self,
        id: LogId,
        from: u32,
        max_lines: usize,
        max_bytes: usize,
    ) -> Result<Option<LogPage>> {
        let from = from.max(1);
        let mut lines = Vec::new();
        let mut bytes = 0usize;
        let mut to = 0;
        for item in self
            .inner
            .logs
            .range(log_key(id, from)..=log_key(id, u32::MAX))
        {
            let (k, v) = item?;
            let mut text = String::from_utf8_lossy(&v).into_owned();
            if !lines.is_empty() && (lines.len() >= max_lines || bytes + text.len() + 1 > max_bytes)
            {
                break;
            }
            if text.len() + 1 > max_bytes {
                // A line longer than a whole page (written before lines were split, or a page
                // bound below the line bound) is cut: a page never exceeds its byte bound.
                let mut cut = max_bytes.saturating_sub(1);
                while cut > 0 && !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
            }
            bytes += text.len() + 1;
            to = u32::from_be_bytes(k[8..12].try_into().unwrap_or([0; 4]));
            lines.push(text);
        }
        if lines.is_empty() && !self.has_run(id)? && self.last_log_line(id)? == 0 {
            return Ok(None);
        }
        Ok(Some(LogPage { lines, to }))
    }

    /// Scans the journal at start.
    ///
    /// # Errors
    /// I/O or a corrupt record.
    pub fn recover(&self) -> Result<Recovery> {
        let mut r = Recovery {
            ..Default::default()
        };
        for item in self.inner.runs.iter() {
            let (_, v) = item?;
            r.runs += 1;
            let rec: RunRecord = serde_json::from_slice(&v)?;
            match rec.state {
                RunState::Accepted => r.queued.push(rec),
                RunState::Running => r.interrupted.push(rec),
                RunState::Finished | RunState::Reported => {}
            }
        }
        if !r.queued.is_empty() || !r.interrupted.is_empty() {
            let mut queued_callbacks = std::collections::HashMap::new();
            for item in self.outbox_entries() {
                let (seq, e) = item?;
                queued_callbacks.insert(e.callback.log_id, (seq, e));
            }
            let mut repair = |runs: &mut Vec<RunRecord>| -> Result<()> {
                let mut kept = Vec::with_capacity(runs.len());
                for rec in runs.drain(..) {
                    match queued_callbacks.remove(&rec.trigger.log_id) {
                        Some((seq, e)) => self.repair_finished(rec, seq, &e)?,
                        None => kept.push(rec),
                    }
                }
                *runs = kept;
                Ok(())
            };
            repair(&mut r.queued)?;
            repair(&mut r.interrupted)?;
        }
        // Only what may still run gets its large text back (after the repair, which needs none).
        let mut lost = Vec::new();
        for runs in [&mut r.queued, &mut r.interrupted] {
            let mut kept = Vec::with_capacity(runs.len());
            for mut rec in runs.drain(..) {
                let Some(b) = &rec.bulk else {
                    kept.push(rec);
                    continue;
                };
                match self.read_bulk(b, rec.trigger.log_id) {
                    Ok(t) => {
                        rec.trigger = t;
                        kept.push(rec);
                    }
                    Err(why) => lost.push((rec, why)),
                }
            }
            *runs = kept;
        }
        r.lost = lost;
        Ok(r)
    }

    /// A crash fell between the two writes of [`Store::finish`]: the callback is queued but the
    /// record still says accepted or running. The outcome is known, so the run is finished.
    fn repair_finished(&self, rec: RunRecord, seq: u64, e: &OutboxEntry) -> Result<()> {
        tracing::info!(log_id = %rec.trigger.log_id, "Repairing a run whose outcome was queued just before a crash.");
        let mut rec = rec.without_bulk_text();
        rec.state = RunState::Finished;
        rec.finished_ms = Some(e.queued_ms);
        rec.outcome = Some(e.callback.outcome.clone());
        rec.kind = Some(e.kind.unwrap_or(if e.callback.outcome.is_success() {
            OutcomeKind::Success
        } else {
            OutcomeKind::Failed
        }));
        rec.outbox_seq = Some(seq);
        self.inner
            .runs
            .insert(run_key(rec.trigger.log_id), serde_json::to_vec(&rec)?)?;
        self.remove_after_flush(&rec);
        if let Some(k) = &rec.idempotency_key {
            self.settle_key(k, rec.trigger.log_id, e.callback.outcome.is_success())?;
        }
        Ok(())
    }

    /// Counts for the `state` command and metrics (scans the journal).
    ///
    /// # Errors
    /// I/O or a corrupt record.
    pub fn stats(&self) -> Result<Stats> {
        let mut s = Stats {
            outbox_len: self.outbox_len(),
            outbox_oldest_age: self.outbox_oldest_age(),
            disk_bytes: self.size_on_disk(),
            ..Default::default()
        };
        for item in self.inner.runs.iter() {
            let (_, v) = item?;
            let rec: RunRecord = serde_json::from_slice(&v)?;
            s.runs += 1;
            match self.derived_state(&rec)? {
                RunState::Accepted => s.accepted += 1,
                RunState::Running => s.running += 1,
                RunState::Finished => s.finished += 1,
                RunState::Reported => s.reported += 1,
            }
        }
        Ok(s)
    }

    /// The most recent runs, newest first.
    ///
    /// # Errors
    /// I/O or a corrupt record.
    pub fn recent_runs(&self, n: usize) -> Result<Vec<RunRecord>> {
        let mut v = Vec::new();
        for item in self.inner.runs.iter().rev().take(n) {
            let (_, val) = item?;
            let mut rec: RunRecord = serde_json::from_slice(&val)?;
            rec.state = self.derived_state(&rec)?;
            v.push(rec);
        }
        Ok(v)
    }

    /// A finished run whose callback left the outbox has been reported.
    fn derived_state(&self, rec: &RunRecord) -> Result<RunState> {
        Ok(match (rec.state, rec.outbox_seq) {
            (RunState::Finished, Some(seq))
                if self.inner.outbox.contains_key(seq.to_be_bytes())? =>
            {
                RunState::Finished
            }
            (RunState::Finished, _) => RunState::Reported,
            (other, _) => other,
        })
    }

    /// sled's files on disk, in bytes.
    pub fn size_on_disk(&self) -> u64 {
        self.inner.db.size_on_disk().unwrap_or(0)
    }

    /// Prunes reported runs (and their logs) older than `max_age`, then the oldest reported runs
    /// while the store is over its byte budget. Unfinished runs and the outbox are never pruned.
    /// Expired idempotency keys go too. Returns the number of runs removed.
    ///
    /// # Errors
    /// I/O or a corrupt record.
    pub fn prune(&self, max_age: Option<Duration>) -> Result<u64> {
        let now = clock::now_ms();
        let cutoff = max_age.map(|a| now - a.as_millis() as i64);
        let over_budget = self.size_on_disk() > self.inner.cfg.max_bytes;
        let mut removed = 0u64;
        // Over budget, free a tenth of the journal per pass (oldest first); sled reclaims the
        // space as it rewrites segments, so the effect on disk lags a little.
        let budget_quota = if over_budget {
            (self.inner.runs.len() as u64 / 10).max(1)
        } else {
            0
        };
        let mut budget_removed = 0u64;
        for item in self.inner.runs.iter() {
            let (k, v) = item?;
            let rec: RunRecord = serde_json::from_slice(&v)?;
            if self.derived_state(&rec)? != RunState::Reported {
                continue;
            }
            let old = cutoff.is_some_and(|c| rec.finished_ms.unwrap_or(rec.accepted_ms) < c);
            let budget = budget_removed < budget_quota;
            if !(old || budget) {
                continue;
            }
            if !old {
                budget_removed += 1;
            }
            if let Some(id) = run_id(&k) {
                self.remove_log(id)?;
            }
            self.inner.runs.remove(k)?;
            // Normally gone since the run finished; a crash can have kept it.
            self.remove_after_flush(&rec);
            removed += 1;
        }
        for item in self.inner.keys.iter() {
            let (k, v) = item?;
            if serde_json::from_slice::<KeyRecord>(&v).map_or(true, |kr| kr.expires_ms <= now) {
                self.inner.keys.remove(k)?;
            }
        }
        Ok(removed)
    }

    fn remove_log(&self, id: LogId) -> Result<()> {
        // Line by line, not a sled batch (see `finish`); the run record goes after its log.
        for item in self
            .inner
            .logs
            .range(log_key(id, 0)..=log_key(id, u32::MAX))
        {
            let (k, _) = item?;
            self.inner.logs.remove(k)?;
        }
        Ok(())
    }
}

/// Group commit on its own thread: every waiter that arrived while a flush ran is served by the
/// next one. A plain thread (not `spawn_blocking`) because it lives as long as the store and a
/// hand-off per flush costs more than the flush's bookkeeping.
/// Under load (the last flush had company), flushes start at most this often, so each one
/// serves more waiters. Every sled
/// flush seals an I/O buffer and wakes sled's whole I/O thread pool; back-to-back flushes spent
/// more CPU on that than on the writes. An idle store flushes at once.
const GROUP_COMMIT_MIN_GAP: Duration = Duration::from_millis(1);

fn group_commit(
    inner: std::sync::Weak<Inner>,
    mut rx: mpsc::UnboundedReceiver<oneshot::Sender<Result<(), String>>>,
) {
    // Set when the last flush served more than one waiter: a sign of load. A lone writer
    // (one request at a time) never waits for the gap.
    let mut last_start: Option<std::time::Instant> = None;
    while let Some(first) = rx.blocking_recv() {
        if let Some(t) = last_start {
            let gap =
                (t + GROUP_COMMIT_MIN_GAP).saturating_duration_since(std::time::Instant::now());
            if !gap.is_zero() {
                std::thread::sleep(gap);
            }
        }
        let began = std::time::Instant::now();
        let mut waiters = vec![first];
        while let Ok(w) = rx.try_recv() {
            waiters.push(w);
        }
        last_start = (waiters.len() > 1).then_some(began);
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let res = flush_and_remove(&strong).map_err(|e| e.to_string());
        drop(strong);
        for w in waiters {
            let _ = w.send(res.clone());
        }
    }
}

/// Flushes, then removes the large-trigger files whose records' ends were written before the
/// flush began (they are on disk now). On a failed flush they wait for the next one.
fn flush_and_remove(inner: &Inner) -> std::io::Result<()> {
    let removals = std::mem::take(
        &mut *inner
            .pending_removals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let started = std::time::Instant::now();
    let epoch = inner.flushes_begun.fetch_add(1, Ordering::AcqRel) + 1;
    if let Err(e) = inner.db.flush() {
        inner
            .pending_removals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(removals);
        return Err(match e {
            sled::Error::Io(io) => io,
            other => std::io::Error::other(other.to_string()),
        });
    }
    inner.flushes_done.fetch_max(epoch, Ordering::AcqRel);
    if let Some(f) = inner.on_flush.get() {
        f(started.elapsed());
    }
    for path in removals {
        remove_bulk_file(&path);
    }
    Ok(())
}

/// sled creates its files with the process's umask (usually 0644); they hold job parameters and
/// logs, so they are made the owner's alone (the directory is 0700 as well).
fn private_files(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let mode = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            0o700
        } else {
            0o600
        };
        let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode));
    }
}

/// Removes a large-trigger file; one already gone is fine, any other failure leaves an orphan
/// that the next open removes.
fn remove_bulk_file(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "Cannot remove a params file; the next start removes it.");
        }
    }
}

/// Writes a large trigger to `path` (mode 0600) and fsyncs the file and its directory.
fn write_bulk(dir: &Path, path: &Path, trigger: &Trigger) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| StoreError::Bulk {
        path: path.display().to_string(),
        source,
    };
    // Streamed through a small buffer: encoding into one Vec first made a second multi-MiB
    // copy (grown by doubling) for every large trigger.
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|f| {
            let mut w = std::io::BufWriter::with_capacity(64 * 1024, f);
            serde_json::to_writer(&mut w, trigger).map_err(std::io::Error::from)?;
            w.flush()?;
            w.get_ref().sync_all()
        });
    if let Err(e) = written {
        let _ = std::fs::remove_file(path);
        return Err(err(e));
    }
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err)
}

/// At open: removes every large-trigger file that no unfinished run names (a crash between
/// the file and its record, or before a finished run's file was removed). Housekeeping only:
/// a failure is logged, and the next open tries again.
fn remove_orphans(runs: &sled::Tree, bulk_dir: &Path) {
    let entries = match std::fs::read_dir(bulk_dir) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(dir = %bulk_dir.display(), error = %e, "Cannot list the params files.");
            return;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let needed = name
            .split('.')
            .next()
            .and_then(|id| id.parse::<i64>().ok())
            .and_then(|id| runs.get(run_key(LogId(id))).ok().flatten())
            .and_then(|v| serde_json::from_slice::<RunRecord>(&v).ok())
            .is_some_and(|rec| {
                matches!(rec.state, RunState::Accepted | RunState::Running)
                    && rec.bulk.is_some_and(|b| b.file == name)
            });
        if !needed {
            remove_bulk_file(&entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::Glue;

    fn cfg() -> StoreConfig {
        crate::config::Config::defaults().store
    }

    fn trig(id: i64) -> Trigger {
        Trigger::for_test(id)
    }

    #[tokio::test]
    async fn journal_outbox_and_logs_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path(), cfg()).unwrap();
            s.insert_accepted(&trig(1)).unwrap();
            assert!(matches!(
                s.insert_accepted(&trig(1)),
                Err(StoreError::Duplicate(_))
            ));
            s.insert_accepted(&trig(2)).unwrap();
            s.insert_accepted(&trig(-3)).unwrap();
            s.mark_running(LogId(2), None).unwrap();
            s.insert_accepted(&trig(4)).unwrap();
            assert!(s
                .finish(&trig(4), &Outcome::success(), OutcomeKind::Success, None)
                .unwrap());
            assert!(!s
                .finish(&trig(4), &Outcome::fail("x"), OutcomeKind::Failed, None)
                .unwrap());
            for i in 1..=5 {
                s.append_log(LogId(4), i, &format!("line {i}")).unwrap();
            }
            s.durable().await.unwrap();
        }
        let s = Store::open(dir.path(), cfg()).unwrap();
        let r = s.recover().unwrap();
        let queued: Vec<_> = r.queued.iter().map(|r| r.trigger.log_id.0).collect();
        assert_eq!(queued, vec![-3, 1]);
        assert_eq!(r.interrupted.len(), 1);
        assert_eq!(s.outbox_len(), 1);
        let batch = s.outbox_batch(50).unwrap();
        assert_eq!(batch[0].1.callback.log_id, LogId(4));
        assert_eq!(s.recent_runs(10).unwrap()[0].state, RunState::Finished);
        s.ack(&batch).unwrap();
        assert_eq!(s.outbox_len(), 0);
        assert_eq!(s.recent_runs(10).unwrap()[0].state, RunState::Reported);
        let page = s.read_log(LogId(4), 2, 2, 1 << 20).unwrap().unwrap();
        assert_eq!(page.lines, vec!["line 2", "line 3"]);
        assert_eq!(page.to, 3);
        let page = s.read_log(LogId(4), 9, 10, 1 << 20).unwrap().unwrap();
        assert_eq!(page.to, 0);
        assert!(s.read_log(LogId(99), 1, 10, 1 << 20).unwrap().is_none());
        assert_eq!(s.last_log_line(LogId(4)).unwrap(), 5);
        // An old reported run is pruned with its log; unfinished ones stay.
        assert_eq!(s.prune(Some(Duration::from_secs(3600))).unwrap(), 0);
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(s.prune(Some(Duration::from_millis(1))).unwrap(), 1);
        assert!(s.read_log(LogId(4), 1, 10, 1 << 20).unwrap().is_none());
        assert!(s.has_run(LogId(1)).unwrap());
    }

    /// `finish` writes the outbox entry, then the run record, then the key: a crash after the
    /// first write leaves a queued callback for a run that still says running.
    #[tokio::test]
    async fn a_crash_inside_finish_is_repaired_at_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let ttl = Duration::from_secs(3600);
        {
            let s = Store::open(dir.path(), cfg()).unwrap();
            for id in [1, 2] {
                s.insert_accepted(&trig(id)).unwrap();
            }
            assert_eq!(s.check_key("k", LogId(1), ttl).unwrap(), KeyCheck::Fresh);
            s.mark_running(LogId(1), Some("k".into())).unwrap();
            // Only the first write of `finish` for 1 (running) and 2 (still queued) landed.
            for (seq, id) in [(7u64, 1), (8, 2)] {
                let e = OutboxEntry {
                    callback: Callback {
                        log_id: LogId(id),
                        log_date_time: 1,
                        outcome: Outcome::success(),
                    },
                    queued_ms: 5,
                    trace: None,
                    kind: Some(OutcomeKind::Success),
                };
                s.inner
                    .outbox
                    .insert(seq.to_be_bytes(), serde_json::to_vec(&e).unwrap())
                    .unwrap();
            }
            s.durable().await.unwrap();
        }
        let s = Store::open(dir.path(), cfg()).unwrap();
        let r = s.recover().unwrap();
        assert!(r.queued.is_empty() && r.interrupted.is_empty(), "{r:?}");
        let rec = s.run(LogId(1)).unwrap().unwrap();
        assert_eq!(rec.state, RunState::Finished);
        assert_eq!(rec.outbox_seq, Some(7));
        assert_eq!(rec.kind, Some(OutcomeKind::Success));
        assert_eq!(s.outbox_len(), 2);
        // The key's holder succeeded: a new run with it is not executed.
        assert_eq!(
            s.check_key("k", LogId(3), ttl).unwrap(),
            KeyCheck::Succeeded(LogId(1))
        );
        // Nothing is repaired twice: the next start finds nothing to do.
        drop(s);
        let s = Store::open(dir.path(), cfg()).unwrap();
        let r = s.recover().unwrap();
        assert!(r.queued.is_empty() && r.interrupted.is_empty());
    }

    /// A restart right after a crash finds the lock still held for a moment (the dying process,
    /// or a forked command before its `exec`): it waits; a lock that stays taken is named.
    #[tokio::test]
    async fn open_waits_for_a_lock_that_is_let_go_and_names_one_that_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path(), cfg()).unwrap();
        let err = Store::open_waiting(dir.path(), cfg(), Duration::ZERO).unwrap_err();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        assert!(err.to_string().contains("another xxl-edge"), "{err}");
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            // Let go once the second open is known to be waiting.
            rx.recv().unwrap();
            drop(first);
        });
        let path = dir.path().to_path_buf();
        let second = tokio::task::spawn_blocking(move || {
            let _ = tx.send(());
            Store::open_waiting(&path, cfg(), Duration::from_secs(10))
        });
        let second = second.await.unwrap();
        holder.join().unwrap();
        assert!(second.is_ok(), "{:?}", second.err());
    }

    #[tokio::test]
    async fn over_budget_prunes_only_reported_runs_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cfg();
        c.max_bytes = 0; // always over budget
        let s = Store::open(dir.path(), c).unwrap();
        for id in 1..=20 {
            s.insert_accepted(&trig(id)).unwrap();
            s.append_log(LogId(id), 1, "line").unwrap();
            s.finish(&trig(id), &Outcome::success(), OutcomeKind::Success, None)
                .unwrap();
        }
        let all = s.outbox_batch(100).unwrap();
        s.ack(&all[..18]).unwrap(); // 19 and 20 still wait for the admin
        s.insert_accepted(&trig(21)).unwrap(); // never started
        s.insert_accepted(&trig(22)).unwrap();
        s.mark_running(LogId(22), None).unwrap(); // running
        s.flush_now().unwrap(); // so that sled's files have a size
        let first = s.prune(None).unwrap();
        assert!(
            (1..18).contains(&first),
            "a tenth per pass, not all: {first}"
        );
        assert!(!s.has_run(LogId(1)).unwrap(), "the oldest goes first");
        assert!(s.read_log(LogId(1), 1, 10, 1024).unwrap().is_none());
        for _ in 0..40 {
            s.prune(None).unwrap();
        }
        let left: Vec<i64> = s
            .recent_runs(100)
            .unwrap()
            .iter()
            .map(|r| r.trigger.log_id.0)
            .collect();
        assert_eq!(
            left,
            vec![22, 21, 20, 19],
            "unfinished and unreported runs stay"
        );
        assert_eq!(s.outbox_len(), 2);
    }

    #[tokio::test]
    async fn idempotency_keys_hold_release_and_remember_success() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), cfg()).unwrap();
        let ttl = Duration::from_secs(60);
        assert_eq!(s.check_key("k", LogId(1), ttl).unwrap(), KeyCheck::Fresh);
        s.insert_accepted(&trig(1)).unwrap();
        s.mark_running(LogId(1), Some("k".into())).unwrap();
        assert_eq!(
            s.check_key("k", LogId(2), ttl).unwrap(),
            KeyCheck::InFlight(LogId(1))
        );
        s.finish(&trig(1), &Outcome::fail("no"), OutcomeKind::Failed, None)
            .unwrap();
        assert_eq!(s.check_key("k", LogId(3), ttl).unwrap(), KeyCheck::Fresh);
        s.insert_accepted(&trig(3)).unwrap();
        s.mark_running(LogId(3), Some("k".into())).unwrap();
        s.finish(&trig(3), &Outcome::success(), OutcomeKind::Success, None)
            .unwrap();
        assert_eq!(
            s.check_key("k", LogId(4), ttl).unwrap(),
            KeyCheck::Succeeded(LogId(3))
        );
    }

    fn bulk_files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.join("store").join(BULK_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn raw_len(s: &Store, id: i64) -> usize {
        s.inner.runs.get(run_key(LogId(id))).unwrap().unwrap().len()
    }

    fn big(id: i64, bytes: usize) -> Trigger {
        let mut t = trig(id);
        t.params = Some("p".repeat(bytes));
        t
    }

    /// Issue 9 #16: sled kept every version of a record holding 4 MiB params in memory. Large
    /// params live in a file from acceptance to the durable end of the run; the records stay
    /// small through every write.
    #[tokio::test]
    async fn large_params_live_in_a_file_until_the_run_ends_durably() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), cfg()).unwrap();
        let bulk_dir = dir.path().join("store").join(BULK_DIR);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&bulk_dir), 0o700);

        // Small params (up to the threshold) stay in the record, as before: no file.
        s.insert_accepted(&big(1, BULK_THRESHOLD)).unwrap();
        assert!(bulk_files(dir.path()).is_empty());
        assert_eq!(
            s.run(LogId(1))
                .unwrap()
                .unwrap()
                .trigger
                .params
                .unwrap()
                .len(),
            BULK_THRESHOLD
        );

        let t = big(2, 4 << 20);
        s.insert_accepted(&t).unwrap();
        let files = bulk_files(dir.path());
        assert_eq!(files.len(), 1);
        assert!(files[0].starts_with("2."), "{files:?}");
        assert_eq!(mode(&bulk_dir.join(&files[0])), 0o600);
        let rec = s.run(LogId(2)).unwrap().unwrap();
        assert_eq!(rec.trigger.params, None);
        assert_eq!(rec.bulk.as_ref().unwrap().bytes, 4 << 20);
        assert!(raw_len(&s, 2) < 1024, "{}", raw_len(&s, 2));
        s.mark_running(LogId(2), None).unwrap();
        assert!(raw_len(&s, 2) < 1024);
        assert!(s
            .finish(&t, &Outcome::success(), OutcomeKind::Success, None)
            .unwrap());
        let rec = s.run(LogId(2)).unwrap().unwrap();
        assert_eq!(rec.state, RunState::Finished);
        assert!(raw_len(&s, 2) < 1024);
        // The file outlives the finished record until that record is on disk.
        assert_eq!(bulk_files(dir.path()), files);
        s.durable().await.unwrap();
        assert!(bulk_files(dir.path()).is_empty());

        // A run finished without a record (recovered from an older journal) keeps no text.
        s.finish(
            &big(3, 1 << 20),
            &Outcome::success(),
            OutcomeKind::Success,
            None,
        )
        .unwrap();
        assert!(raw_len(&s, 3) < 1024);

        // A refused trigger's file goes with its record; a racing duplicate removes only its own.
        s.insert_accepted(&big(4, 1 << 20)).unwrap();
        assert!(matches!(
            s.insert_accepted(&big(4, 1 << 20)),
            Err(StoreError::Duplicate(_))
        ));
        assert_eq!(bulk_files(dir.path()).len(), 1);
        s.forget_accepted(LogId(4)).unwrap();
        s.durable().await.unwrap();
        assert!(bulk_files(dir.path()).is_empty());

        // A GLUE source counts too.
        let mut g = trig(5);
        g.glue = Glue::Script {
            kind: crate::job::GlueKind::Shell,
            source: "#".repeat(1 << 20),
            updated: 9,
        };
        s.insert_accepted(&g).unwrap();
        assert!(raw_len(&s, 5) < 1024);
        assert_eq!(bulk_files(dir.path()).len(), 1);
    }

    /// A queued run with 1 MiB params (and one with a 1 MiB GLUE source) comes back whole after
    /// a restart; a file that vanished makes its run lost (reported, not run without params).
    #[tokio::test]
    async fn large_triggers_survive_a_restart_while_queued() {
        let dir = tempfile::tempdir().unwrap();
        let t = big(1, 1 << 20);
        let mut g = trig(2);
        g.glue = Glue::Script {
            kind: crate::job::GlueKind::Python,
            source: "#".repeat(1 << 20),
            updated: 9,
        };
        {
            let s = Store::open(dir.path(), cfg()).unwrap();
            s.insert_accepted(&t).unwrap();
            s.insert_accepted(&g).unwrap();
            s.insert_accepted(&big(3, 1 << 20)).unwrap();
            s.mark_running(LogId(3), None).unwrap();
            s.insert_accepted(&big(4, 1 << 20)).unwrap();
            s.durable().await.unwrap();
        }
        let gone = bulk_files(dir.path())
            .into_iter()
            .find(|f| f.starts_with("4."))
            .unwrap();
        std::fs::remove_file(dir.path().join("store").join(BULK_DIR).join(gone)).unwrap();
        let s = Store::open(dir.path(), cfg()).unwrap();
        let r = s.recover().unwrap();
        assert_eq!(r.queued.len(), 2);
        assert_eq!(r.queued[0].trigger, t);
        assert_eq!(r.queued[1].trigger, g);
        assert_eq!(r.interrupted.len(), 1);
        assert_eq!(r.interrupted[0].trigger, big(3, 1 << 20));
        assert_eq!(r.lost.len(), 1);
        assert_eq!(r.lost[0].0.trigger.log_id, LogId(4));
        assert!(r.lost[0].1.contains("cannot read"), "{}", r.lost[0].1);
    }

    /// A crash between the file and its record leaves a file no record names; a crash before a
    /// finished run's file was removed leaves one too. Both go at the next open; the file of an
    /// unfinished run stays.
    #[tokio::test]
    async fn orphan_params_files_are_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let bulk_dir = dir.path().join("store").join(BULK_DIR);
        {
            let s = Store::open(dir.path(), cfg()).unwrap();
            s.insert_accepted(&big(1, 1 << 20)).unwrap(); // stays queued
            s.insert_accepted(&big(2, 1 << 20)).unwrap();
            s.finish(
                &big(2, 1 << 20),
                &Outcome::success(),
                OutcomeKind::Success,
                None,
            )
            .unwrap();
            // Written straight to disk: no group commit, so 2's file is not removed.
            s.inner.db.flush().unwrap();
            assert_eq!(bulk_files(dir.path()).len(), 2);
        }
        // A file whose record never landed, one for an unknown name, and a stale one for 1.
        for name in ["7.99", "junk", "1.999999"] {
            std::fs::write(bulk_dir.join(name), b"x").unwrap();
        }
        let s = Store::open(dir.path(), cfg()).unwrap();
        let files = bulk_files(dir.path());
        assert_eq!(files.len(), 1, "{files:?}");
        let rec = s.run(LogId(1)).unwrap().unwrap();
        assert_eq!(files[0], rec.bulk.unwrap().file);
        assert_eq!(s.recover().unwrap().queued[0].trigger, big(1, 1 << 20));
    }

    #[tokio::test]
    async fn concurrent_durable_calls_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), cfg()).unwrap();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..64 {
            let s = s.clone();
            set.spawn(async move {
                s.insert_accepted(&trig(i)).unwrap();
                s.durable().await.unwrap();
            });
        }
        while let Some(r) = set.join_next().await {
            r.unwrap();
        }
        assert_eq!(s.recover().unwrap().queued.len(), 64);
    }
}

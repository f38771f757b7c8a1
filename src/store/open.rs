//! Opening the store: its directory, sled's lock, the schema.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::bulk::remove_orphans;
use super::commit::group_commit;
use super::migrate;
use super::{Inner, Result, Store, StoreError, BULK_DIR, LOCK_WAIT, SCHEMA_VERSION};
use crate::config::StoreConfig;

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
        Self::open_with(data_dir, cfg, lock_wait, true)
    }

    /// Opens a private copy of a store that [`super::copy_store`] made under `data_dir`, for
    /// inspection: the integrity anchor is checked on it directly (no second copy).
    ///
    /// # Errors
    /// As [`Store::open_waiting`].
    pub(crate) fn open_copy(data_dir: &Path, cfg: StoreConfig) -> Result<Self> {
        Self::open_with(data_dir, cfg, Duration::ZERO, false)
    }

    fn open_with(
        data_dir: &Path,
        cfg: StoreConfig,
        lock_wait: Duration,
        check_copy: bool,
    ) -> Result<Self> {
        let dir = data_dir.join("store");
        let unusable = |reason: String| StoreError::Unusable {
            path: dir.display().to_string(),
            reason,
        };
        // Job parameters, logs and outcomes: readable by the executor's user only.
        crate::private_file::create_dir(&dir)
            .map_err(|e| unusable(format!("cannot create it: {e}")))?;
        // Before sled writes anything: a damaged store is refused with its files untouched
        // when that can be known in advance (see `anchor`).
        let anchor = super::anchor::before_open(data_dir, &dir, cfg.cache_bytes, check_copy)
            .map_err(&unusable)?;
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
        let fleet_keys = open("fleet_keys")?;
        let meta = open("meta")?;
        let acks = open("acks")?;
        let integrity =
            super::anchor::after_open(&dir, &db, meta.clone(), &runs, anchor).map_err(&unusable)?;
        let names = super::records::names::HandlerNames::open(meta.clone())
            .map_err(|e| unusable(format!("its handler names: {e}")))?;
        let schema = meta.get("schema").map_err(|e| unusable(e.to_string()))?;
        let schema =
            schema.map(|v| <[u8; 8]>::try_from(v.as_ref()).map_or(u64::MAX, u64::from_be_bytes));
        // Earlier schemas are rewritten in place, once, step by step (a migration cut short
        // runs again, see `migrate`).
        match schema {
            None => {
                meta.insert("schema", &SCHEMA_VERSION.to_be_bytes())
                    .map_err(|e| unusable(e.to_string()))?;
            }
            Some(SCHEMA_VERSION) => {}
            Some(v @ 1..=3) => {
                if v == 1 {
                    migrate::v1_to_v2(&db, &runs, &outbox, &keys, &meta, &names)
                        .map_err(|e| unusable(format!("migrating it from schema 1 to 2: {e}")))?;
                }
                if v <= 2 {
                    migrate::v2_to_v3(&db, &runs, &outbox, &meta, &names)
                        .map_err(|e| unusable(format!("migrating it from schema 2 to 3: {e}")))?;
                }
                migrate::v3_to_v4(&db, &meta)
                    .map_err(|e| unusable(format!("migrating it from schema 3 to 4: {e}")))?;
            }
            Some(v) => {
                return Err(unusable(format!(
                    "schema version {v} is not {SCHEMA_VERSION}, this build's (a newer release wrote it?)"
                )))
            }
        }
        let delivered_below = match meta
            .get(super::outbox::META_DELIVERED)
            .map_err(|e| unusable(e.to_string()))?
        {
            None => 0,
            Some(v) => <[u8; 8]>::try_from(v.as_ref())
                .map(u64::from_be_bytes)
                .map_err(|_| unusable("its delivered-callbacks watermark is damaged".into()))?,
        };
        let bulk_dir = dir.join(BULK_DIR);
        crate::private_file::create_dir(&bulk_dir)
            .map_err(|e| unusable(format!("cannot create {}: {e}", bulk_dir.display())))?;
        remove_orphans(&runs, &names, &bulk_dir);
        private_files(&dir);
        let highest = match runs.last().map_err(|e| unusable(e.to_string()))? {
            Some((k, _)) => super::records::run_id(&k).map_or(i64::MAX, |id| id.0),
            None => i64::MIN,
        };
        let dir_shown = dir.display().to_string();
        let (flush_tx, flush_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            db,
            runs,
            keys,
            logs,
            fleet_keys,
            names,
            dir,
            bulk_dir,
            pending_removals: std::sync::Mutex::new(Vec::new()),
            cfg,
            meta,
            acks,
            waiting: super::outbox::Waiting::new(delivered_below),
            held: super::held::Held::new(highest),
            inflight: super::inflight::InFlight::default(),
            flush_tx,
            on_flush: std::sync::OnceLock::new(),
            flushes_begun: AtomicU64::new(0),
            outcomes_epoch: AtomicU64::new(0),
            outcomes_writing: AtomicU64::new(0),
            background_flush_queued: std::sync::atomic::AtomicBool::new(false),
            flushes_done: AtomicU64::new(0),
            integrity,
            health: Default::default(),
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
}

/// sled creates its files with the process's umask (usually 0644); they hold job parameters and
/// logs, so they are made the owner's alone (the directory is 0700 as well).
pub(super) fn private_files(dir: &Path) {
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

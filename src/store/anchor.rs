//! The integrity anchor: what the store held, kept outside sled's log, so that damage sled
//! cannot see is caught at open.
//!
//! sled 0.34 takes a record with a bad checksum for the torn tail of a crash: it recovers the
//! log up to there and zeroes everything after it. One flipped byte early in `store/db` and the
//! executor would start on an empty journal (callbacks never delivered, old logIds run again).
//! So the store keeps a small file, `store/anchor`, with
//! - the store's id, a random number made when the store was created and also kept in sled's
//!   `meta` tree: a database that lost it, or is another store's, does not match;
//! - a high-water mark: the largest logId the journal held (of a finished run, or pruned; see
//!   [`Store::pruned_watermark`]). A journal whose largest logId is below it lost its end.
//!
//! The anchor lags: it is written at most about once a minute, only when its content changed
//! (an idle executor writes nothing), always after a flush that made what it claims durable,
//! and at a clean stop. Damage that takes away only the last minute's runs is not detected.
//!
//! sled writes to its files while it opens them (a new snapshot file, old ones removed, the
//! log after the recovered tip zeroed, torn segments zeroed): on a damaged store that persists
//! the truncation. A clean stop therefore records the size and mtime of every sled file in the
//! anchor. When the next open finds them changed (the files were modified while no executor
//! ran), the check runs first on a private copy, and a damaged store is refused with its files
//! exactly as they were. After a crash there is no such record, and the check runs after sled
//! has recovered the files in place: copying a store of up to `store.max_bytes` at every restart
//! would cost more than the restart.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::records::run_id;
use super::{Result, Store, StoreError, BULK_DIR};
use crate::job::{LogId, RunState};

/// The anchor's file name in the store directory.
pub(super) const ANCHOR_FILE: &str = "anchor";
const ANCHOR_TMP: &str = ".anchor.tmp";
const META_STORE_ID: &[u8] = b"store_id";
/// The pruned watermark: largest pruned logId and largest pruned `logDateTime`, one value so a
/// crash never keeps one without the other.
const META_PRUNED: &[u8] = b"pruned";
/// The anchor is rewritten at most this often while the executor runs.
const ANCHOR_EVERY: Duration = Duration::from_secs(60);
/// How far back from the journal's end the high-water mark looks for a finished run.
const HIGH_WATER_SCAN: usize = 256;
/// "No watermark" in the atomics.
const NONE: i64 = i64::MIN;

/// The content of `store/anchor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Anchor {
    /// Format of this file.
    version: u32,
    /// The store's id, also in sled's `meta` tree.
    store_id: u64,
    /// The largest logId the store is known to have held durably.
    high_water: Option<i64>,
    /// sled's files as a clean stop left them; none while an executor runs or after a crash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    closed: Option<Vec<FileStamp>>,
}

/// One sled file as it was at a clean stop.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct FileStamp {
    name: String,
    len: u64,
    mtime_s: i64,
    mtime_ns: u32,
}

/// The store's side of the anchor, held by the open store.
pub(super) struct Integrity {
    meta: sled::Tree,
    /// The pruned watermark, read on every `/run` without touching sled.
    pruned_id: AtomicI64,
    pruned_time: AtomicI64,
    /// The anchor on disk and when it was written.
    written: Mutex<(Anchor, Instant)>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A random id, from the OS-seeded keys of the standard library's hasher (no extra crate).
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

fn read_anchor(dir: &Path) -> std::result::Result<Option<Anchor>, String> {
    let path = dir.join(ANCHOR_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            format!(
                "its integrity anchor {} is damaged ({e}); if you know the database itself is intact, removing that file makes xxl-edge accept the store as it is",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Written to a temporary file, fsynced, renamed over the anchor, directory fsynced: after a
/// power cut the anchor is the old one or the new one, never a torn one that would stop the
/// executor. Mode 0600 like every file of the store.
fn write_anchor(dir: &Path, a: &Anchor) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(a).map_err(std::io::Error::other)?;
    crate::private_file::replace_durably(&dir.join(ANCHOR_TMP), &dir.join(ANCHOR_FILE), &bytes)
}

/// sled's files (not the anchor, not the large-trigger files), sorted by name.
fn stamps(dir: &Path) -> std::io::Result<Vec<FileStamp>> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut walk = vec![(dir.to_path_buf(), String::new())];
    while let Some((d, prefix)) = walk.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
            if name == ANCHOR_FILE || name == ANCHOR_TMP || name == BULK_DIR {
                continue;
            }
            let md = entry.metadata()?;
            if md.is_dir() {
                walk.push((entry.path(), format!("{name}/")));
            } else {
                out.push(FileStamp {
                    name,
                    len: md.len(),
                    mtime_s: md.mtime(),
                    mtime_ns: u32::try_from(md.mtime_nsec()).unwrap_or(0),
                });
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn get_i64(v: &[u8], at: usize) -> Option<i64> {
    Some(i64::from_be_bytes(v.get(at..at + 8)?.try_into().ok()?))
}

fn pruned_in(meta: &sled::Tree) -> std::result::Result<Option<(i64, i64)>, String> {
    Ok(meta
        .get(META_PRUNED)
        .map_err(text)?
        .and_then(|v| Some((get_i64(&v, 0)?, get_i64(&v, 8)?))))
}

/// The largest logId sled's journal holds: its last key, or the pruned watermark.
fn held_in(meta: &sled::Tree, runs: &sled::Tree) -> std::result::Result<Option<i64>, String> {
    let last = runs
        .last()
        .map_err(text)?
        .and_then(|(k, _)| run_id(&k))
        .map(|id| id.0);
    let pruned = pruned_in(meta)?.map(|(id, _)| id);
    Ok(last.max(pruned))
}

/// Compares sled's content with the anchor.
fn verify(a: &Anchor, meta: &sled::Tree, runs: &sled::Tree) -> std::result::Result<(), String> {
    const HINT: &str = "if you know the database is as it should be, removing store/anchor makes xxl-edge accept it as it is";
    let id = meta
        .get(META_STORE_ID)
        .map_err(text)?
        .and_then(|v| Some(u64::from_be_bytes(v.as_ref().try_into().ok()?)));
    match id {
        None => {
            return Err(format!(
                "the database has no store id, but store/anchor names store {:016x}: the database is empty or was cut short by damage that sled took for a torn write ({HINT})",
                a.store_id
            ))
        }
        Some(id) if id != a.store_id => {
            return Err(format!(
                "the database is store {id:016x}, but store/anchor names store {:016x}: these files are not one store ({HINT})",
                a.store_id
            ))
        }
        Some(_) => {}
    }
    if let Some(want) = a.high_water {
        let held = held_in(meta, runs)?;
        if held.is_none_or(|h| h < want) {
            return Err(format!(
                "the journal ends at logId {}, but it held logId {want} (store/anchor): its log was cut short by damage that sled took for a torn write ({HINT})",
                held.map_or("none".to_string(), |h| h.to_string())
            ));
        }
    }
    Ok(())
}

/// A private directory under the system's temp dir (`TMPDIR`), mode 0700, removed on drop.
pub(crate) struct ScratchDir(PathBuf);

impl ScratchDir {
    pub(crate) fn new() -> std::io::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "xxl-edge-{}-{:016x}",
            std::process::id(),
            random_u64()
        ));
        // Not recursive: a directory someone else made at this name is an error, not reused.
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(Self(path))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies `data_dir/store` (sled's files and the anchor, not the large-trigger files) to
/// `to/store`, for inspection on a copy: sled writes to the files it opens. Returns `None`,
/// copying nothing, while another process (a running executor) holds the store's lock; the
/// lock is held during the copy, so no executor starts writing halfway through it.
///
/// # Errors
/// A file could not be read or copied.
pub(crate) fn copy_store(data_dir: &Path, to: &Path) -> std::io::Result<Option<()>> {
    let from = data_dir.join("store");
    let _lock = match std::fs::File::open(from.join("db")) {
        // sled's lock is a `flock` on its `db` file; a read-only descriptor can take it too.
        Ok(f) => match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(l) => Some(l),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => return Ok(None),
            Err((_, e)) => return Err(std::io::Error::from(e)),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let to = to.join("store");
    let mut walk = vec![(from, to)];
    while let Some((src, dst)) = walk.pop() {
        std::fs::DirBuilder::new().mode(0o700).create(&dst)?;
        for entry in std::fs::read_dir(&src)? {
            let entry = entry?;
            let name = entry.file_name();
            if name == BULK_DIR || name == ANCHOR_TMP {
                continue;
            }
            if entry.file_type()?.is_dir() {
                walk.push((entry.path(), dst.join(&name)));
            } else {
                let mut r = std::fs::File::open(entry.path())?;
                let mut w = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(dst.join(&name))?;
                std::io::copy(&mut r, &mut w)?;
            }
        }
    }
    Ok(Some(()))
}

/// Before sled opens the store: reads the anchor, and when the files changed since the clean
/// stop that sealed it, checks a private copy first so a damaged store is refused untouched.
pub(super) fn before_open(
    data_dir: &Path,
    dir: &Path,
    cache_bytes: u64,
    check_copy: bool,
) -> std::result::Result<Option<Anchor>, String> {
    let Some(anchor) = read_anchor(dir)? else {
        return Ok(None);
    };
    let Some(closed) = &anchor.closed else {
        return Ok(Some(anchor));
    };
    if !check_copy || stamps(dir).ok().as_ref() == Some(closed) {
        return Ok(Some(anchor));
    }
    tracing::info!(
        store = %dir.display(),
        "The store's files changed since the last clean stop; checking it on a private copy first."
    );
    // A copy that cannot be made (a small tmpfs as TMPDIR, say) is no sign of damage: the
    // check then runs after sled's open, as after a crash. Refusing here would tell the
    // operator to move a healthy store aside.
    let copied = ScratchDir::new()
        .and_then(|scratch| copy_store(data_dir, scratch.path()).map(|c| c.map(|()| scratch)));
    let scratch = match copied {
        Ok(Some(scratch)) => scratch,
        // Another process holds the lock: opening waits for it, or reports it.
        Ok(None) => return Ok(Some(anchor)),
        Err(e) => {
            tracing::warn!(error = %e, "Cannot copy the store to a private directory (TMPDIR) to check it first; checking it as it opens instead.");
            return Ok(Some(anchor));
        }
    };
    let db = sled::Config::new()
        .path(scratch.path().join("store"))
        .cache_capacity(cache_bytes)
        .mode(sled::Mode::LowSpace)
        .flush_every_ms(None)
        .open()
        .map_err(text)?;
    let res = (|| {
        let meta = db.open_tree("meta").map_err(text)?;
        let runs = db.open_tree("runs").map_err(text)?;
        verify(&anchor, &meta, &runs)
    })();
    drop(db);
    res.map(|()| Some(anchor))
}

/// After sled opened the store: compares it with the anchor, gives a store without one its id
/// and anchor (a new store, or one written by a release before the anchor), and clears the
/// clean-stop record (from now on the files change).
pub(super) fn after_open(
    dir: &Path,
    db: &sled::Db,
    meta: sled::Tree,
    runs: &sled::Tree,
    anchor: Option<Anchor>,
) -> std::result::Result<Integrity, String> {
    let anchor = match anchor {
        Some(a) => {
            verify(&a, &meta, runs)?;
            if a.closed.is_some() {
                let a = Anchor { closed: None, ..a };
                write_anchor(dir, &a).map_err(|e| format!("cannot write store/anchor: {e}"))?;
                a
            } else {
                a
            }
        }
        None => {
            let id =
                match meta.get(META_STORE_ID).map_err(text)? {
                    Some(v) => u64::from_be_bytes(v.as_ref().try_into().map_err(|_| {
                        "the store id in sled's meta tree is malformed".to_string()
                    })?),
                    None => {
                        let id = random_u64();
                        meta.insert(META_STORE_ID, &id.to_be_bytes())
                            .map_err(text)?;
                        id
                    }
                };
            // The anchor names only what is durable.
            db.flush().map_err(text)?;
            let a = Anchor {
                version: 1,
                store_id: id,
                high_water: held_in(&meta, runs)?,
                closed: None,
            };
            write_anchor(dir, &a).map_err(|e| format!("cannot write store/anchor: {e}"))?;
            a
        }
    };
    let (pruned_id, pruned_time) = pruned_in(&meta)?.unwrap_or((NONE, NONE));
    Ok(Integrity {
        meta,
        pruned_id: AtomicI64::new(pruned_id),
        pruned_time: AtomicI64::new(pruned_time),
        written: Mutex::new((anchor, Instant::now())),
    })
}

impl Store {
    /// The pruned watermark: the largest logId and the largest `logDateTime` among the runs
    /// retention removed from the journal, or `None` before the first.
    pub fn pruned_watermark(&self) -> Option<(LogId, i64)> {
        let i = &self.inner.integrity;
        let id = i.pruned_id.load(Ordering::Acquire);
        (id != NONE).then(|| (LogId(id), i.pruned_time.load(Ordering::Acquire)))
    }

    /// Raises the pruned watermark to cover a run about to be pruned. Written before the
    /// removal, in the same sled log, so any flush that makes the removal durable makes the
    /// watermark durable first (sled recovers a prefix of its log).
    pub(super) fn raise_watermark(&self, id: LogId, log_date_time: i64) -> Result<()> {
        let i = &self.inner.integrity;
        let old_id = i.pruned_id.load(Ordering::Acquire);
        let old_time = i.pruned_time.load(Ordering::Acquire);
        let (new_id, new_time) = (old_id.max(id.0), old_time.max(log_date_time));
        if (new_id, new_time) == (old_id, old_time) {
            return Ok(());
        }
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&new_id.to_be_bytes());
        v[8..].copy_from_slice(&new_time.to_be_bytes());
        i.meta.insert(META_PRUNED, &v)?;
        i.pruned_time.store(new_time, Ordering::Release);
        i.pruned_id.store(new_id, Ordering::Release);
        Ok(())
    }

    /// The largest logId the journal holds of a finished run (a record that nothing but
    /// retention removes, and retention raises the watermark first), or the watermark.
    fn high_water(&self) -> Result<Option<i64>> {
        let mut hw = self.pruned_watermark().map(|(id, _)| id.0);
        for key in self.inner.runs.iter().keys().rev().take(HIGH_WATER_SCAN) {
            let Some(id) = run_id(&key?) else { continue };
            if self
                .run(id)?
                .is_some_and(|r| matches!(r.state, RunState::Finished | RunState::Reported))
            {
                hw = hw.max(Some(id.0));
                break;
            }
        }
        Ok(hw)
    }

    /// Keeps the anchor up to date while the executor runs; call it periodically. Writes only
    /// when the high-water mark rose and the last write is a minute old, after a flush that
    /// made that mark durable (usually one a run already paid for). An idle store writes
    /// nothing.
    ///
    /// # Errors
    /// The flush or the anchor file failed.
    pub async fn keep_anchor(&self) -> Result<()> {
        let old = {
            let w = lock(&self.inner.integrity.written);
            if w.1.elapsed() < ANCHOR_EVERY {
                return Ok(());
            }
            w.0.clone()
        };
        let epoch = self.flush_epoch();
        let s = self.clone();
        let hw = tokio::task::spawn_blocking(move || s.high_water())
            .await
            .map_err(|e| StoreError::Sled(sled::Error::Io(std::io::Error::other(e))))??;
        let new = Anchor {
            high_water: old.high_water.max(hw),
            closed: None,
            ..old.clone()
        };
        if new == old {
            return Ok(());
        }
        if !self.is_flushed(epoch) {
            self.synced().await?;
        }
        let dir = self.inner.dir.clone();
        let to_write = new.clone();
        tokio::task::spawn_blocking(move || write_anchor(&dir, &to_write))
            .await
            .map_err(std::io::Error::other)
            .and_then(|r| r)
            .map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        *lock(&self.inner.integrity.written) = (new, Instant::now());
        Ok(())
    }

    /// At a clean stop, after the last flush: writes the anchor with the final high-water mark
    /// and the size and mtime of sled's files, so the next open can tell whether they changed
    /// while no executor ran.
    ///
    /// # Errors
    /// The journal could not be read or the anchor not written.
    pub fn seal_anchor(&self) -> Result<()> {
        let hw = self.high_water()?;
        let io = |e: std::io::Error| StoreError::Sled(sled::Error::Io(e));
        let mut w = lock(&self.inner.integrity.written);
        let new = Anchor {
            high_water: w.0.high_water.max(hw),
            closed: Some(stamps(&self.inner.dir).map_err(io)?),
            ..w.0.clone()
        };
        write_anchor(&self.inner.dir, &new).map_err(io)?;
        *w = (new, Instant::now());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::job::{BlockStrategy, Glue, JobId, Outcome, OutcomeKind, Trigger};

    fn trigger(id: i64, time: i64) -> Trigger {
        Trigger {
            job_id: JobId(1),
            log_id: LogId(id),
            log_date_time: time,
            handler: "h".into(),
            params: None,
            block: BlockStrategy::Serial,
            timeout: None,
            glue: Glue::Bean,
            shard_index: 0,
            shard_total: 1,
        }
    }

    fn finish(s: &Store, id: i64, time: i64) {
        let t = trigger(id, time);
        s.insert_accepted(&t, false).unwrap();
        s.finish(&t, &Outcome::success(), OutcomeKind::Success, None)
            .unwrap();
    }

    fn open(dir: &Path) -> Result<Store> {
        Store::open(dir, Config::defaults().store)
    }

    fn unusable(r: Result<Store>) -> String {
        match r {
            Err(e @ StoreError::Unusable { .. }) => e.to_string(),
            Err(e) => panic!("expected Unusable, got {e}"),
            Ok(_) => panic!("expected Unusable, the store opened"),
        }
    }

    /// Every file under `dir` with its bytes.
    fn snapshot(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
        let mut out = std::collections::BTreeMap::new();
        let mut walk = vec![dir.to_path_buf()];
        while let Some(d) = walk.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk.push(p);
                } else {
                    out.insert(p.clone(), std::fs::read(&p).unwrap());
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn a_new_store_gets_an_anchor_and_opens_again() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let s = open(tmp.path()).unwrap();
            finish(&s, 5, 1);
            s.flush_now().unwrap();
            s.seal_anchor().unwrap();
        }
        let a = read_anchor(&tmp.path().join("store")).unwrap().unwrap();
        assert_eq!(a.high_water, Some(5));
        assert!(a.closed.is_some());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(tmp.path().join("store").join(ANCHOR_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let s = open(tmp.path()).unwrap();
        assert!(s.has_run(LogId(5)).unwrap());
        // Opening clears the clean-stop record: the files change from now on.
        let a = read_anchor(&tmp.path().join("store")).unwrap().unwrap();
        assert!(a.closed.is_none());
    }

    #[tokio::test]
    async fn another_stores_database_is_refused() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        for d in [a.path(), b.path()] {
            let s = open(d).unwrap();
            finish(&s, 1, 1);
            s.flush_now().unwrap();
        }
        // b's sled files under a's anchor.
        let anchor = std::fs::read(a.path().join("store/anchor")).unwrap();
        std::fs::write(b.path().join("store/anchor"), anchor).unwrap();
        let msg = unusable(open(b.path()));
        assert!(msg.contains("not one store"), "{msg}");
    }

    #[tokio::test]
    async fn a_journal_below_the_high_water_mark_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        {
            let s = open(tmp.path()).unwrap();
            finish(&s, 7, 1);
            s.flush_now().unwrap();
        }
        let mut a = read_anchor(&dir).unwrap().unwrap();
        a.high_water = Some(8);
        write_anchor(&dir, &a).unwrap();
        let msg = unusable(open(tmp.path()));
        assert!(
            msg.contains("ends at logId 7, but it held logId 8"),
            "{msg}"
        );
        assert!(msg.contains("mv "), "the README's advice: {msg}");
        // A damaged anchor is refused too, with what to do.
        std::fs::write(dir.join(ANCHOR_FILE), b"{\"store_id\":").unwrap();
        let msg = unusable(open(tmp.path()));
        assert!(msg.contains("anchor"), "{msg}");
    }

    /// A store written before the anchor existed (no id in meta) gets both at its first open.
    #[tokio::test]
    async fn a_store_without_an_anchor_gets_one() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let s = open(tmp.path()).unwrap();
            finish(&s, 3, 1);
            s.flush_now().unwrap();
        }
        std::fs::remove_file(tmp.path().join("store/anchor")).unwrap();
        let s = open(tmp.path()).unwrap();
        drop(s);
        let a = read_anchor(&tmp.path().join("store")).unwrap().unwrap();
        assert_eq!(a.high_water, Some(3));
        open(tmp.path()).unwrap();
    }

    /// The experiment behind the copy check: sled writes to the files of a damaged store while
    /// it opens them. After a clean stop, a flipped byte is then caught on a copy and the
    /// operator's files stay exactly as they were.
    #[tokio::test]
    async fn a_damaged_store_is_refused_untouched_after_a_clean_stop() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("store");
        {
            let s = open(tmp.path()).unwrap();
            for id in 1..=50 {
                finish(&s, id, 1);
            }
            s.flush_now().unwrap();
            s.seal_anchor().unwrap();
        }
        let db = dir.join("db");
        let mut bytes = std::fs::read(&db).unwrap();
        bytes[0] ^= 0xff;
        std::fs::write(&db, bytes).unwrap();
        let before = snapshot(tmp.path());
        // sled alone, on a copy: it rewrites files and comes back without the journal.
        let copy = tempfile::tempdir().unwrap();
        copy_store(tmp.path(), copy.path()).unwrap().unwrap();
        let copied = snapshot(copy.path());
        {
            let raw = sled::open(copy.path().join("store")).unwrap();
            assert_eq!(raw.open_tree("runs").unwrap().len(), 0);
        }
        assert_ne!(snapshot(copy.path()), copied, "sled wrote while opening");
        // The store refuses it and leaves every file as it was.
        let msg = unusable(open(tmp.path()));
        assert!(msg.contains("cut short"), "{msg}");
        assert_eq!(snapshot(tmp.path()), before);
    }

    #[tokio::test]
    async fn the_watermark_is_raised_before_pruning_and_survives_a_restart() {
        let tmp = tempfile::tempdir().unwrap();
        // Always over budget: each pass prunes the oldest tenth of the reported runs.
        let mut cfg = Config::defaults().store;
        cfg.max_bytes = 0;
        {
            let s = Store::open(tmp.path(), cfg.clone()).unwrap();
            assert_eq!(s.pruned_watermark(), None);
            for id in 1..=20 {
                finish(&s, id, 1000 + id);
            }
            // Finished but not reported: never pruned.
            assert_eq!(s.prune(None).unwrap(), 0);
            assert_eq!(s.pruned_watermark(), None);
            let b = s.outbox_batch(100).unwrap();
            s.ack(&b).unwrap();
            assert_eq!(s.prune(None).unwrap(), 2);
            assert!(!s.has_run(LogId(2)).unwrap());
            assert!(s.has_run(LogId(3)).unwrap());
            assert_eq!(s.pruned_watermark(), Some((LogId(2), 1002)));
            s.raise_watermark(LogId(1), 5).unwrap();
            assert_eq!(
                s.pruned_watermark(),
                Some((LogId(2), 1002)),
                "never lowered"
            );
            // Pass after pass takes everything, the newest run included.
            while s.prune(None).unwrap() > 0 {}
            assert!(!s.has_run(LogId(20)).unwrap());
            assert_eq!(s.pruned_watermark(), Some((LogId(20), 1020)));
            s.flush_now().unwrap();
            s.seal_anchor().unwrap();
            let a = read_anchor(&tmp.path().join("store")).unwrap().unwrap();
            // The journal is empty; the mark comes from the watermark.
            assert_eq!(a.high_water, Some(20));
        }
        let s = Store::open(tmp.path(), cfg).unwrap();
        assert_eq!(s.pruned_watermark(), Some((LogId(20), 1020)));
    }
}

//! What `xxl-edge state` shows: read from a private copy of the store when the executor is
//! stopped, asked of the running executor (on its socket in the data directory) when it holds
//! the store's lock.
//!
//! Inspection never writes to the data directory: sled writes to the files it opens (its crash
//! recovery rewrites `db`, makes a snapshot file, and on a damaged store zeroes what follows the
//! damage), so the store is copied to a private temporary directory and opened there.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::Config;
use crate::executor::STATE_SOCKET;
use crate::store::{copy_store, ScratchDir, Store, StoreError};

/// Why the state could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// Nothing has run with this data directory yet.
    #[error("no store in {} (nothing has run here yet)", .0.display())]
    NoStore(PathBuf),
    /// The store cannot be used (corrupt, unknown schema).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The executor runs and does not answer on its state socket.
    #[error("the store is in use, but the executor holding it does not answer on {STATE_SOCKET} in the data directory: {0}")]
    Snapshot(std::io::Error),
    /// The private copy to read from could not be made (temp dir full or not writable: set
    /// TMPDIR to a directory with room for the store).
    #[error("cannot copy the store to a private temporary directory to read it (set TMPDIR to a directory with room for it): {0}")]
    Copy(std::io::Error),
}

/// One run as `state` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// The run.
    pub log_id: i64,
    /// Its job.
    pub job_id: i32,
    /// The handler or GLUE kind.
    pub handler: String,
    /// `accepted`, `running`, `finished` or `reported`.
    pub state: &'static str,
    /// The outcome's code, once finished.
    pub code: Option<i32>,
    /// When `/run` accepted it, `yyyy-MM-dd HH:mm:ss` (UTC).
    pub accepted_at: String,
}

/// Counts read from a stopped executor's store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Runs in the journal.
    pub runs: u64,
    /// Accepted, not started.
    pub accepted: u64,
    /// Started, not finished.
    pub running: u64,
    /// Finished, callback not yet acknowledged.
    pub finished: u64,
    /// Acknowledged by an admin.
    pub reported: u64,
    /// Callbacks waiting.
    pub outbox_len: u64,
    /// Age of the oldest waiting callback.
    pub outbox_oldest_age: Option<Duration>,
    /// The store's size on disk.
    pub disk_bytes: u64,
}

/// The state of an executor's data directory.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum State {
    /// The executor is stopped: read from the store.
    Stopped {
        /// Counts.
        counts: Counts,
        /// The most recent runs, newest first.
        recent: Vec<RunSummary>,
    },
    /// The executor runs: what it answered (JSON).
    Running {
        /// The socket it answered on.
        path: PathBuf,
        /// Its answer.
        snapshot: serde_json::Value,
    },
}

/// Reads the state of `data_dir`, with at most `recent` runs listed. Never waits for the
/// store's lock: a held lock means the executor runs, and it is asked instead. Never
/// writes to `data_dir`: a stopped executor's store is read from a private copy (see the
/// module's doc), checked against its integrity anchor like `serve` does.
///
/// Must be called inside a tokio runtime (the store's group commit needs one).
///
/// # Errors
/// [`StateError`].
pub fn read(data_dir: &Path, recent: usize) -> Result<State, StateError> {
    if !data_dir.join("store").exists() {
        return Err(StateError::NoStore(data_dir.to_path_buf()));
    }
    let scratch = ScratchDir::new().map_err(StateError::Copy)?;
    let copied = copy_store(data_dir, scratch.path()).map_err(StateError::Copy)?;
    let opened = match copied {
        Some(()) => Store::open_copy(scratch.path(), Config::defaults().store),
        None => Err(StoreError::Locked {
            path: data_dir.join("store").display().to_string(),
        }),
    };
    match opened {
        Ok(store) => {
            let s = store.stats()?;
            let counts = Counts {
                runs: s.runs,
                accepted: s.accepted,
                running: s.running,
                finished: s.finished,
                reported: s.reported,
                outbox_len: s.outbox_len,
                outbox_oldest_age: s.outbox_oldest_age,
                disk_bytes: s.disk_bytes,
            };
            let recent = store
                .recent_runs(recent)?
                .into_iter()
                .map(|r| RunSummary {
                    log_id: r.trigger.log_id.0,
                    job_id: r.trigger.job_id.0,
                    handler: r.trigger.handler_label(),
                    state: r.state.as_str(),
                    code: r.outcome.as_ref().map(|o| o.code),
                    accepted_at: crate::clock::format_ts(r.accepted_ms),
                })
                .collect();
            Ok(State::Stopped { counts, recent })
        }
        Err(StoreError::Locked { .. }) => {
            let path = data_dir.join(STATE_SOCKET);
            let text = ask(&path).map_err(StateError::Snapshot)?;
            let snapshot = serde_json::from_str(&text)
                .unwrap_or_else(|_| serde_json::Value::String(text.clone()));
            Ok(State::Running { path, snapshot })
        }
        Err(e) => Err(e.into()),
    }
}

/// Reads the running executor's answer on its state socket (bounded in time and size).
fn ask(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let conn = std::os::unix::net::UnixStream::connect(path)?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut text = String::new();
    conn.take(1 << 20).read_to_string(&mut text)?;
    Ok(text)
}

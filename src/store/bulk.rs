//! Large triggers kept out of sled, one file per unfinished run under `store/params/`.

use std::path::Path;

use super::records::v2::{put_bulk_trigger, IoSink};
use super::records::{decode_bulk_trigger, run_key, RunRecord};
use super::Bulk;
use super::{Result, Store, StoreError};
use crate::job::{Glue, LogId, RunState, Trigger};

/// Bytes of the trigger's text that [`BULK_THRESHOLD`](super::BULK_THRESHOLD) counts.
pub(crate) fn bulk_bytes(t: &Trigger) -> usize {
    let source = match &t.glue {
        Glue::Script { source, .. } => source.len(),
        Glue::Bean => 0,
    };
    t.params.as_ref().map_or(0, String::len) + source
}

/// The trigger without its params and GLUE source, built field by field so the large text is
/// never copied.
pub(super) fn stripped(t: &Trigger) -> Trigger {
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

impl Store {
    /// Reads a large trigger back from its file; the error says why it cannot be used.
    pub(super) fn read_bulk(&self, b: &Bulk, id: LogId) -> std::result::Result<Trigger, String> {
        let path = self.inner.bulk_dir.join(&b.file);
        let v = std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let t = decode_bulk_trigger(&v)
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
    pub(super) fn remove_after_flush(&self, rec: &RunRecord) {
        if let Some(b) = &rec.bulk {
            self.inner
                .pending_removals
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(self.inner.bulk_dir.join(&b.file));
        }
    }
}

/// Removes a large-trigger file; one already gone is fine, any other failure leaves an orphan
/// that the next open removes.
pub(super) fn remove_bulk_file(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "Cannot remove a params file; the next start removes it.");
        }
    }
}

/// Writes a large trigger to `path` (mode 0600, schema 2) and fsyncs the file and its
/// directory.
pub(super) fn write_bulk(dir: &Path, path: &Path, trigger: &Trigger) -> Result<()> {
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
            let mut w = IoSink {
                w: std::io::BufWriter::with_capacity(64 * 1024, f),
                err: None,
            };
            put_bulk_trigger(&mut w, trigger);
            if let Some(e) = w.err {
                return Err(e);
            }
            w.w.flush()?;
            w.w.get_ref().sync_all()
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
pub(super) fn remove_orphans(
    runs: &sled::Tree,
    names: &super::records::names::HandlerNames,
    bulk_dir: &Path,
) {
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
            .and_then(|v| RunRecord::decode(&v, names).ok())
            .is_some_and(|rec| {
                matches!(rec.state, RunState::Accepted | RunState::Running)
                    && rec.bulk.is_some_and(|b| b.file == name)
            });
        if !needed {
            remove_bulk_file(&entry.path());
        }
    }
}

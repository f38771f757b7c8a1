//! Migrating a store of an earlier schema in place, at open, one step at a time.
//!
//! ## Schema 1 to 2
//!
//! Every value of `runs`, `outbox` and `keys` that is still JSON is rewritten in the store's
//! own encoding, then `meta.schema` becomes 2 and the whole is flushed. Each value says which
//! schema it is in (JSON opens with `{`, schema 2 never does), so a migration cut short by a
//! crash leaves a mix that the next open simply migrates again: nothing is rewritten twice and
//! nothing is read in the wrong format. `logs` keeps its layout; large-trigger files are read
//! in either schema and so are left as they are until their run ends.
//!
//! ## Schema 2 to 3
//!
//! The `outbox` tree's callbacks move into their runs' records (see [`v2_to_v3`]); nothing
//! else changes.
//!
//! ## Schema 3 to 4
//!
//! Nothing is rewritten (see [`v3_to_v4`]): schema 4 adds a field that only new records
//! carry, the lines of a run's log kept in its finished record. The version changes so that
//! an older release, which cannot read that field, refuses the store instead of failing on
//! its first such record.

use std::time::Instant;

use super::outbox::META_DELIVERED;
use super::records::names::HandlerNames;
use super::records::{is_v1, run_key, v1, OutboxEntry, RunRecord};
use super::StoreError;
use crate::job::{BlockStrategy, Glue, JobId, OutcomeKind, RunState, Trigger};

/// What a migration did, for the log line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Migrated {
    pub(super) runs: u64,
    pub(super) outbox: u64,
    pub(super) keys: u64,
}

/// Rewrites every schema-1 value in schema 2, marks the store schema 2 and flushes.
///
/// # Errors
/// A message naming the tree and key of a value that does not decode, or sled's error: the
/// store is then left as it was found (values already rewritten are valid in either case).
pub(super) fn v1_to_v2(
    db: &sled::Db,
    runs: &sled::Tree,
    outbox: &sled::Tree,
    keys: &sled::Tree,
    meta: &sled::Tree,
    names: &HandlerNames,
) -> Result<Migrated, String> {
    let started = Instant::now();
    let m = Migrated {
        runs: rewrite(runs, "runs", |v| v1::run_record(v)?.encode(names))?,
        outbox: rewrite(outbox, "outbox", |v| Ok(v1::outbox_entry(v)?.encode()))?,
        keys: rewrite(keys, "keys", |v| Ok(v1::key_record(v)?.encode()))?,
    };
    meta.insert("schema", &2u64.to_be_bytes())
        .map_err(|e| e.to_string())?;
    db.flush().map_err(|e| e.to_string())?;
    tracing::info!(
        runs = m.runs,
        outbox = m.outbox,
        keys = m.keys,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Migrated the store from schema 1 to schema 2."
    );
    Ok(m)
}

/// Rewrites the schema-1 values of one tree; returns how many.
fn rewrite(
    tree: &sled::Tree,
    name: &str,
    convert: impl Fn(&[u8]) -> Result<Vec<u8>, StoreError>,
) -> Result<u64, String> {
    let mut n = 0;
    for item in tree.iter() {
        let (k, v) = item.map_err(|e| e.to_string())?;
        if !is_v1(&v) {
            continue;
        }
        let new = convert(&v).map_err(|e| format!("{name} key {:02x?}: {e}", k.as_ref()))?;
        tree.insert(k, new).map_err(|e| e.to_string())?;
        n += 1;
    }
    Ok(n)
}

fn text(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Schema 2 to 3: each callback of the `outbox` tree moves into its run's record, with a new
/// place in the delivery order, and the tree is emptied; then `meta.schema` becomes 3 and the
/// whole is flushed. Returns how many callbacks moved.
///
/// The watermark of delivered callbacks is written first, once: every place handed out before
/// it is delivered (a finished record whose entry had left the outbox was reported), and each
/// entry still waiting gets a place above it. sled recovers a prefix of its writes, so a
/// migration cut short has either not written the watermark (and starts over), or has, and
/// keeps it: entries not yet removed are placed again, still above it, and records whose entry
/// is gone already wait at their new place. A run whose record still said accepted or running
/// (a crash between schema 2's two writes of an outcome) is finished from its entry.
///
/// # Errors
/// A message naming the entry that does not decode, or sled's error.
pub(super) fn v2_to_v3(
    db: &sled::Db,
    runs: &sled::Tree,
    outbox: &sled::Tree,
    meta: &sled::Tree,
    names: &HandlerNames,
) -> Result<u64, String> {
    let started = Instant::now();
    if meta.get(META_DELIVERED).map_err(text)?.is_none() {
        let below = db.generate_id().map_err(text)?;
        meta.insert(META_DELIVERED, &below.to_be_bytes())
            .map_err(text)?;
    }
    let mut moved = 0;
    for item in outbox.iter() {
        let (k, v) = item.map_err(text)?;
        let e =
            OutboxEntry::decode(&v).map_err(|e| format!("outbox key {:02x?}: {e}", k.as_ref()))?;
        let id = e.callback.log_id;
        let rec = match runs.get(run_key(id)).map_err(text)? {
            Some(v) => {
                Some(RunRecord::decode(&v, names).map_err(|e| format!("run {}: {e}", id.0))?)
            }
            None => None,
        };
        let mut rec = match rec {
            Some(r) if matches!(r.state, RunState::Finished | RunState::Reported) => r,
            // Finished by its entry (schema 2's repair at recovery, done once here).
            Some(r) => finished_from(r.without_bulk_text(), &e),
            // Nothing to run again or to show but the callback itself.
            None => finished_from(RunRecord::accepted(placeholder(&e), e.queued_ms), &e),
        };
        rec.state = RunState::Finished;
        rec.outbox_seq = Some(db.generate_id().map_err(text)?);
        rec.trace.clone_from(&e.trace);
        let bytes = rec.encode(names).map_err(text)?;
        runs.insert(run_key(id), bytes).map_err(text)?;
        moved += 1;
    }
    // Only after every record holds its callback.
    for item in outbox.iter().keys() {
        outbox.remove(item.map_err(text)?).map_err(text)?;
    }
    meta.insert("schema", &3u64.to_be_bytes()).map_err(text)?;
    db.flush().map_err(text)?;
    tracing::info!(
        callbacks = moved,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Migrated the store from schema 2 to schema 3."
    );
    Ok(moved)
}

/// Schema 3 to 4: `meta.schema` becomes 4, flushed. Every schema-3 value is a valid schema-4
/// one; only records written from now on may carry a [`LogTail`](super::records::LogTail).
///
/// # Errors
/// sled's.
pub(super) fn v3_to_v4(db: &sled::Db, meta: &sled::Tree) -> Result<(), String> {
    meta.insert("schema", &4u64.to_be_bytes()).map_err(text)?;
    db.flush().map_err(text)?;
    tracing::info!("Migrated the store from schema 3 to schema 4.");
    Ok(())
}

/// A record finished with an outbox entry's outcome.
fn finished_from(mut rec: RunRecord, e: &OutboxEntry) -> RunRecord {
    rec.state = RunState::Finished;
    rec.finished_ms = Some(e.queued_ms);
    rec.outcome = Some(e.callback.outcome.clone());
    rec.kind = Some(e.kind.unwrap_or(if e.callback.outcome.is_success() {
        OutcomeKind::Success
    } else {
        OutcomeKind::Failed
    }));
    rec
}

/// The trigger of a callback whose run record is gone: what the callback names.
fn placeholder(e: &OutboxEntry) -> Trigger {
    Trigger {
        job_id: JobId(0),
        log_id: e.callback.log_id,
        log_date_time: e.callback.log_date_time,
        handler: String::new(),
        params: None,
        block: BlockStrategy::Serial,
        timeout: None,
        glue: Glue::Bean,
        shard_index: 0,
        shard_total: 1,
    }
}

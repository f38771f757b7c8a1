//! Migrating a schema-1 store (JSON records) to schema 2 in place, at open.
//!
//! Every value of `runs`, `outbox` and `keys` that is still JSON is rewritten in the store's
//! own encoding, then `meta.schema` becomes 2 and the whole is flushed. Each value says which
//! schema it is in (JSON opens with `{`, schema 2 never does), so a migration cut short by a
//! crash leaves a mix that the next open simply migrates again: nothing is rewritten twice and
//! nothing is read in the wrong format. `logs` keeps its layout; large-trigger files are read
//! in either schema and so are left as they are until their run ends.

use std::time::Instant;

use super::records::names::HandlerNames;
use super::records::{is_v1, v1};
use super::StoreError;

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

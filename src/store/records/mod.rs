//! The on-disk records of the store and the layout of its keys.
//!
//! The Rust shapes below are what the rest of the store works with; their bytes on disk are
//! schema 2 ([`v2`]), written by hand so that the domain types' serde never reaches the disk.
//! [`v1`] reads what earlier releases wrote, for the migration at open and for old
//! large-trigger files.

use super::bulk::{bulk_bytes, stripped};
use super::{Result, StoreError, BULK_THRESHOLD};
use crate::job::{Callback, LogId, Outcome, OutcomeKind, RunState, Trigger};

pub(super) mod names;
pub(super) mod v1;
pub(super) mod v2;

use names::HandlerNames;

/// True for a schema-1 value: JSON, which always opens with `{` (schema 2 never does).
pub(super) fn is_v1(v: &[u8]) -> bool {
    v.first() == Some(&b'{')
}

/// One run in the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    pub idempotency_key: Option<String>,
    /// Its callback's place in the delivery order once finished: the run is reported once
    /// the store's delivered watermark reaches it (see `waiting`).
    pub outbox_seq: Option<u64>,
    /// `traceid-spanid` of the run's span, so the callback span can link to it.
    pub trace: Option<String>,
    /// Set when the trigger's params and GLUE source were too large for the journal: `trigger`
    /// then holds neither, and until the run ends its whole trigger is in this file.
    pub bulk: Option<Bulk>,
    /// The last lines of the run's log, written with its outcome (schema 4).
    pub log: Option<LogTail>,
}

/// Lines of a run's log kept in its finished record instead of the `logs` tree: what the run
/// wrote that was not yet in the store when it ended (all of a short run's log). The outcome
/// and the lines are then one sled write, not two: a key of its own in `logs` cost as much
/// as the outcome's record (see `logs`, which reads both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogTail {
    /// The number of its first line.
    pub first: u32,
    /// The lines, encoded as a chunk of the `logs` tree is.
    pub chunk: Vec<u8>,
}

/// Where a large trigger is kept while its run is unfinished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bulk {
    /// File name under `store/params/`: `{logId}.{nonce}`, the nonce unique per write, so two
    /// racing `/run`s of one logId never share a file and the loser removes only its own.
    pub file: String,
    /// Bytes of params and source together, for the record.
    pub bytes: u64,
}

impl RunRecord {
    /// A trigger just accepted at `now_ms`.
    pub(super) fn accepted(trigger: Trigger, now_ms: i64) -> Self {
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
            trace: None,
            bulk: None,
            log: None,
        }
    }

    /// A finished record keeps no large text (its file is going away).
    pub(super) fn without_bulk_text(mut self) -> Self {
        if self.bulk.is_some() || bulk_bytes(&self.trigger) > BULK_THRESHOLD {
            self.trigger = stripped(&self.trigger);
        }
        self
    }
}

/// A callback waiting for the admin's acknowledgement: read from its run's record (schema 3),
/// or an entry of schema 2's `outbox` tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// What to send.
    pub callback: Callback,
    /// When it was queued (epoch ms), for the backlog age.
    pub queued_ms: i64,
    /// `traceid-spanid` of the run's span, so the callback span can link to it.
    pub trace: Option<String>,
    /// Why the run ended (schema 2: so a run record lost in a crash could be rebuilt).
    pub kind: Option<OutcomeKind>,
}

/// An admin's acknowledgement of one batch of callbacks, kept for the runs' logs: when it came
/// and which line of each run's log is its "callback finish". One write per batch instead of
/// one log line per run (see `logs`: the line is made from this when `/log` reads). Keyed by
/// the batch's highest place in the delivery order, plus one ([`ack_key`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckRecord {
    /// When the admin answered (epoch ms): the line's time.
    pub at_ms: i64,
    /// Each run of the batch with the number of its line.
    pub lines: Vec<(LogId, u32)>,
}

/// An idempotency key's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The run that holds the key.
    pub log_id: LogId,
    /// True once that run succeeded; a failed run releases its key.
    pub succeeded: bool,
    /// Epoch ms after which the key is forgotten.
    pub expires_ms: i64,
}

impl RunRecord {
    /// The schema-2 bytes, the handler by its number in `names` (added there if new).
    ///
    /// # Errors
    /// I/O writing the names table.
    pub(super) fn encode(&self, names: &HandlerNames) -> Result<Vec<u8>> {
        let n = names.number(&self.trigger.handler)?;
        Ok(v2::run_record(self, n))
    }

    /// Reads a schema-2 value.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] for anything else.
    pub(super) fn decode(v: &[u8], names: &HandlerNames) -> Result<Self> {
        v2::run_record_of(v, &|n| names.name(n)).map_err(StoreError::Corrupt)
    }
}

impl OutboxEntry {
    /// The schema-2 bytes.
    pub(super) fn encode(&self) -> Vec<u8> {
        v2::outbox_entry(self)
    }

    /// Reads a schema-2 value.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] for anything else.
    pub(super) fn decode(v: &[u8]) -> Result<Self> {
        v2::outbox_entry_of(v).map_err(StoreError::Corrupt)
    }
}

impl AckRecord {
    /// The schema-2 bytes.
    pub(super) fn encode(&self) -> Vec<u8> {
        v2::ack_record(self)
    }

    /// Reads a schema-2 value.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] for anything else.
    pub(super) fn decode(v: &[u8]) -> Result<Self> {
        v2::ack_record_of(v).map_err(StoreError::Corrupt)
    }
}

impl KeyRecord {
    /// The schema-2 bytes.
    pub(super) fn encode(&self) -> Vec<u8> {
        v2::key_record(self)
    }

    /// Reads a schema-2 value.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] for anything else.
    pub(super) fn decode(v: &[u8]) -> Result<Self> {
        v2::key_record_of(v).map_err(StoreError::Corrupt)
    }
}

/// Reads a large trigger's file, in either schema: files written before the upgrade stay as
/// they were until their run ends.
///
/// # Errors
/// [`StoreError::Decode`] or [`StoreError::Corrupt`].
pub(super) fn decode_bulk_trigger(v: &[u8]) -> Result<Trigger> {
    if is_v1(v) {
        Ok(v1::bulk_trigger(v)?)
    } else {
        v2::bulk_trigger(v).map_err(StoreError::Corrupt)
    }
}

pub(super) fn run_key(id: LogId) -> [u8; 8] {
    // Flip the sign bit so negative ids sort before positive ones.
    ((id.0 as u64) ^ (1 << 63)).to_be_bytes()
}

pub(super) fn run_id(key: &[u8]) -> Option<LogId> {
    let b: [u8; 8] = key.get(..8)?.try_into().ok()?;
    Some(LogId((u64::from_be_bytes(b) ^ (1 << 63)) as i64))
}

/// An [`AckRecord`]'s key: big-endian, so the first key above a callback's place is the batch
/// that carried it.
pub(super) fn ack_key(below: u64) -> [u8; 8] {
    below.to_be_bytes()
}

pub(super) fn log_key(id: LogId, line: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&run_key(id));
    k[8..].copy_from_slice(&line.to_be_bytes());
    k
}

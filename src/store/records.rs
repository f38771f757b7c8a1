//! The on-disk records of the store and the layout of its keys.

use serde::{Deserialize, Serialize};

use super::bulk::{bulk_bytes, stripped};
use super::BULK_THRESHOLD;
use crate::job::{Callback, LogId, Outcome, OutcomeKind, RunState, Trigger};

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
            bulk: None,
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

pub(super) fn run_key(id: LogId) -> [u8; 8] {
    // Flip the sign bit so negative ids sort before positive ones.
    ((id.0 as u64) ^ (1 << 63)).to_be_bytes()
}

pub(super) fn run_id(key: &[u8]) -> Option<LogId> {
    let b: [u8; 8] = key.get(..8)?.try_into().ok()?;
    Some(LogId((u64::from_be_bytes(b) ^ (1 << 63)) as i64))
}

pub(super) fn log_key(id: LogId, line: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&run_key(id));
    k[8..].copy_from_slice(&line.to_be_bytes());
    k
}

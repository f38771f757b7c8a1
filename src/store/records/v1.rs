//! Schema 1, frozen: the JSON that the previous releases wrote (serde of the domain types of
//! `job.rs` and of the records, as of commit 5656244), mirrored by private structs so that
//! later changes to the domain types cannot change how an old store is read.
//!
//! Used by the migration at open and for large-trigger files written before it; nothing
//! writes this format any more.

use std::time::Duration;

use serde::Deserialize;

use super::{Bulk, KeyRecord, OutboxEntry, RunRecord};
use crate::job::{
    BlockStrategy, Callback, Glue, GlueKind, JobId, LogId, Outcome, OutcomeKind, RunState, Trigger,
};

/// `JobId` and `LogId` were newtypes: plain numbers in JSON.
#[derive(Deserialize)]
struct TriggerV1 {
    job_id: i32,
    log_id: i64,
    log_date_time: i64,
    handler: String,
    params: Option<String>,
    block: BlockV1,
    timeout: Option<DurationV1>,
    glue: GlueV1,
    shard_index: i32,
    shard_total: i32,
}

/// `std::time::Duration` as serde writes it.
#[derive(Deserialize)]
struct DurationV1 {
    secs: u64,
    nanos: u32,
}

/// Unit variants by their Rust name.
#[derive(Deserialize)]
enum BlockV1 {
    Serial,
    DiscardLater,
    CoverEarly,
}

/// Externally tagged: `"Bean"` or `{"Script":{"kind":…,"source":…,"updated":…}}`.
#[derive(Deserialize)]
enum GlueV1 {
    Bean,
    Script {
        kind: GlueKindV1,
        source: String,
        updated: i64,
    },
}

#[derive(Deserialize)]
enum GlueKindV1 {
    Shell,
    Python,
    Python2,
    NodeJs,
    Php,
    PowerShell,
}

#[derive(Deserialize)]
enum RunStateV1 {
    Accepted,
    Running,
    Finished,
    Reported,
}

#[derive(Deserialize)]
enum OutcomeKindV1 {
    Success,
    Failed,
    Timeout,
    Killed,
    Interrupted,
    Duplicate,
}

#[derive(Deserialize)]
struct OutcomeV1 {
    code: i32,
    msg: Option<String>,
}

#[derive(Deserialize)]
struct BulkV1 {
    file: String,
    bytes: u64,
}

#[derive(Deserialize)]
struct RunRecordV1 {
    trigger: TriggerV1,
    state: RunStateV1,
    accepted_ms: i64,
    started_ms: Option<i64>,
    finished_ms: Option<i64>,
    outcome: Option<OutcomeV1>,
    kind: Option<OutcomeKindV1>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    outbox_seq: Option<u64>,
    #[serde(default)]
    bulk: Option<BulkV1>,
}

#[derive(Deserialize)]
struct CallbackV1 {
    log_id: i64,
    log_date_time: i64,
    outcome: OutcomeV1,
}

#[derive(Deserialize)]
struct OutboxEntryV1 {
    callback: CallbackV1,
    queued_ms: i64,
    #[serde(default)]
    trace: Option<String>,
    #[serde(default)]
    kind: Option<OutcomeKindV1>,
}

#[derive(Deserialize)]
struct KeyRecordV1 {
    log_id: i64,
    succeeded: bool,
    expires_ms: i64,
}

impl From<TriggerV1> for Trigger {
    fn from(t: TriggerV1) -> Self {
        Self {
            job_id: JobId(t.job_id),
            log_id: LogId(t.log_id),
            log_date_time: t.log_date_time,
            handler: t.handler,
            params: t.params,
            block: match t.block {
                BlockV1::Serial => BlockStrategy::Serial,
                BlockV1::DiscardLater => BlockStrategy::DiscardLater,
                BlockV1::CoverEarly => BlockStrategy::CoverEarly,
            },
            timeout: t.timeout.map(|d| Duration::new(d.secs, d.nanos)),
            glue: match t.glue {
                GlueV1::Bean => Glue::Bean,
                GlueV1::Script {
                    kind,
                    source,
                    updated,
                } => Glue::Script {
                    kind: match kind {
                        GlueKindV1::Shell => GlueKind::Shell,
                        GlueKindV1::Python => GlueKind::Python,
                        GlueKindV1::Python2 => GlueKind::Python2,
                        GlueKindV1::NodeJs => GlueKind::NodeJs,
                        GlueKindV1::Php => GlueKind::Php,
                        GlueKindV1::PowerShell => GlueKind::PowerShell,
                    },
                    source,
                    updated,
                },
            },
            shard_index: t.shard_index,
            shard_total: t.shard_total,
        }
    }
}

impl From<OutcomeKindV1> for OutcomeKind {
    fn from(k: OutcomeKindV1) -> Self {
        match k {
            OutcomeKindV1::Success => Self::Success,
            OutcomeKindV1::Failed => Self::Failed,
            OutcomeKindV1::Timeout => Self::Timeout,
            OutcomeKindV1::Killed => Self::Killed,
            OutcomeKindV1::Interrupted => Self::Interrupted,
            OutcomeKindV1::Duplicate => Self::Duplicate,
        }
    }
}

impl From<OutcomeV1> for Outcome {
    fn from(o: OutcomeV1) -> Self {
        Self {
            code: o.code,
            msg: o.msg,
        }
    }
}

/// A schema-1 run record.
pub(in crate::store) fn run_record(b: &[u8]) -> serde_json::Result<RunRecord> {
    let r: RunRecordV1 = serde_json::from_slice(b)?;
    Ok(RunRecord {
        trigger: r.trigger.into(),
        state: match r.state {
            RunStateV1::Accepted => RunState::Accepted,
            RunStateV1::Running => RunState::Running,
            RunStateV1::Finished => RunState::Finished,
            RunStateV1::Reported => RunState::Reported,
        },
        accepted_ms: r.accepted_ms,
        started_ms: r.started_ms,
        finished_ms: r.finished_ms,
        outcome: r.outcome.map(Outcome::from),
        kind: r.kind.map(OutcomeKind::from),
        idempotency_key: r.idempotency_key,
        outbox_seq: r.outbox_seq,
        trace: None,
        bulk: r.bulk.map(|b| Bulk {
            file: b.file,
            bytes: b.bytes,
        }),
        log: None,
    })
}

/// A schema-1 outbox entry.
pub(in crate::store) fn outbox_entry(b: &[u8]) -> serde_json::Result<OutboxEntry> {
    let e: OutboxEntryV1 = serde_json::from_slice(b)?;
    Ok(OutboxEntry {
        callback: Callback {
            log_id: LogId(e.callback.log_id),
            log_date_time: e.callback.log_date_time,
            outcome: e.callback.outcome.into(),
        },
        queued_ms: e.queued_ms,
        trace: e.trace,
        kind: e.kind.map(OutcomeKind::from),
    })
}

/// A schema-1 idempotency key record.
pub(in crate::store) fn key_record(b: &[u8]) -> serde_json::Result<KeyRecord> {
    let k: KeyRecordV1 = serde_json::from_slice(b)?;
    Ok(KeyRecord {
        log_id: LogId(k.log_id),
        succeeded: k.succeeded,
        expires_ms: k.expires_ms,
    })
}

/// A large trigger's file as schema 1 wrote it (the whole `Trigger` as JSON).
pub(in crate::store) fn bulk_trigger(b: &[u8]) -> serde_json::Result<Trigger> {
    serde_json::from_slice::<TriggerV1>(b).map(Trigger::from)
}

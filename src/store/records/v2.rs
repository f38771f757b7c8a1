//! Schema 2: the store's own compact encoding, written field by field. Schema 3 keeps it and
//! adds one optional field to run records (their trace, flag `R_TRACE`), which schema 2 kept in
//! its outbox entries.
//!
//! Every value starts with [`FORMAT`], a byte that can never open a JSON value, so a schema-1
//! record (JSON, always `{`) and a schema-2 one are told apart per record: that is what lets a
//! migration that was cut short simply run again. Integers are LEB128 varints (signed ones
//! zigzag-encoded), strings a varint length and UTF-8 bytes, enums one tag byte, optional
//! fields a bit in a leading flags varint. Nothing here follows the domain types' names, so
//! renaming a field in `job.rs` cannot change what is on disk.
//!
//! Decoding checks every length against the bytes that are left, every tag against the known
//! values and rejects unknown flags and trailing bytes: a damaged value is an error, never a
//! panic or a huge allocation.

use std::time::Duration;

use super::{AckRecord, Bulk, KeyRecord, LogTail, OutboxEntry, RunRecord};
use crate::job::{
    BlockStrategy, Callback, Glue, GlueKind, JobId, LogId, Outcome, OutcomeKind, RunState, Trigger,
};

/// The first byte of every schema-2 value.
pub(in crate::store) const FORMAT: u8 = 0x02;

/// The first byte of a run record whose handler is a number in the names table and whose
/// acceptance time is a delta from `logDateTime` (see [`run_record`]).
pub(in crate::store) const FORMAT_NAMED: u8 = 0x03;

/// Where encoded bytes go: a `Vec` for records, a buffered file for large triggers (streamed,
/// so a multi-MiB trigger is not copied into one buffer first).
pub(in crate::store) trait Sink {
    fn put(&mut self, b: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, b: &[u8]) {
        self.extend_from_slice(b);
    }
}

/// A writer that keeps the first I/O error for the caller to check once at the end.
pub(in crate::store) struct IoSink<W> {
    pub(in crate::store) w: W,
    pub(in crate::store) err: Option<std::io::Error>,
}

impl<W: std::io::Write> Sink for IoSink<W> {
    fn put(&mut self, b: &[u8]) {
        if self.err.is_none() {
            if let Err(e) = self.w.write_all(b) {
                self.err = Some(e);
            }
        }
    }
}

fn put_u64(s: &mut impl Sink, mut v: u64) {
    let mut buf = [0u8; 10];
    let mut n = 0;
    loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            buf[n] = byte;
            n += 1;
            break;
        }
        buf[n] = byte | 0x80;
        n += 1;
    }
    s.put(&buf[..n]);
}

fn put_i64(s: &mut impl Sink, v: i64) {
    put_u64(s, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_str(s: &mut impl Sink, v: &str) {
    put_bytes(s, v.as_bytes());
}

/// A varint length and the bytes ([`Reader::bytes`] reads them back).
fn put_bytes(s: &mut impl Sink, v: &[u8]) {
    put_u64(s, v.len() as u64);
    s.put(v);
}

/// A cursor over one value; every read is bounds-checked.
pub(in crate::store) struct Reader<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Starts after the format byte, which must be [`FORMAT`].
    fn new(b: &'a [u8], what: &'static str) -> Result<Self, String> {
        match b.split_first() {
            Some((&FORMAT, rest)) => Ok(Self { b: rest, what }),
            Some((b'{', _)) => Err(format!(
                "{what}: a schema-1 (JSON) value in a schema-2 store"
            )),
            Some((f, _)) => Err(format!("{what}: unknown format byte {f:#04x}")),
            None => Err(format!("{what}: empty value")),
        }
    }

    fn err(&self, why: &str) -> String {
        format!("{}: {why}", self.what)
    }

    fn u8(&mut self) -> Result<u8, String> {
        let (&v, rest) = self.b.split_first().ok_or_else(|| self.err("truncated"))?;
        self.b = rest;
        Ok(v)
    }

    fn u64(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for i in 0..10 {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            if i == 9 && byte > 1 {
                return Err(self.err("varint overflows 64 bits"));
            }
            v |= bits << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }

    fn i64(&mut self) -> Result<i64, String> {
        let z = self.u64()?;
        Ok(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    fn i32(&mut self) -> Result<i32, String> {
        let v = self.i64()?;
        i32::try_from(v).map_err(|_| self.err("32-bit field out of range"))
    }

    fn u32(&mut self) -> Result<u32, String> {
        let v = self.u64()?;
        u32::try_from(v).map_err(|_| self.err("32-bit field out of range"))
    }

    fn str(&mut self) -> Result<String, String> {
        let s = self.bytes()?;
        String::from_utf8(s.to_vec()).map_err(|_| self.err("string is not UTF-8"))
    }

    /// A varint length and that many bytes.
    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.u64()?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l <= self.b.len())
            .ok_or_else(|| self.err("string longer than the value"))?;
        let (s, rest) = self.b.split_at(len);
        self.b = rest;
        Ok(s)
    }

    fn flags(&mut self, known: u64) -> Result<u64, String> {
        let f = self.u64()?;
        if f & !known != 0 {
            return Err(self.err(&format!("unknown flags {:#x}", f & !known)));
        }
        Ok(f)
    }

    fn end(self) -> Result<(), String> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(self.err(&format!("{} trailing bytes", self.b.len())))
        }
    }
}

// Tags. Fixed numbers, never reordered: they are the disk format.

fn state_tag(s: RunState) -> u8 {
    match s {
        RunState::Accepted => 0,
        RunState::Running => 1,
        RunState::Finished => 2,
        RunState::Reported => 3,
    }
}

fn state_of(r: &Reader<'_>, t: u8) -> Result<RunState, String> {
    Ok(match t {
        0 => RunState::Accepted,
        1 => RunState::Running,
        2 => RunState::Finished,
        3 => RunState::Reported,
        _ => return Err(r.err(&format!("unknown run state {t}"))),
    })
}

fn block_tag(b: BlockStrategy) -> u8 {
    match b {
        BlockStrategy::Serial => 0,
        BlockStrategy::DiscardLater => 1,
        BlockStrategy::CoverEarly => 2,
    }
}

fn block_of(r: &Reader<'_>, t: u8) -> Result<BlockStrategy, String> {
    Ok(match t {
        0 => BlockStrategy::Serial,
        1 => BlockStrategy::DiscardLater,
        2 => BlockStrategy::CoverEarly,
        _ => return Err(r.err(&format!("unknown block strategy {t}"))),
    })
}

fn kind_tag(k: OutcomeKind) -> u8 {
    match k {
        OutcomeKind::Success => 0,
        OutcomeKind::Failed => 1,
        OutcomeKind::Timeout => 2,
        OutcomeKind::Killed => 3,
        OutcomeKind::Interrupted => 4,
        OutcomeKind::Duplicate => 5,
    }
}

fn kind_of(r: &Reader<'_>, t: u8) -> Result<OutcomeKind, String> {
    Ok(match t {
        0 => OutcomeKind::Success,
        1 => OutcomeKind::Failed,
        2 => OutcomeKind::Timeout,
        3 => OutcomeKind::Killed,
        4 => OutcomeKind::Interrupted,
        5 => OutcomeKind::Duplicate,
        _ => return Err(r.err(&format!("unknown outcome kind {t}"))),
    })
}

/// Glue tag 0 is BEAN; a script is 1 + its kind.
fn glue_tag(g: &Glue) -> u8 {
    match g {
        Glue::Bean => 0,
        Glue::Script { kind, .. } => match kind {
            GlueKind::Shell => 1,
            GlueKind::Python => 2,
            GlueKind::Python2 => 3,
            GlueKind::NodeJs => 4,
            GlueKind::Php => 5,
            GlueKind::PowerShell => 6,
        },
    }
}

fn glue_kind_of(r: &Reader<'_>, t: u8) -> Result<Option<GlueKind>, String> {
    Ok(match t {
        0 => None,
        1 => Some(GlueKind::Shell),
        2 => Some(GlueKind::Python),
        3 => Some(GlueKind::Python2),
        4 => Some(GlueKind::NodeJs),
        5 => Some(GlueKind::Php),
        6 => Some(GlueKind::PowerShell),
        _ => return Err(r.err(&format!("unknown glue type {t}"))),
    })
}

// Trigger: flags (params, timeout), job, logId, logDateTime, handler (its text, or in a run
// record with `R_NAMED` its number in the names table), [params], block, [timeout secs, nanos],
// glue tag, [source, updated], shard index, shard total.
const T_PARAMS: u64 = 1;
const T_TIMEOUT: u64 = 1 << 1;

fn put_trigger(s: &mut impl Sink, t: &Trigger, handler: Option<u64>) {
    let mut f = 0;
    if t.params.is_some() {
        f |= T_PARAMS;
    }
    if t.timeout.is_some() {
        f |= T_TIMEOUT;
    }
    put_u64(s, f);
    put_i64(s, i64::from(t.job_id.0));
    put_i64(s, t.log_id.0);
    put_i64(s, t.log_date_time);
    match handler {
        Some(n) => put_u64(s, n),
        None => put_str(s, &t.handler),
    }
    if let Some(p) = &t.params {
        put_str(s, p);
    }
    s.put(&[block_tag(t.block)]);
    if let Some(d) = t.timeout {
        put_u64(s, d.as_secs());
        put_u64(s, u64::from(d.subsec_nanos()));
    }
    s.put(&[glue_tag(&t.glue)]);
    if let Glue::Script {
        source, updated, ..
    } = &t.glue
    {
        put_str(s, source);
        put_i64(s, *updated);
    }
    put_i64(s, i64::from(t.shard_index));
    put_i64(s, i64::from(t.shard_total));
}

/// Reads a trigger; `name_of` is `Some` when its handler is a number in the names table.
fn trigger(
    r: &mut Reader<'_>,
    name_of: Option<&dyn Fn(u64) -> Option<String>>,
) -> Result<Trigger, String> {
    let f = r.flags(T_PARAMS | T_TIMEOUT)?;
    let job_id = JobId(r.i32()?);
    let log_id = LogId(r.i64()?);
    let log_date_time = r.i64()?;
    let handler = match name_of {
        Some(name_of) => {
            let n = r.u64()?;
            name_of(n)
                .ok_or_else(|| r.err(&format!("handler number {n} is not in the names table")))?
        }
        None => r.str()?,
    };
    let params = if f & T_PARAMS != 0 {
        Some(r.str()?)
    } else {
        None
    };
    let t = r.u8()?;
    let block = block_of(r, t)?;
    let timeout = if f & T_TIMEOUT != 0 {
        let secs = r.u64()?;
        let nanos = r.u32()?;
        if nanos >= 1_000_000_000 {
            return Err(r.err("timeout nanoseconds out of range"));
        }
        Some(Duration::new(secs, nanos))
    } else {
        None
    };
    let t = r.u8()?;
    let glue = match glue_kind_of(r, t)? {
        None => Glue::Bean,
        Some(kind) => Glue::Script {
            kind,
            source: r.str()?,
            updated: r.i64()?,
        },
    };
    Ok(Trigger {
        job_id,
        log_id,
        log_date_time,
        handler,
        params,
        block,
        timeout,
        glue,
        shard_index: r.i32()?,
        shard_total: r.i32()?,
    })
}

/// A large trigger's file: the format byte and the trigger.
pub(in crate::store) fn put_bulk_trigger(s: &mut impl Sink, t: &Trigger) {
    s.put(&[FORMAT]);
    put_trigger(s, t, None);
}

pub(in crate::store) fn bulk_trigger(b: &[u8]) -> Result<Trigger, String> {
    let mut r = Reader::new(b, "params file")?;
    let t = trigger(&mut r, None)?;
    r.end()?;
    Ok(t)
}

// Run record: FORMAT, flags, state, trigger, accepted, then the optional fields in flag
// order. Start and finish are deltas from acceptance (a byte or two instead of six). Under
// [`FORMAT_NAMED`] the handler is its number in the names table (`names`) and acceptance a delta from
// `logDateTime`: a run record is written twice and rewritten in sled's leaf rewrites, and
// those 20 bytes were half of a short run's record.
const R_STARTED: u64 = 1;
const R_FINISHED: u64 = 1 << 1;
const R_OUTCOME: u64 = 1 << 2;
const R_OUTCOME_MSG: u64 = 1 << 3;
const R_KIND: u64 = 1 << 4;
const R_KEY: u64 = 1 << 5;
const R_OUTBOX: u64 = 1 << 6;
const R_BULK: u64 = 1 << 7;
/// Schema 3: the run's trace, for its callback (schema 2 kept it in the outbox entry).
const R_TRACE: u64 = 1 << 8;
/// Schema 4: the last lines of the run's log (see [`LogTail`]).
const R_LOG: u64 = 1 << 9;
const R_ALL: u64 = (1 << 10) - 1;

/// `handler`: the handler's number in the names table, when it has one.
pub(in crate::store) fn run_record(rec: &RunRecord, handler: Option<u64>) -> Vec<u8> {
    let mut f = 0;
    for (set, bit) in [
        (rec.started_ms.is_some(), R_STARTED),
        (rec.finished_ms.is_some(), R_FINISHED),
        (rec.outcome.is_some(), R_OUTCOME),
        (
            rec.outcome.as_ref().is_some_and(|o| o.msg.is_some()),
            R_OUTCOME_MSG,
        ),
        (rec.kind.is_some(), R_KIND),
        (rec.idempotency_key.is_some(), R_KEY),
        (rec.outbox_seq.is_some(), R_OUTBOX),
        (rec.bulk.is_some(), R_BULK),
        (rec.trace.is_some(), R_TRACE),
        (rec.log.is_some(), R_LOG),
    ] {
        if set {
            f |= bit;
        }
    }
    let mut s = Vec::with_capacity(64);
    s.push(if handler.is_some() {
        FORMAT_NAMED
    } else {
        FORMAT
    });
    put_u64(&mut s, f);
    s.push(state_tag(rec.state));
    put_trigger(&mut s, &rec.trigger, handler);
    if handler.is_some() {
        put_i64(
            &mut s,
            rec.accepted_ms.wrapping_sub(rec.trigger.log_date_time),
        );
    } else {
        put_i64(&mut s, rec.accepted_ms);
    }
    for t in [rec.started_ms, rec.finished_ms].into_iter().flatten() {
        put_i64(&mut s, t.wrapping_sub(rec.accepted_ms));
    }
    if let Some(o) = &rec.outcome {
        put_i64(&mut s, i64::from(o.code));
        if let Some(m) = &o.msg {
            put_str(&mut s, m);
        }
    }
    if let Some(k) = rec.kind {
        s.push(kind_tag(k));
    }
    if let Some(k) = &rec.idempotency_key {
        put_str(&mut s, k);
    }
    if let Some(q) = rec.outbox_seq {
        put_u64(&mut s, q);
    }
    if let Some(b) = &rec.bulk {
        put_str(&mut s, &b.file);
        put_u64(&mut s, b.bytes);
    }
    if let Some(t) = &rec.trace {
        put_str(&mut s, t);
    }
    if let Some(l) = &rec.log {
        put_u64(&mut s, u64::from(l.first));
        put_bytes(&mut s, &l.chunk);
    }
    s
}

/// `name_of`: the names table (see [`run_record`]).
pub(in crate::store) fn run_record_of(
    b: &[u8],
    name_of: &dyn Fn(u64) -> Option<String>,
) -> Result<RunRecord, String> {
    let named = b.first() == Some(&FORMAT_NAMED);
    let mut r = if named {
        Reader {
            b: &b[1..],
            what: "run record",
        }
    } else {
        Reader::new(b, "run record")?
    };
    let f = r.flags(R_ALL)?;
    if f & R_OUTCOME_MSG != 0 && f & R_OUTCOME == 0 {
        return Err(r.err("outcome message without an outcome"));
    }
    let t = r.u8()?;
    let state = state_of(&r, t)?;
    let trigger = trigger(&mut r, named.then_some(name_of))?;
    let accepted_ms = if named {
        trigger.log_date_time.wrapping_add(r.i64()?)
    } else {
        r.i64()?
    };
    let at = |r: &mut Reader<'_>, bit| -> Result<Option<i64>, String> {
        Ok(if f & bit != 0 {
            Some(accepted_ms.wrapping_add(r.i64()?))
        } else {
            None
        })
    };
    let started_ms = at(&mut r, R_STARTED)?;
    let finished_ms = at(&mut r, R_FINISHED)?;
    let outcome = if f & R_OUTCOME != 0 {
        let code = r.i32()?;
        let msg = if f & R_OUTCOME_MSG != 0 {
            Some(r.str()?)
        } else {
            None
        };
        Some(Outcome { code, msg })
    } else {
        None
    };
    let kind = if f & R_KIND != 0 {
        let t = r.u8()?;
        Some(kind_of(&r, t)?)
    } else {
        None
    };
    let idempotency_key = if f & R_KEY != 0 { Some(r.str()?) } else { None };
    let outbox_seq = if f & R_OUTBOX != 0 {
        Some(r.u64()?)
    } else {
        None
    };
    let bulk = if f & R_BULK != 0 {
        Some(Bulk {
            file: r.str()?,
            bytes: r.u64()?,
        })
    } else {
        None
    };
    let trace = if f & R_TRACE != 0 {
        Some(r.str()?)
    } else {
        None
    };
    let log = if f & R_LOG != 0 {
        Some(LogTail {
            first: r.u32()?,
            chunk: r.bytes()?.to_vec(),
        })
    } else {
        None
    };
    r.end()?;
    Ok(RunRecord {
        trigger,
        state,
        accepted_ms,
        started_ms,
        finished_ms,
        outcome,
        kind,
        idempotency_key,
        outbox_seq,
        trace,
        bulk,
        log,
    })
}

// Outbox entry: FORMAT, flags, logId, logDateTime, code, [msg], queued, [trace], [kind].
const O_MSG: u64 = 1;
const O_TRACE: u64 = 1 << 1;
const O_KIND: u64 = 1 << 2;

pub(in crate::store) fn outbox_entry(e: &OutboxEntry) -> Vec<u8> {
    let mut f = 0;
    if e.callback.outcome.msg.is_some() {
        f |= O_MSG;
    }
    if e.trace.is_some() {
        f |= O_TRACE;
    }
    if e.kind.is_some() {
        f |= O_KIND;
    }
    let mut s = Vec::with_capacity(32);
    s.push(FORMAT);
    put_u64(&mut s, f);
    put_i64(&mut s, e.callback.log_id.0);
    put_i64(&mut s, e.callback.log_date_time);
    put_i64(&mut s, i64::from(e.callback.outcome.code));
    if let Some(m) = &e.callback.outcome.msg {
        put_str(&mut s, m);
    }
    put_i64(&mut s, e.queued_ms);
    if let Some(t) = &e.trace {
        put_str(&mut s, t);
    }
    if let Some(k) = e.kind {
        s.push(kind_tag(k));
    }
    s
}

pub(in crate::store) fn outbox_entry_of(b: &[u8]) -> Result<OutboxEntry, String> {
    let mut r = Reader::new(b, "outbox entry")?;
    let f = r.flags(O_MSG | O_TRACE | O_KIND)?;
    let log_id = LogId(r.i64()?);
    let log_date_time = r.i64()?;
    let code = r.i32()?;
    let msg = if f & O_MSG != 0 { Some(r.str()?) } else { None };
    let queued_ms = r.i64()?;
    let trace = if f & O_TRACE != 0 {
        Some(r.str()?)
    } else {
        None
    };
    let kind = if f & O_KIND != 0 {
        let t = r.u8()?;
        Some(kind_of(&r, t)?)
    } else {
        None
    };
    r.end()?;
    Ok(OutboxEntry {
        callback: Callback {
            log_id,
            log_date_time,
            outcome: Outcome { code, msg },
        },
        queued_ms,
        trace,
        kind,
    })
}

// Key record: FORMAT, logId, succeeded (0 or 1), expiry.
pub(in crate::store) fn key_record(k: &KeyRecord) -> Vec<u8> {
    let mut s = Vec::with_capacity(16);
    s.push(FORMAT);
    put_i64(&mut s, k.log_id.0);
    s.push(u8::from(k.succeeded));
    put_i64(&mut s, k.expires_ms);
    s
}

pub(in crate::store) fn key_record_of(b: &[u8]) -> Result<KeyRecord, String> {
    let mut r = Reader::new(b, "key record")?;
    let log_id = LogId(r.i64()?);
    let succeeded = match r.u8()? {
        0 => false,
        1 => true,
        t => return Err(r.err(&format!("succeeded flag {t} is neither 0 nor 1"))),
    };
    let expires_ms = r.i64()?;
    r.end()?;
    Ok(KeyRecord {
        log_id,
        succeeded,
        expires_ms,
    })
}

/// A batch's acknowledgement: FORMAT, time, count, then per run its logId as the difference
/// from the one before (a batch's logIds are close together: one or two bytes each) and its
/// line number.
pub(in crate::store) fn ack_record(a: &AckRecord) -> Vec<u8> {
    let mut s = Vec::with_capacity(12 + 4 * a.lines.len());
    s.push(FORMAT);
    put_i64(&mut s, a.at_ms);
    put_u64(&mut s, a.lines.len() as u64);
    let mut prev = 0i64;
    for &(id, line) in &a.lines {
        put_i64(&mut s, id.0.wrapping_sub(prev));
        put_u64(&mut s, u64::from(line));
        prev = id.0;
    }
    s
}

pub(in crate::store) fn ack_record_of(b: &[u8]) -> Result<AckRecord, String> {
    let mut r = Reader::new(b, "callback acknowledgement")?;
    let at_ms = r.i64()?;
    let n = r.u64()?;
    // Each run takes at least two bytes: a count beyond the value is damage.
    if n > (r.b.len() / 2) as u64 {
        return Err(r.err("more runs than the value holds"));
    }
    let mut lines = Vec::with_capacity(n as usize);
    let mut prev = 0i64;
    for _ in 0..n {
        let id = prev.wrapping_add(r.i64()?);
        lines.push((LogId(id), r.u32()?));
        prev = id;
    }
    r.end()?;
    Ok(AckRecord { at_ms, lines })
}

/// The handler names table: FORMAT, count, names in number order.
pub(in crate::store) fn names(list: &[String]) -> Vec<u8> {
    let mut s = vec![FORMAT];
    put_u64(&mut s, list.len() as u64);
    for n in list {
        put_str(&mut s, n);
    }
    s
}

pub(in crate::store) fn names_of(b: &[u8]) -> Result<Vec<String>, String> {
    let mut r = Reader::new(b, "handler names")?;
    let n = r.u64()?;
    // Each name takes at least its length byte: a count beyond the value is damage.
    if n > r.b.len() as u64 {
        return Err(r.err("more names than bytes"));
    }
    let list = (0..n).map(|_| r.str()).collect::<Result<Vec<_>, _>>()?;
    r.end()?;
    Ok(list)
}

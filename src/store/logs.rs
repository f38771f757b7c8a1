//! Run logs, in one tree keyed by (logId, first line of a chunk).
//!
//! A value is a chunk of consecutive lines: a format byte, then the lines joined by `\n`
//! (stored lines never hold a `\n`: the run log splits them), with the executor's own
//! reference phrases as one byte each ([`PHRASES`]) and each line's `yyyy-MM-dd HH:mm:ss` time
//! packed. A run's output is written as a few chunks instead of a key per line: every key is a
//! sled write with its own framing, and a typical run's five lines cost five of them. The
//! phrases and times are most of a short run's log, and every log byte is written about 2.6
//! times on a lone writer's flash: once in its flush (a flush that crosses a page boundary
//! costs a second 4 KiB page), then again in each of sled's rewrites of the leaf it sits in.
//! A value whose first byte is neither format's is one line as schema 1 stored it, so logs
//! written by an older release read as they are.
//!
//! Format `0x01` (written now), in a chunk's text:
//! - `0x01` escapes the byte after it: handler output keeps any byte in `0x01..=0x08` or
//!   `0x0E..=0x1F` (tab, `\r` and the other whitespace controls need no escape);
//! - at the start of a line, `0x02` and seven bytes are its time as 14 packed decimal digits
//!   (no byte of which is `\n`), and `0x03` is the same time as the line before it in the chunk;
//! - `0x10 + i` stands for `PHRASES[i]`.
//!
//! Format `0x00` (the first schema-2 releases): `0x11 + i` stands for `PHRASES[i]` and `0x1F`
//! escapes the byte after it; times are text.
//!
//! The table is part of the on-disk format: append to it (at most 16), never change or reorder
//! it.

use std::ops::RangeInclusive;

use super::records::log_key;
use super::{Result, Store};
use crate::clock;
use crate::job::LogId;

/// A chunk in format `0x00`.
const CHUNK_V1: u8 = 0x00;
/// A chunk in format `0x01`.
const CHUNK_V2: u8 = 0x01;

/// Format `0x00`: the first phrase's byte, and the escape.
const V1_PHRASE_BASE: u8 = 0x11;
const V1_ESCAPE: u8 = 0x1F;

/// Format `0x01`'s codes.
const ESCAPE: u8 = 0x01;
const TIME: u8 = 0x02;
const SAME_TIME: u8 = 0x03;
const PHRASE_BASE: u8 = 0x10;

/// `yyyy-MM-dd HH:mm:ss`: 19 bytes, 14 of them digits, packed into 7.
const TIME_LEN: usize = 19;
const PACKED_TIME_LEN: usize = 7;

/// The executor's own phrases (see `runlog.rs`), longest and most specific first: the encoder
/// takes the first that matches.
const PHRASES: [&str; 12] = [
    " [xxl-edge] <br>----------- xxl-job job execute start -----------<br>----------- Param:",
    " [xxl-edge] <br>----------- xxl-job job execute end(finish) -----------<br>----------- Result: handleCode=",
    ", handleMsg = ",
    " [xxl-edge] <br>----------- xxl-job job callback finish.",
    " [xxl-edge] <br>----------- xxl-edge trace_id=",
    " [xxl-edge] <br>----------- xxl-job job execute timeout",
    " [xxl-edge] <br>----------- JobThread toStop, stopReason:",
    " [xxl-edge] <br>----------- JobThread Exception:",
    "<br>----------- xxl-job job execute end(error) -----------",
    " [xxl-edge] <br>----------- xxl-job job callback ",
    " [xxl-edge] <br>----------- ",
    " [xxl-edge] ",
];

/// Bytes of handler output that format `0x01` escapes.
fn is_code(c: u8) -> bool {
    matches!(c, 0x01..=0x08 | 0x0E..=0x1F)
}

/// The line's time, when it starts with one.
fn time_of(line: &[u8]) -> Option<&[u8]> {
    let t = line.get(..TIME_LEN)?;
    let ok = t.iter().enumerate().all(|(i, &c)| match i {
        4 | 7 => c == b'-',
        10 => c == b' ',
        13 | 16 => c == b':',
        _ => c.is_ascii_digit(),
    });
    ok.then_some(t)
}

/// Appends `text` to `out` as one line of format `0x01`; `prev` is the line before it in the
/// chunk.
fn encode_into(out: &mut Vec<u8>, text: &str, prev: Option<&str>) {
    let b = text.as_bytes();
    let mut i = 0;
    if let Some(t) = time_of(b) {
        if prev.and_then(|p| time_of(p.as_bytes())) == Some(t) {
            out.push(SAME_TIME);
        } else {
            out.push(TIME);
            let mut digits = t.iter().filter(|c| c.is_ascii_digit()).map(|c| c - b'0');
            while let (Some(hi), Some(lo)) = (digits.next(), digits.next()) {
                out.push(hi << 4 | lo);
            }
        }
        i = TIME_LEN;
    }
    while i < b.len() {
        let c = b[i];
        // Every phrase starts with one of these; most bytes are decided here.
        if matches!(c, b' ' | b',' | b'<') {
            let rest = &b[i..];
            if let Some(n) = PHRASES.iter().position(|p| rest.starts_with(p.as_bytes())) {
                out.push(PHRASE_BASE + n as u8);
                i += PHRASES[n].len();
                continue;
            }
        }
        if is_code(c) {
            out.push(ESCAPE);
        }
        out.push(c);
        i += 1;
    }
}

/// A chunk of format `0x01` holding `lines` (none of which holds a `\n`).
pub(super) fn encode_chunk<S: AsRef<str>>(lines: &[S]) -> Vec<u8> {
    let len = lines.iter().map(|l| l.as_ref().len() + 1).sum::<usize>();
    let mut v = Vec::with_capacity(len + 1);
    v.push(CHUNK_V2);
    let mut prev = None;
    for l in lines {
        if prev.is_some() {
            v.push(b'\n');
        }
        encode_into(&mut v, l.as_ref(), prev);
        prev = Some(l.as_ref());
    }
    v
}

/// Text from bytes that were text when written (a damaged value keeps what is readable).
fn text(out: Vec<u8>) -> String {
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The text of one line of format `0x01`; `prev_time` is the time the line before it started
/// with, if it did.
fn decode(line: &[u8], prev_time: Option<&[u8]>) -> String {
    let mut out = Vec::with_capacity(line.len() * 2);
    let mut line = line;
    match line.split_first() {
        Some((&TIME, rest)) => {
            let (packed, rest) = rest.split_at(rest.len().min(PACKED_TIME_LEN));
            let digits = packed.iter().flat_map(|b| [b >> 4, b & 0x0F]);
            for (i, d) in digits.enumerate() {
                // `yyyy-MM-dd HH:mm:ss`: a separator before digits 4, 6, 8, 10 and 12.
                match i {
                    4 | 6 => out.push(b'-'),
                    8 => out.push(b' '),
                    10 | 12 => out.push(b':'),
                    _ => {}
                }
                out.push(b'0' + d.min(9));
            }
            line = rest;
        }
        Some((&SAME_TIME, rest)) => {
            // A damaged chunk (no line before, or one without a time) keeps what there is.
            if let Some(t) = prev_time {
                out.extend_from_slice(t);
            }
            line = rest;
        }
        _ => {}
    }
    decode_codes(&mut out, line, ESCAPE, PHRASE_BASE..=0x1F);
    text(out)
}

/// The text of one line of format `0x00`.
fn decode_v1(line: &[u8]) -> String {
    let mut out = Vec::with_capacity(line.len() * 2);
    decode_codes(&mut out, line, V1_ESCAPE, V1_PHRASE_BASE..=V1_ESCAPE - 1);
    text(out)
}

/// Appends `line` to `out` with its escapes and phrase bytes undone: `escape` keeps the byte
/// after it, a byte in `phrases` stands for `PHRASES[byte - phrases.start()]` (the two formats
/// differ only in these bytes).
fn decode_codes(out: &mut Vec<u8>, line: &[u8], escape: u8, phrases: RangeInclusive<u8>) {
    let mut it = line.iter();
    while let Some(&c) = it.next() {
        match c {
            c if c == escape => out.extend(it.next()),
            c if phrases.contains(&c) => {
                match PHRASES.get(usize::from(c - phrases.start())) {
                    Some(p) => out.extend_from_slice(p.as_bytes()),
                    // A byte this build has no phrase for (a newer release wrote it): kept.
                    None => out.push(c),
                }
            }
            c => out.push(c),
        }
    }
}

/// A page of a run's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPage {
    /// Lines from `from`, each without its terminator.
    pub lines: Vec<String>,
    /// Number of the last line returned, 0 if none.
    pub to: u32,
}

/// The "callback finish" line after its time (see [`Store::read_log`]): the text the run log
/// wrote into the `logs` tree before acknowledgements were kept.
const CALLBACK_FINISH: &str = PHRASES[3];

/// A page being filled, within its bounds.
struct Page {
    from: u32,
    lines: Vec<String>,
    bytes: usize,
    to: u32,
    max_lines: usize,
    max_bytes: usize,
    /// The "callback finish" line, placed before the first stored line above its number
    /// (a stored line of the same number wins: one written after a crash lost the number).
    callback: Option<(u32, String)>,
}

impl Page {
    /// Adds the lines of a chunk whose first line is `first`, from the page's first line on;
    /// false once the page is full.
    fn add_chunk(&mut self, first: u32, chunk: &[u8]) -> bool {
        for (i, text) in chunk_texts(chunk).enumerate() {
            let n = first.saturating_add(i as u32);
            if n < self.from {
                continue;
            }
            if let Some((c, line)) = self.callback.take_if(|(c, _)| *c <= n) {
                if c < n && !self.push(c, line) {
                    return false;
                }
            }
            if !self.push(n, text) {
                return false;
            }
        }
        true
    }

    /// Adds line `n`; false when the page is full (the line is not added).
    fn push(&mut self, n: u32, mut text: String) -> bool {
        if !self.lines.is_empty()
            && (self.lines.len() >= self.max_lines || self.bytes + text.len() + 1 > self.max_bytes)
        {
            return false;
        }
        if text.len() + 1 > self.max_bytes {
            // A line longer than a whole page (written before lines were split, or a page
            // bound below the line bound) is cut: a page never exceeds its bound.
            let mut cut = self.max_bytes.saturating_sub(1);
            while cut > 0 && !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        self.bytes += text.len() + 1;
        self.to = n;
        self.lines.push(text);
        true
    }
}

/// How a stored value's lines are encoded.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    /// Schema 1: the value is one line of text.
    Line,
    V1,
    V2,
}

/// The lines of a stored value, in order, as stored (see [`chunk_texts`]).
fn chunk_lines(v: &[u8]) -> (Format, impl Iterator<Item = &[u8]>) {
    let (body, format) = match v.split_first() {
        Some((&CHUNK_V2, rest)) => (rest, Format::V2),
        Some((&CHUNK_V1, rest)) => (rest, Format::V1),
        _ => (v, Format::Line),
    };
    // An escaped byte is never `\n` (it is a code), nor is a packed time's, so a plain split
    // is right. `split` on a predicate that never matches yields the whole value once.
    let lines = body.split(move |&b| format != Format::Line && b == b'\n');
    (format, lines)
}

/// The texts of a stored value's lines, in order.
fn chunk_texts(v: &[u8]) -> impl Iterator<Item = String> + '_ {
    let (format, lines) = chunk_lines(v);
    // Only the time of the line before is kept, not a copy of each line.
    let mut prev_time: Option<[u8; TIME_LEN]> = None;
    lines.map(move |line| match format {
        Format::V2 => {
            let text = decode(line, prev_time.as_ref().map(|t| &t[..]));
            prev_time = time_of(text.as_bytes()).and_then(|t| t.try_into().ok());
            text
        }
        Format::V1 => decode_v1(line),
        Format::Line => String::from_utf8_lossy(line).into_owned(),
    })
}

/// The number of a chunk's last line.
fn last_line_of(key: &[u8], value: &[u8]) -> u32 {
    let n = chunk_lines(value).1.count() as u32;
    first_line(key).saturating_add(n.saturating_sub(1))
}

fn first_line(key: &[u8]) -> u32 {
    u32::from_be_bytes(
        key.get(8..12)
            .and_then(|b| b.try_into().ok())
            .unwrap_or([0; 4]),
    )
}

impl Store {
    /// Appends consecutive lines of a run's log, the first numbered `first`, as one chunk (not
    /// flushed on its own: logs ride the next flush). Lines must not contain `\n`.
    ///
    /// # Errors
    /// I/O.
    pub fn append_log_chunk<S: AsRef<str>>(
        &self,
        id: LogId,
        first: u32,
        lines: &[S],
    ) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        self.inner
            .logs
            .insert(log_key(id, first), encode_chunk(lines))?;
        Ok(())
    }

    /// Appends one line to a run's log (tests and benches write single lines).
    ///
    /// # Errors
    /// I/O.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub fn append_log(&self, id: LogId, line: u32, text: &str) -> Result<()> {
        self.append_log_chunk(id, line, &[text])
    }

    /// The number of the last line of a run's log, 0 if none: in the `logs` tree, in its
    /// finished record ([`LogTail`](super::records::LogTail)) or its "callback finish" (see
    /// [`Store::ack_with_lines`]).
    ///
    /// # Errors
    /// I/O.
    pub fn last_log_line(&self, id: LogId) -> Result<u32> {
        let stored = self.last_stored_line(id)?;
        let Some(rec) = self.run(id)? else {
            return Ok(stored);
        };
        let tail = rec.log.as_ref().map_or(0, |t| {
            let n = chunk_lines(&t.chunk).1.count() as u32;
            t.first.saturating_add(n).saturating_sub(1)
        });
        let acked = self.callback_line(&rec)?.map_or(0, |(n, _)| n);
        Ok(stored.max(tail).max(acked))
    }

    /// The number of the last line the `logs` tree holds for a run, 0 if none.
    fn last_stored_line(&self, id: LogId) -> Result<u32> {
        let start = log_key(id, 0);
        let end = log_key(id, u32::MAX);
        // A run's log is one or two chunks unless it printed more than 32 KiB: walking them
        // forward costs less than sled's reverse scan, which descends the tree again for
        // every step (the reporter asks this for every run whose last line it no longer
        // remembers). Longer logs end with the reverse scan.
        const WALKED: usize = 4;
        let mut range = self.inner.logs.range(start..=end);
        let mut last = None;
        for _ in 0..WALKED {
            match range.next() {
                Some(item) => last = Some(item?),
                None => return Ok(last.map_or(0, |(k, v)| last_line_of(&k, &v))),
            }
        }
        if let Some(item) = range.next_back() {
            last = Some(item?);
        }
        Ok(last.map_or(0, |(k, v)| last_line_of(&k, &v)))
    }

    /// Reads lines `from..` of a run's log, bounded by line count and bytes. `None` when the
    /// run is unknown and has no log.
    ///
    /// A log is in up to three places, merged here by line number: chunks in the `logs`
    /// tree, the lines its finished record kept ([`LogTail`](super::records::LogTail)), and
    /// the "callback finish" line, made from the acknowledgement of the batch that carried
    /// the run's callback.
    ///
    /// # Errors
    /// I/O.
    pub fn read_log(
        &self,
        id: LogId,
        from: u32,
        max_lines: usize,
        max_bytes: usize,
    ) -> Result<Option<LogPage>> {
        let from = from.max(1);
        let rec = self.run(id)?;
        let acked = match &rec {
            Some(r) => self.callback_line(r)?,
            None => None,
        };
        let mut page = Page {
            from,
            lines: Vec::new(),
            bytes: 0,
            to: 0,
            max_lines,
            max_bytes,
            callback: acked.filter(|(n, _)| *n >= from).map(|(n, at)| {
                let mut line = String::with_capacity(80);
                clock::push_ts(&mut line, at);
                line.push_str(CALLBACK_FINISH);
                (n, line)
            }),
        };
        let known = rec.is_some();
        let mut tail = rec.and_then(|r| r.log);
        // The chunk that holds `from` starts at or before it.
        let start = match self
            .inner
            .logs
            .range(log_key(id, 0)..=log_key(id, from))
            .next_back()
        {
            Some(item) => first_line(&item?.0),
            None => from,
        };
        let mut full = false;
        for item in self
            .inner
            .logs
            .range(log_key(id, start)..=log_key(id, u32::MAX))
        {
            let (k, v) = item?;
            let first = first_line(&k);
            if let Some(t) = tail.take_if(|t| t.first < first) {
                if !page.add_chunk(t.first, &t.chunk) {
                    full = true;
                    break;
                }
            }
            if !page.add_chunk(first, &v) {
                full = true;
                break;
            }
        }
        if !full {
            if let Some(t) = tail {
                full = !page.add_chunk(t.first, &t.chunk);
            }
        }
        if !full {
            if let Some((c, line)) = page.callback.take() {
                page.push(c, line);
            }
        }
        let Page { lines, to, .. } = page;
        if lines.is_empty() && !known && self.last_stored_line(id)? == 0 {
            return Ok(None);
        }
        Ok(Some(LogPage { lines, to }))
    }

    pub(super) fn remove_log(&self, id: LogId) -> Result<()> {
        // Chunk by chunk, not a sled batch (see `finish`); the run record goes after its log.
        for item in self
            .inner
            .logs
            .range(log_key(id, 0)..=log_key(id, u32::MAX))
        {
            let (k, _) = item?;
            self.inner.logs.remove(k)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{chunk_texts, encode_chunk};
    use crate::job::LogId;
    use crate::store::Store;

    /// Short logs are walked forward, long ones end with the reverse scan; neighbours'
    /// chunks never count.
    #[tokio::test]
    async fn the_last_line_of_logs_of_any_number_of_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), crate::config::Config::defaults().store).unwrap();
        for chunks in 0..=9u32 {
            let id = LogId(i64::from(chunks) * 10);
            s.append_log(LogId(id.0 - 1), 1, "before").unwrap();
            s.append_log_chunk(LogId(id.0 + 1), 1, &["after", "after"])
                .unwrap();
            for c in 0..chunks {
                s.append_log_chunk(id, 1 + 3 * c, &["x", "y", "z"]).unwrap();
            }
            assert_eq!(s.last_log_line(id).unwrap(), 3 * chunks, "{chunks} chunks");
        }
    }

    #[tokio::test]
    async fn pages_cut_across_chunks_and_start_inside_one() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), crate::config::Config::defaults().store).unwrap();
        let id = LogId(7);
        s.append_log_chunk(id, 1, &["a1", "a2", "a3"]).unwrap();
        s.append_log(id, 4, "b4").unwrap();
        s.append_log_chunk(id, 5, &["c5", "", "c7"]).unwrap();
        assert_eq!(s.last_log_line(id).unwrap(), 7);
        let page = s.read_log(id, 2, 3, 1 << 20).unwrap().unwrap();
        assert_eq!(page.lines, ["a2", "a3", "b4"]);
        assert_eq!(page.to, 4);
        let page = s.read_log(id, 6, 10, 1 << 20).unwrap().unwrap();
        assert_eq!(page.lines, ["", "c7"]);
        assert_eq!(page.to, 7);
        let page = s.read_log(id, 8, 10, 1 << 20).unwrap().unwrap();
        assert!(page.lines.is_empty());
        // The byte bound cuts inside a chunk too.
        let page = s.read_log(id, 1, 100, 6).unwrap().unwrap();
        assert_eq!(page.lines, ["a1", "a2"]);
        assert_eq!(page.to, 2);
    }

    fn lines(v: &[u8]) -> Vec<String> {
        chunk_texts(v).collect()
    }

    #[test]
    fn values_of_every_format_split_into_lines() {
        assert_eq!(lines(b"\x01a\n\nb"), ["a", "", "b"]);
        assert_eq!(lines(b"\x01"), [""]);
        // Format 0x00, as the first schema-2 releases wrote it: phrases from 0x11, escape 0x1F.
        assert_eq!(lines(b"\0a\n\nb"), ["a", "", "b"]);
        assert_eq!(
            lines(b"\x002026-11-28 21:00:00\x14\n\x1f\x11x\x1d"),
            [
                "2026-11-28 21:00:00 [xxl-edge] <br>----------- xxl-job job callback finish.",
                "\u{11}x\u{1d}"
            ]
        );
        // Schema 1: one line, newlines and all.
        assert_eq!(lines(b"one\nline"), ["one\nline"]);
    }

    #[test]
    fn phrases_and_times_shrink_the_reference_lines_and_any_text_comes_back_whole() {
        let start = "2026-11-28 21:00:00 [xxl-edge] <br>----------- xxl-job job execute start -----------<br>----------- Param:null";
        let out = "2026-11-28 21:00:00 [xxl-edge] XXL-JOB, Hello World.";
        let end = "2026-11-28 21:00:01 [xxl-edge] <br>----------- xxl-job job execute end(finish) -----------<br>----------- Result: handleCode=200, handleMsg = null";
        let done = "2026-11-28 21:00:01 [xxl-edge] <br>----------- xxl-job job callback finish.";
        let v = encode_chunk(&[start, out, end, done]);
        // Two packed times (8 bytes each), two repeated ones (1 byte each).
        assert_eq!(
            v.len(),
            1 + (8 + 1 + 4) + (1 + 1 + 1 + 21) + (1 + 8 + 1 + 3 + 1 + 4) + (1 + 1 + 1),
            "{v:?}"
        );
        assert_eq!(lines(&v), [start, out, end, done]);
        // Output that holds the codes, the escape, phrases cut short, multi-byte text, and
        // things that look almost like a time.
        let odd = [
            "\u{1}\u{2}\u{3}\u{8}\t\r\u{b}\u{c}\u{e}\u{10}\u{11}\u{1e}\u{1f}x\u{20}",
            "\u{2}2026-11-28 21:00:00",
            " [xxl-edge",
            "<br>----------- ",
            "é [xxl-edge] ü, handleMsg = 中",
            "",
            "2026-11-28 21:00:0",
            "2026-11-28T21:00:00 no",
            "2026-11-28 21:00:0x",
            "9999-99-99 99:99:99",
            "0000-00-00 00:00:00中",
        ];
        for text in odd {
            let v = encode_chunk(&[text]);
            assert_eq!(lines(&v), [text], "{v:?}");
        }
        assert_eq!(lines(&encode_chunk(&odd)), odd);
        // Every byte value, in and out.
        let all: String = (0u8..=0x7f)
            .filter(|&b| b != b'\n')
            .map(char::from)
            .collect();
        assert_eq!(lines(&encode_chunk(&[&all])), std::slice::from_ref(&all));
        let timed = format!("2026-11-28 21:00:00{all}");
        assert_eq!(
            lines(&encode_chunk(&[&timed, &timed])),
            [timed.clone(), timed]
        );
    }

    /// Damaged chunks read as far as they can, never panic.
    #[test]
    fn damaged_times_keep_what_is_readable() {
        // A repeated time with no line before it, a packed time cut short, a bad digit.
        assert_eq!(lines(b"\x01\x03x"), ["x"]);
        assert_eq!(lines(b"\x01\x02\x20\x26"), ["2026"]);
        assert_eq!(
            lines(b"\x01\x02\x2f\x26\x11\x28\x21\x00\x00y"),
            ["2926-11-28 21:00:00y"]
        );
    }
}

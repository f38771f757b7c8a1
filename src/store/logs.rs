//! Run logs, in one tree keyed by (logId, first line of a chunk).
//!
//! A value is a chunk of consecutive lines: a `0x00` byte, then the lines joined by `\n`
//! (stored lines never hold a `\n`: the run log splits them), with the executor's own
//! reference phrases as one byte each ([`PHRASES`]). A run's output is written as a few chunks
//! instead of a key per line: every key is a sled write with its own framing, and a typical
//! run's five lines cost five of them. The phrases are most of a short run's log (the start,
//! end and callback lines are ~100 bytes each of fixed text), and every byte of a flush that
//! crosses a page boundary costs a second 4 KiB page on the flash. A value without the leading
//! `0x00` is one line as schema 1 stored it, so logs written by an older release read as they
//! are.
//!
//! In a chunk's text, a byte `0x11 + i` stands for `PHRASES[i]`, and `0x1F` escapes the byte
//! after it (handler output that holds a byte in `0x11..=0x1F` keeps it). The table is part of
//! the on-disk format: append to it, never change or reorder it.

use super::records::log_key;
use super::{Result, Store};
use crate::job::LogId;

/// Marks a value as a chunk of lines (a schema-1 value is one line of text).
const CHUNK: u8 = 0x00;

/// The first phrase's byte.
const PHRASE_BASE: u8 = 0x11;

/// Escapes the byte after it.
const ESCAPE: u8 = 0x1F;

/// The executor's own phrases (see `runlog.rs`), longest and most specific first: the encoder
/// takes the first that matches. At most 14 (`0x11..=0x1E`).
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

/// Appends `text` to `out`, each phrase of [`PHRASES`] as its byte.
fn encode_into(out: &mut Vec<u8>, text: &str) {
    let b = text.as_bytes();
    let mut i = 0;
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
        if (PHRASE_BASE..=ESCAPE).contains(&c) {
            out.push(ESCAPE);
        }
        out.push(c);
        i += 1;
    }
}

/// The text of one encoded line.
fn decode(line: &[u8]) -> String {
    let mut out = Vec::with_capacity(line.len() * 2);
    let mut it = line.iter();
    while let Some(&c) = it.next() {
        match c {
            ESCAPE => out.extend(it.next()),
            c if (PHRASE_BASE..ESCAPE).contains(&c) => {
                match PHRASES.get(usize::from(c - PHRASE_BASE)) {
                    Some(p) => out.extend_from_slice(p.as_bytes()),
                    // A byte this build has no phrase for (a newer release wrote it): kept.
                    None => out.push(c),
                }
            }
            c => out.push(c),
        }
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// A page of a run's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPage {
    /// Lines from `from`, each without its terminator.
    pub lines: Vec<String>,
    /// Number of the last line returned, 0 if none.
    pub to: u32,
}

/// The lines of a stored value, in order, as stored (see [`line_text`]).
fn chunk_lines(v: &[u8]) -> impl Iterator<Item = (&[u8], bool)> {
    let (body, chunk) = match v.split_first() {
        Some((&CHUNK, rest)) => (rest, true),
        _ => (v, false),
    };
    // An escaped byte is never `\n` (it is in `0x11..=0x1F`), so a plain split is right.
    // `split` on a predicate that never matches yields the whole value once.
    body.split(move |&b| chunk && b == b'\n')
        .map(move |l| (l, chunk))
}

/// A stored line's text: a chunk's line is decoded, a schema-1 line is taken as it is.
fn line_text((line, encoded): (&[u8], bool)) -> String {
    if encoded {
        decode(line)
    } else {
        String::from_utf8_lossy(line).into_owned()
    }
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
        let len = lines.iter().map(|l| l.as_ref().len() + 1).sum::<usize>();
        let mut v = Vec::with_capacity(len + 1);
        v.push(CHUNK);
        for (i, l) in lines.iter().enumerate() {
            if i > 0 {
                v.push(b'\n');
            }
            encode_into(&mut v, l.as_ref());
        }
        self.inner.logs.insert(log_key(id, first), v)?;
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

    /// The number of the last line of a run's log, 0 if none.
    ///
    /// # Errors
    /// I/O.
    pub fn last_log_line(&self, id: LogId) -> Result<u32> {
        let start = log_key(id, 0);
        let end = log_key(id, u32::MAX);
        // Most runs have no log yet when this is asked; a forward probe answers that for the
        // price of a lookup, where sled's reverse scan costs several.
        if self.inner.logs.range(start..=end).next().is_none() {
            return Ok(0);
        }
        Ok(match self.inner.logs.range(start..=end).next_back() {
            Some(item) => {
                let (k, v) = item?;
                let n = chunk_lines(&v).count() as u32;
                first_line(&k).saturating_add(n.saturating_sub(1))
            }
            None => 0,
        })
    }

    /// Reads lines `from..` of a run's log, bounded by line count and bytes. `None` when the
    /// run is unknown and has no log.
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
        let mut lines = Vec::new();
        let mut bytes = 0usize;
        let mut to = 0;
        'chunks: for item in self
            .inner
            .logs
            .range(log_key(id, start)..=log_key(id, u32::MAX))
        {
            let (k, v) = item?;
            let first = first_line(&k);
            for (i, line) in chunk_lines(&v).enumerate() {
                let n = first.saturating_add(i as u32);
                if n < from {
                    continue;
                }
                let mut text = line_text(line);
                if !lines.is_empty()
                    && (lines.len() >= max_lines || bytes + text.len() + 1 > max_bytes)
                {
                    break 'chunks;
                }
                if text.len() + 1 > max_bytes {
                    // A line longer than a whole page (written before lines were split, or a
                    // page bound below the line bound) is cut: a page never exceeds its bound.
                    let mut cut = max_bytes.saturating_sub(1);
                    while cut > 0 && !text.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    text.truncate(cut);
                }
                bytes += text.len() + 1;
                to = n;
                lines.push(text);
            }
        }
        if lines.is_empty() && !self.has_run(id)? && self.last_log_line(id)? == 0 {
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
    use super::{chunk_lines, encode_into, line_text, CHUNK};
    use crate::job::LogId;
    use crate::store::Store;

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
        chunk_lines(v).map(line_text).collect()
    }

    #[test]
    fn values_of_both_schemas_split_into_lines() {
        assert_eq!(lines(b"\0a\n\nb"), ["a", "", "b"]);
        // Schema 1: one line, newlines and all.
        assert_eq!(lines(b"one\nline"), ["one\nline"]);
        assert_eq!(lines(b"\0"), [""]);
    }

    #[test]
    fn phrases_shrink_the_reference_lines_and_any_text_comes_back_whole() {
        let start = "2026-11-28 21:00:00 [xxl-edge] <br>----------- xxl-job job execute start -----------<br>----------- Param:null";
        let end = "2026-11-28 21:00:00 [xxl-edge] <br>----------- xxl-job job execute end(finish) -----------<br>----------- Result: handleCode=200, handleMsg = null";
        let mut v = vec![CHUNK];
        encode_into(&mut v, start);
        v.push(b'\n');
        encode_into(&mut v, end);
        assert!(v.len() < 60, "{} bytes", v.len());
        assert_eq!(lines(&v), [start, end]);
        // Output that holds the phrase bytes, the escape, phrases cut short and multi-byte text.
        let odd = [
            "\u{11}\u{1e}\u{1f}\u{1f}x\u{10}\u{20}",
            " [xxl-edge",
            "<br>----------- ",
            "é [xxl-edge] ü, handleMsg = 中",
            "",
        ];
        for text in odd {
            let mut v = vec![CHUNK];
            encode_into(&mut v, text);
            assert_eq!(lines(&v), [text], "{v:?}");
        }
        // Every byte value, in and out.
        let all: String = (0u8..=0x7f)
            .filter(|&b| b != b'\n')
            .map(char::from)
            .collect();
        let mut v = vec![CHUNK];
        encode_into(&mut v, &all);
        assert_eq!(lines(&v), [all]);
    }
}

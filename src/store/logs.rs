//! Run logs, in one tree keyed by (logId, first line of a chunk).
//!
//! A value is a chunk of consecutive lines: a `0x00` byte, then the lines joined by `\n`
//! (stored lines never hold a `\n`: the run log splits them). A run's output is written as a
//! few chunks instead of a key per line: every key is a sled write with its own framing, and a
//! typical run's five lines cost five of them. A value without the leading `0x00` is one line
//! as schema 1 stored it, so logs written by an older release read as they are.

use super::records::log_key;
use super::{Result, Store};
use crate::job::LogId;

/// Marks a value as a chunk of lines (a schema-1 value is one line of text).
const CHUNK: u8 = 0x00;

/// A page of a run's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPage {
    /// Lines from `from`, each without its terminator.
    pub lines: Vec<String>,
    /// Number of the last line returned, 0 if none.
    pub to: u32,
}

/// The lines of a stored value, in order.
fn chunk_lines(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    let (body, chunk) = match v.split_first() {
        Some((&CHUNK, rest)) => (rest, true),
        _ => (v, false),
    };
    let mut parts = body.split(move |&b| chunk && b == b'\n');
    // `split` on a predicate that never matches yields the whole value once.
    std::iter::from_fn(move || parts.next())
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
            v.extend_from_slice(l.as_ref().as_bytes());
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
                let mut text = String::from_utf8_lossy(line).into_owned();
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
    use super::chunk_lines;
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

    #[test]
    fn values_of_both_schemas_split_into_lines() {
        let got: Vec<&[u8]> = chunk_lines(b"\0a\n\nb").collect();
        assert_eq!(got, vec![&b"a"[..], b"", b"b"]);
        // Schema 1: one line, newlines and all.
        let got: Vec<&[u8]> = chunk_lines(b"one\nline").collect();
        assert_eq!(got, vec![&b"one\nline"[..]]);
        let got: Vec<&[u8]> = chunk_lines(b"\0").collect();
        assert_eq!(got, vec![&b""[..]]);
    }
}

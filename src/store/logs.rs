//! Run logs, in one tree keyed by (logId, line).

use super::records::log_key;
use super::{Result, Store};
use crate::job::LogId;

/// A page of a run's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPage {
    /// Lines from `from`, each without its terminator.
    pub lines: Vec<String>,
    /// Number of the last line returned, 0 if none.
    pub to: u32,
}

impl Store {
    /// Appends one line to a run's log (not flushed on its own: logs ride the next flush).
    ///
    /// # Errors
    /// I/O.
    pub fn append_log(&self, id: LogId, line: u32, text: &str) -> Result<()> {
        self.inner.logs.insert(log_key(id, line), text.as_bytes())?;
        Ok(())
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
                let (k, _) = item?;
                u32::from_be_bytes(k[8..12].try_into().unwrap_or([0; 4]))
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
        let mut lines = Vec::new();
        let mut bytes = 0usize;
        let mut to = 0;
        for item in self
            .inner
            .logs
            .range(log_key(id, from)..=log_key(id, u32::MAX))
        {
            let (k, v) = item?;
            let mut text = String::from_utf8_lossy(&v).into_owned();
            if !lines.is_empty() && (lines.len() >= max_lines || bytes + text.len() + 1 > max_bytes)
            {
                break;
            }
            if text.len() + 1 > max_bytes {
                // A line longer than a whole page (written before lines were split, or a page
                // bound below the line bound) is cut: a page never exceeds its byte bound.
                let mut cut = max_bytes.saturating_sub(1);
                while cut > 0 && !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
            }
            bytes += text.len() + 1;
            to = u32::from_be_bytes(k[8..12].try_into().unwrap_or([0; 4]));
            lines.push(text);
        }
        if lines.is_empty() && !self.has_run(id)? && self.last_log_line(id)? == 0 {
            return Ok(None);
        }
        Ok(Some(LogPage { lines, to }))
    }

    pub(super) fn remove_log(&self, id: LogId) -> Result<()> {
        // Line by line, not a sled batch (see `finish`); the run record goes after its log.
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

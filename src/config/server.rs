//! `[server]`: limits of the HTTP server the admin calls.

use serde::Deserialize;

use super::check::Check;

/// `[server]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    body_limit_bytes: Option<i64>,
    log_page_max_lines: Option<i64>,
    log_page_max_bytes: Option<i64>,
}

/// HTTP server limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest request body.
    pub body_limit_bytes: usize,
    /// Most lines in one `/log` page.
    pub log_page_max_lines: usize,
    /// Most bytes in one `/log` page.
    pub log_page_max_bytes: usize,
}

impl Raw {
    pub(super) fn convert(self, c: &mut Check) -> ServerConfig {
        ServerConfig {
            body_limit_bytes: c.int(
                "server.body_limit_bytes",
                self.body_limit_bytes,
                5 * 1024 * 1024,
                1024..=1 << 30,
            ) as usize,
            log_page_max_lines: c.int(
                "server.log_page_max_lines",
                self.log_page_max_lines,
                // The admin pulls a finished run's log once (issue 9 #11): one page must hold a
                // whole log of ordinary size. A running run is pulled page after page anyway.
                100_000,
                1..=1_000_000,
            ) as usize,
            log_page_max_bytes: c.int(
                "server.log_page_max_bytes",
                self.log_page_max_bytes,
                // The default per-run output cap (4 MiB) plus 64 KiB for the executor's lines.
                4 * 1024 * 1024 + 64 * 1024,
                1024..=1 << 30,
            ) as usize,
        }
    }
}

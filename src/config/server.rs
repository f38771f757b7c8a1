//! `[server]`: limits of the HTTP server the admin calls.

use std::time::Duration;

use serde::Deserialize;

use super::check::Check;
use super::layers::{EnvVar, Kind};

pub(super) const ENV: &[EnvVar] = &[
    EnvVar::new(
        "XXL_EDGE_HEADER_READ_TIMEOUT",
        "server.header_read_timeout_secs",
        Kind::Secs,
    ),
    EnvVar::new(
        "XXL_EDGE_BODY_READ_TIMEOUT",
        "server.body_read_timeout_secs",
        Kind::Secs,
    ),
    EnvVar::new(
        "XXL_EDGE_IDLE_TIMEOUT",
        "server.idle_timeout_secs",
        Kind::Secs,
    ),
    EnvVar::new(
        "XXL_EDGE_SHUTDOWN_DEADLINE",
        "server.shutdown_deadline_secs",
        Kind::Secs,
    ),
    EnvVar::new(
        "XXL_EDGE_MAX_CONNECTIONS",
        "server.max_connections",
        Kind::Int,
    ),
];

/// `[server]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    body_limit_bytes: Option<i64>,
    log_page_max_lines: Option<i64>,
    log_page_max_bytes: Option<i64>,
    header_read_timeout_secs: Option<f64>,
    body_read_timeout_secs: Option<f64>,
    idle_timeout_secs: Option<f64>,
    shutdown_deadline_secs: Option<f64>,
    max_connections: Option<i64>,
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
    /// A request head must arrive whole within this of its first byte (of the accept, for a new
    /// connection), or the connection is closed: a half-sent head would hold it open for ever.
    pub header_read_timeout: Duration,
    /// A request body must arrive whole within this of the handler starting to read it.
    pub body_read_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed (the reference: 90 s).
    pub idle_timeout: Duration,
    /// On shutdown, requests still in flight after this are dropped with their connections, so
    /// that the shutdown steps (registryRemove, killing jobs, callbacks) always run.
    pub shutdown_deadline: Duration,
    /// Most connections open at once, over the API and metrics listeners together; lowered at
    /// start to fit the open-file limit.
    pub max_connections: usize,
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
            // The admin gives up on a call after 3 s; a head is one small segment.
            header_read_timeout: c.secs(
                "server.header_read_timeout_secs",
                self.header_read_timeout_secs,
                10.0,
                0.1..=3600.0,
            ),
            // Room for a 5 MiB GLUE source on a slow link.
            body_read_timeout: c.secs(
                "server.body_read_timeout_secs",
                self.body_read_timeout_secs,
                30.0,
                0.1..=3600.0,
            ),
            idle_timeout: c.secs(
                "server.idle_timeout_secs",
                self.idle_timeout_secs,
                90.0,
                0.1..=86_400.0,
            ),
            // Leaves the README unit's TimeoutStopSec=30 room for the shutdown grace (10 s), the
            // kill grace (5 s) and callback delivery.
            shutdown_deadline: c.secs(
                "server.shutdown_deadline_secs",
                self.shutdown_deadline_secs,
                5.0,
                0.0..=3600.0,
            ),
            // The admins' trigger pools are 200 + 100 threads; beyond the cap a connection
            // waits in the listen backlog, it is not refused.
            max_connections: c.int(
                "server.max_connections",
                self.max_connections,
                256,
                1..=1_000_000,
            ) as usize,
        }
    }
}

//! `[runner]`: queues and concurrency limits.

use std::time::Duration;

use serde::Deserialize;

use super::check::Check;

/// `[runner]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    max_running: Option<i64>,
    max_queue_per_job: Option<i64>,
    idle_reclaim_secs: Option<f64>,
    kill_grace_secs: Option<f64>,
    shutdown_grace_secs: Option<f64>,
}

/// Queue and concurrency limits.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Jobs executing at once; a trigger for an idle job beyond it is refused.
    pub max_running: usize,
    /// Triggers waiting per job; one beyond it is refused.
    pub max_queue_per_job: usize,
    /// An idle job worker is reclaimed after this long.
    pub idle_reclaim: Duration,
    /// Time between SIGTERM and SIGKILL for commands, and for Rust handlers to notice cancellation.
    pub kill_grace: Duration,
    /// On shutdown, how long running jobs may finish before they are killed.
    pub shutdown_grace: Duration,
}

impl Raw {
    pub(super) fn convert(self, c: &mut Check) -> RunnerConfig {
        RunnerConfig {
            max_running: c.int("runner.max_running", self.max_running, 64, 1..=100_000) as usize,
            max_queue_per_job: c.int(
                "runner.max_queue_per_job",
                self.max_queue_per_job,
                1000,
                1..=10_000_000,
            ) as usize,
            idle_reclaim: c.secs(
                "runner.idle_reclaim_secs",
                self.idle_reclaim_secs,
                90.0,
                0.01..=86_400.0,
            ),
            kill_grace: c.secs(
                "runner.kill_grace_secs",
                self.kill_grace_secs,
                5.0,
                0.0..=3600.0,
            ),
            shutdown_grace: c.secs(
                "runner.shutdown_grace_secs",
                self.shutdown_grace_secs,
                10.0,
                0.0..=3600.0,
            ),
        }
    }
}

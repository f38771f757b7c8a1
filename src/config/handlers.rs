//! `[handlers.NAME]`: command handlers of the standalone binary.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::check::Check;

/// `[handlers.NAME]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    /// The argv; `{jobId}`, `{logId}`, `{params}`, `{shardIndex}`, `{shardTotal}` are replaced.
    command: Option<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    working_dir: Option<PathBuf>,
    rerun_safe: Option<bool>,
    /// e.g. `"{jobId}:{params}"`.
    idempotency_key: Option<String>,
    idempotency_ttl_secs: Option<f64>,
}

/// A command handler.
#[derive(Debug, Clone)]
pub struct CommandConfig {
    /// argv, with placeholders.
    pub command: Vec<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub working_dir: Option<PathBuf>,
    /// Run again after a crash interrupted it.
    pub rerun_safe: bool,
    /// Idempotency key template and its time-to-live.
    pub idempotency: Option<(String, Duration)>,
}

/// Converts every handler; a bad one is reported and left out.
pub(super) fn convert(
    raw: BTreeMap<String, Raw>,
    c: &mut Check,
) -> BTreeMap<String, CommandConfig> {
    let mut handlers = BTreeMap::new();
    for (name, h) in raw {
        if name.trim().is_empty() {
            c.problem("handlers", "a handler name must not be empty");
            continue;
        }
        if let Some(handler) = h.convert(&format!("handlers.{name}"), c) {
            handlers.insert(name, handler);
        }
    }
    handlers
}

impl Raw {
    fn convert(self, key: &str, c: &mut Check) -> Option<CommandConfig> {
        let problems = c.problems.len();
        let command = match self.command {
            None => {
                c.problem(format!("{key}.command"), "is required");
                Vec::new()
            }
            Some(command) => {
                if command.first().is_none_or(|p| p.trim().is_empty()) {
                    c.problem(
                        format!("{key}.command"),
                        "must name a program: command = [\"/path/to/program\", \"arg\"]",
                    );
                }
                command
            }
        };
        c.show(format!("{key}.command"), format!("{command:?}"));
        let idempotency = match self.idempotency_key {
            Some(k) if k.trim().is_empty() => {
                c.problem(format!("{key}.idempotency_key"), "must not be empty");
                None
            }
            Some(k) => {
                let ttl = c.secs(
                    &format!("{key}.idempotency_ttl_secs"),
                    self.idempotency_ttl_secs,
                    86_400.0,
                    1.0..=10.0 * 365.0 * 86_400.0,
                );
                c.show(format!("{key}.idempotency_key"), &k);
                Some((k, ttl))
            }
            None => None,
        };
        let rerun_safe = self.rerun_safe.unwrap_or(false);
        c.show(format!("{key}.rerun_safe"), rerun_safe);
        (c.problems.len() == problems).then_some(CommandConfig {
            command,
            env: self.env,
            working_dir: self.working_dir,
            rerun_safe,
            idempotency,
        })
    }
}

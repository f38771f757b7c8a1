//! Domain types of a run: what a trigger asks for and what a run produced.
//!
//! Nothing here knows about HTTP, sled or the XXL-JOB field names; `admin::wire` converts the
//! wire DTOs into these types at the edge so the core never handles strings that stand in for enums.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The admin's job id (`xxl_job_info.id`): the key of a per-job queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct JobId(pub i32);

/// The admin's log id (`xxl_job_log.id`): unique per trigger, the key of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LogId(pub i64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for LogId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What to do with a trigger when its job is already running or has queued triggers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum BlockStrategy {
    /// Queue behind the running one (also the meaning of unknown or absent values).
    Serial,
    /// Refuse the new trigger.
    DiscardLater,
    /// Kill the running and queued runs, then run the new one.
    CoverEarly,
}

impl BlockStrategy {
    /// Parses the admin's enum name; unknown or absent values mean serial, as in the reference.
    pub fn from_wire(s: Option<&str>) -> Self {
        match s {
            Some("DISCARD_LATER") => Self::DiscardLater,
            Some("COVER_EARLY") => Self::CoverEarly,
            _ => Self::Serial,
        }
    }

    /// The admin's spelling, for logs, traces and the journal.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Serial => "SERIAL_EXECUTION",
            Self::DiscardLater => "DISCARD_LATER",
            Self::CoverEarly => "COVER_EARLY",
        }
    }
}

/// A GLUE script language the admin can send source for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum GlueKind {
    /// `GLUE_SHELL`, run with `bash`.
    Shell,
    /// `GLUE_PYTHON`, run with `python3`.
    Python,
    /// `GLUE_PYTHON2`, run with `python`.
    Python2,
    /// `GLUE_NODEJS`, run with `node`.
    NodeJs,
    /// `GLUE_PHP`, run with `php`.
    Php,
    /// `GLUE_POWERSHELL`, run with `pwsh`.
    PowerShell,
}

impl GlueKind {
    /// Every kind, for config validation and docs.
    pub const ALL: [GlueKind; 6] = [
        Self::Shell,
        Self::Python,
        Self::Python2,
        Self::NodeJs,
        Self::Php,
        Self::PowerShell,
    ];

    /// The admin's `glueType` name.
    pub fn wire_name(self) -> &'static str {
        match self {
            Self::Shell => "GLUE_SHELL",
            Self::Python => "GLUE_PYTHON",
            Self::Python2 => "GLUE_PYTHON2",
            Self::NodeJs => "GLUE_NODEJS",
            Self::Php => "GLUE_PHP",
            Self::PowerShell => "GLUE_POWERSHELL",
        }
    }

    /// The name operators write in `glue.enabled` (lower case, no prefix).
    pub fn config_name(self) -> &'static str {
        match self {
            Self::Shell => "shell",
            Self::Python => "python",
            Self::Python2 => "python2",
            Self::NodeJs => "nodejs",
            Self::Php => "php",
            Self::PowerShell => "powershell",
        }
    }

    /// Parses either spelling (`GLUE_SHELL` or `shell`).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|k| k.wire_name() == s || k.config_name().eq_ignore_ascii_case(s))
    }

    /// The interpreter the reference 3.4.2 uses.
    pub fn interpreter(self) -> &'static str {
        match self {
            Self::Shell => "bash",
            Self::Python => "python3",
            Self::Python2 => "python",
            Self::NodeJs => "node",
            Self::Php => "php",
            Self::PowerShell => "pwsh",
        }
    }

    /// The script file suffix the reference uses.
    pub fn suffix(self) -> &'static str {
        match self {
            Self::Shell => ".sh",
            Self::Python | Self::Python2 => ".py",
            Self::NodeJs => ".js",
            Self::Php => ".php",
            Self::PowerShell => ".ps1",
        }
    }
}

/// How the trigger's work is found: a registered handler by name, or a script sent along.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Glue {
    /// `BEAN`: a handler registered under `executorHandler`.
    Bean,
    /// A GLUE script; `updated` (epoch ms) identifies the version of `source`.
    Script {
        /// The language.
        kind: GlueKind,
        /// The script text.
        source: String,
        /// `glueUpdatetime`, the cache key of the script file.
        updated: i64,
    },
}

/// One accepted trigger: everything needed to run it, also after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    /// The job.
    pub job_id: JobId,
    /// The run.
    pub log_id: LogId,
    /// The admin's trigger time, epoch ms; echoed in the callback.
    pub log_date_time: i64,
    /// `executorHandler`; empty for GLUE jobs.
    pub handler: String,
    /// `executorParams`, absent when the admin sent null.
    pub params: Option<String>,
    /// Block strategy for this trigger.
    pub block: BlockStrategy,
    /// `executorTimeout` when positive.
    pub timeout: Option<Duration>,
    /// BEAN or a script.
    pub glue: Glue,
    /// `broadcastIndex`.
    pub shard_index: i32,
    /// `broadcastTotal`.
    pub shard_total: i32,
}

impl Glue {
    /// The admin's `glueType` name: `BEAN` or a `GLUE_*` kind.
    pub fn type_name(&self) -> &'static str {
        match self {
            Glue::Bean => "BEAN",
            Glue::Script { kind, .. } => kind.wire_name(),
        }
    }
}

impl Trigger {
    /// The registered handler name for BEAN jobs, `""` for scripts (their handler field is
    /// meaningless), as traces record it.
    pub fn bean_handler(&self) -> &str {
        match self.glue {
            Glue::Bean => &self.handler,
            Glue::Script { .. } => "",
        }
    }

    /// The name used for metric labels and logs: the handler, or the glue kind for scripts.
    pub fn handler_label(&self) -> String {
        match &self.glue {
            Glue::Bean => self.handler.clone(),
            Glue::Script { kind, .. } => kind.wire_name().to_string(),
        }
    }
}

#[cfg(test)]
impl Trigger {
    /// A BEAN trigger of handler `h` for job 1, the shape most unit tests start from.
    pub(crate) fn for_test(log_id: i64) -> Self {
        Self {
            job_id: JobId(1),
            log_id: LogId(log_id),
            log_date_time: 1,
            handler: "h".into(),
            params: None,
            block: BlockStrategy::Serial,
            timeout: None,
            glue: Glue::Bean,
            shard_index: 0,
            shard_total: 1,
        }
    }
}

/// The admin's success code.
pub const CODE_SUCCESS: i32 = 200;
/// The admin's failure code.
pub const CODE_FAIL: i32 = 500;
/// The admin's timeout code.
pub const CODE_TIMEOUT: i32 = 502;

/// Longest `handleMsg` the reference sends; longer ones are cut and get `...`.
pub const MAX_HANDLE_MSG_CHARS: usize = 50_000;

/// The result of one run as the admin will see it: `handleCode` and `handleMsg`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// 200 success, 500 failure, 502 timeout, or any other positive code a handler chose.
    pub code: i32,
    /// Optional message shown in the admin.
    pub msg: Option<String>,
}

impl Outcome {
    /// Success without a message.
    pub fn success() -> Self {
        Self {
            code: CODE_SUCCESS,
            msg: None,
        }
    }

    /// Success with a message.
    pub fn success_with(msg: impl Into<String>) -> Self {
        Self {
            code: CODE_SUCCESS,
            msg: Some(msg.into()),
        }
    }

    /// Failure (code 500) with a message.
    pub fn fail(msg: impl Into<String>) -> Self {
        Self {
            code: CODE_FAIL,
            msg: Some(msg.into()),
        }
    }

    /// A custom code, passed to the admin unchanged when positive (protocol §4.3).
    pub fn code(code: i32, msg: Option<String>) -> Self {
        Self { code, msg }
    }

    /// Applies the reference's rules: a non-positive code is a lost result, and long messages
    /// are cut, so the admin's 15 000-char column and our outbox stay bounded.
    pub fn normalized(self) -> Self {
        if self.code <= 0 {
            return Self::fail("job handle result lost.");
        }
        let msg = self.msg.map(|m| {
            if m.chars().count() > MAX_HANDLE_MSG_CHARS {
                let mut cut: String = m.chars().take(MAX_HANDLE_MSG_CHARS).collect();
                cut.push_str("...");
                cut
            } else {
                m
            }
        });
        Self {
            code: self.code,
            msg,
        }
    }

    /// True for code 200.
    pub fn is_success(&self) -> bool {
        self.code == CODE_SUCCESS
    }
}

/// Why a run ended the way it did, for metrics (bounded) and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum OutcomeKind {
    /// Code 200.
    Success,
    /// The handler reported a failure or a custom code.
    Failed,
    /// `executorTimeout` elapsed.
    Timeout,
    /// Killed by `/kill`, a replacement, COVER_EARLY or shutdown.
    Killed,
    /// The executor stopped (crash or power loss) while the run executed.
    Interrupted,
    /// An idempotency key matched an earlier successful run, so nothing ran.
    Duplicate,
}

impl OutcomeKind {
    /// Lower-case label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Timeout => "timeout",
            Self::Killed => "killed",
            Self::Interrupted => "interrupted",
            Self::Duplicate => "duplicate",
        }
    }
}

/// Where a run is in its life; the journal stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RunState {
    /// `/run` answered 200; not started.
    Accepted,
    /// The handler was started.
    Running,
    /// The outcome is known and its callback is in the outbox.
    Finished,
    /// The admin acknowledged the callback.
    Reported,
}

impl RunState {
    /// Lower-case name for `xxl-edge state`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Running => "running",
            Self::Finished => "finished",
            Self::Reported => "reported",
        }
    }
}

/// A callback waiting in the outbox: what the admin gets for one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Callback {
    /// The run.
    pub log_id: LogId,
    /// Echo of the trigger time.
    pub log_date_time: i64,
    /// The result.
    pub outcome: Outcome,
}

/// Stop reasons, exactly as the reference writes them (protocol §4.4).
pub mod reason {
    /// `/kill` from the admin.
    pub const KILL: &str = "scheduling center kill job.";
    /// COVER_EARLY replaced the worker.
    pub const COVER_EARLY: &str = "block strategy effect：Cover Early";
    /// A BEAN job now names another handler.
    pub const CHANGE_HANDLER: &str =
        "change jobhandler or glue type, and terminate the old job thread.";
    /// A GLUE job has a new source version or kind.
    pub const CHANGE_SOURCE: &str =
        "change job source or glue type, and terminate the old job thread.";
    /// Graceful shutdown.
    pub const SHUTDOWN: &str = "web container destroy and kill the job.";
    /// Suffix for the run that was executing.
    pub const RUNNING_SUFFIX: &str = " [job running, killed]";
    /// Suffix for runs still queued.
    pub const QUEUED_SUFFIX: &str = " [job not executed, in the job queue, killed.]";
    /// The timeout message (with the reference's trailing space).
    pub const TIMEOUT: &str = "job execute timeout ";
    /// A run interrupted by a crash or power loss.
    pub const RESTARTED: &str =
        "xxl-edge restarted during the run: the executor stopped (crash, kill -9 or power loss) while this run was executing, so its result is unknown";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_strategy_defaults_to_serial() {
        assert_eq!(BlockStrategy::from_wire(None), BlockStrategy::Serial);
        assert_eq!(BlockStrategy::from_wire(Some("x")), BlockStrategy::Serial);
        assert_eq!(
            BlockStrategy::from_wire(Some("COVER_EARLY")),
            BlockStrategy::CoverEarly
        );
    }

    #[test]
    fn outcome_rules_follow_the_reference() {
        assert_eq!(
            Outcome::code(0, None).normalized(),
            Outcome::fail("job handle result lost.")
        );
        assert_eq!(Outcome::code(201, None).normalized().code, 201);
        let long = "x".repeat(MAX_HANDLE_MSG_CHARS + 10);
        let msg = Outcome::fail(long).normalized().msg.unwrap();
        assert_eq!(msg.chars().count(), MAX_HANDLE_MSG_CHARS + 3);
        assert!(msg.ends_with("..."));
    }

    #[test]
    fn glue_type_names_are_the_admins() {
        assert_eq!(Glue::Bean.type_name(), "BEAN");
        let g = Glue::Script {
            kind: GlueKind::Python2,
            source: String::new(),
            updated: 0,
        };
        assert_eq!(g.type_name(), "GLUE_PYTHON2");
    }

    #[test]
    fn glue_kind_parses_both_spellings() {
        assert_eq!(GlueKind::parse("GLUE_SHELL"), Some(GlueKind::Shell));
        assert_eq!(GlueKind::parse("nodejs"), Some(GlueKind::NodeJs));
        assert_eq!(GlueKind::parse("GLUE_GROOVY"), None);
    }
}

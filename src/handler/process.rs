//! Child processes as handlers: configured commands and GLUE scripts.
//!
//! Each run gets its own process group, so kill and timeout reach every child, grandchild and
//! orphan: SIGTERM to the group, then SIGKILL to the group after the grace period. Output is
//! copied into the run log line by line as it is produced, with a cap on line length so a
//! process that never prints a newline cannot exhaust memory.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

use super::{render_template, BoxFuture, JobContext, JobHandler, JobLog};
use crate::config::CommandConfig;
use crate::job::{GlueKind, JobId, Outcome, Trigger};

/// Longest line copied from a child's output; longer ones are split.
const MAX_LINE_BYTES: usize = 16 * 1024;

/// A `[handlers.NAME]` command from the config.
#[derive(Debug, Clone)]
pub struct CommandHandler {
    cfg: CommandConfig,
    kill_grace: Duration,
}

impl CommandHandler {
    /// A command handler with the executor's kill grace.
    pub fn new(cfg: CommandConfig, kill_grace: Duration) -> Self {
        Self { cfg, kill_grace }
    }
}

impl JobHandler for CommandHandler {
    fn call(&self, ctx: JobContext) -> BoxFuture<Outcome> {
        let cfg = self.cfg.clone();
        let grace = self.kill_grace;
        Box::pin(async move {
            let t = trigger_of(&ctx);
            let argv: Vec<String> = cfg.command.iter().map(|a| render_template(a, &t)).collect();
            let mut cmd = Command::new(&argv[0]);
            cmd.args(&argv[1..]);
            cmd.envs(&cfg.env);
            set_trigger_env(&mut cmd, &ctx);
            if let Some(dir) = &cfg.working_dir {
                cmd.current_dir(dir);
            }
            match run(cmd, &ctx, grace).await {
                Ok(status) if status.success() => Outcome::success(),
                Ok(status) => Outcome::fail(describe_exit("command", status)),
                Err(e) => {
                    ctx.log(format!("Failed to start command {:?}: {e}", argv[0]));
                    Outcome::fail(format!("command failed to start: {}: {e}", argv[0]))
                }
            }
        })
    }
}

/// A GLUE script sent by the admin, written to `{data_dir}/gluesource/{jobId}_{version}{suffix}`.
#[derive(Debug, Clone)]
pub struct ScriptHandler {
    kind: GlueKind,
    file: PathBuf,
    kill_grace: Duration,
}

impl ScriptHandler {
    /// Writes the script file (once per version) and removes the job's older versions, as the
    /// reference does when it creates a new script handler.
    ///
    /// # Errors
    /// The file could not be written.
    pub fn prepare(
        glue_dir: &Path,
        job_id: JobId,
        kind: GlueKind,
        source: &str,
        updated: i64,
        kill_grace: Duration,
    ) -> std::io::Result<Self> {
        std::fs::create_dir_all(glue_dir)?;
        let name = format!("{job_id}_{updated}{}", kind.suffix());
        let file = glue_dir.join(&name);
        let prefix = format!("{job_id}_");
        for entry in std::fs::read_dir(glue_dir)?.flatten() {
            let n = entry.file_name();
            let n = n.to_string_lossy();
            if n.starts_with(&prefix) && n != name {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        if !file.exists() {
            let tmp = glue_dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, source.as_bytes())?;
            std::fs::rename(&tmp, &file)?;
        }
        Ok(Self {
            kind,
            file,
            kill_grace,
        })
    }
}

impl JobHandler for ScriptHandler {
    fn call(&self, ctx: JobContext) -> BoxFuture<Outcome> {
        let me = self.clone();
        Box::pin(async move {
            let mut cmd = Command::new(me.kind.interpreter());
            // The reference's argv: script, param ("" when null, as 3.3+), shard index, total.
            cmd.arg(&me.file)
                .arg(ctx.param())
                .arg(ctx.shard_index.to_string())
                .arg(ctx.shard_total.to_string());
            set_trigger_env(&mut cmd, &ctx);
            match run(cmd, &ctx, me.kill_grace).await {
                Ok(status) if status.success() => Outcome::success(),
                Ok(status) => match status.code() {
                    Some(n) => Outcome::fail(format!("script exit value({n}) is failed")),
                    None => Outcome::fail(describe_exit("script", status)),
                },
                Err(e) => {
                    ctx.log(format!(
                        "Failed to start {} for {}: {e}",
                        me.kind.interpreter(),
                        me.kind.wire_name()
                    ));
                    Outcome::fail("script exit value(-1) is failed")
                }
            }
        })
    }
}

fn trigger_of(ctx: &JobContext) -> Trigger {
    Trigger {
        job_id: ctx.job_id,
        log_id: ctx.log_id,
        log_date_time: ctx.log_date_time,
        handler: String::new(),
        params: ctx.params.clone(),
        block: crate::job::BlockStrategy::Serial,
        timeout: None,
        glue: crate::job::Glue::Bean,
        shard_index: ctx.shard_index,
        shard_total: ctx.shard_total,
    }
}

fn set_trigger_env(cmd: &mut Command, ctx: &JobContext) {
    let env: BTreeMap<&str, String> = [
        ("XXL_JOB_ID", ctx.job_id.to_string()),
        ("XXL_JOB_LOG_ID", ctx.log_id.to_string()),
        ("XXL_JOB_PARAM", ctx.param().to_string()),
        ("XXL_JOB_SHARD_INDEX", ctx.shard_index.to_string()),
        ("XXL_JOB_SHARD_TOTAL", ctx.shard_total.to_string()),
        ("XXL_JOB_LOG_DATE_TIME", ctx.log_date_time.to_string()),
    ]
    .into_iter()
    .collect();
    cmd.envs(env);
}

fn describe_exit(what: &str, status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(n), _) => format!("{what} exit value({n}) is failed"),
        (None, Some(sig)) => {
            let name = Signal::try_from(sig).map_or("unknown", |s| s.as_str());
            format!("{what} killed by signal {sig} ({name})")
        }
        (None, None) => format!("{what} ended without an exit value"),
    }
}

/// Spawns the process in its own group, copies its output into the run log, and waits for it;
/// on cancellation, stops the whole group.
async fn run(mut cmd: Command, ctx: &JobContext, grace: Duration) -> std::io::Result<ExitStatus> {
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A dropped future (the runner aborting a stuck handler) must not leak the leader.
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));
    let log = ctx.logger();
    let out = child
        .stdout
        .take()
        .map(|r| tokio::spawn(copy_lines(r, log.clone())));
    let err = child
        .stderr
        .take()
        .map(|r| tokio::spawn(copy_lines(r, log.clone())));
    let mut group = GroupGuard(pgid);

    let status = tokio::select! {
        s = child.wait() => s?,
        () = ctx.cancelled() => {
            group.signal(Signal::SIGTERM);
            let deadline = tokio::time::Instant::now() + grace;
            let status = tokio::select! {
                s = child.wait() => Some(s?),
                () = tokio::time::sleep_until(deadline) => None,
            };
            // The leader may be gone while children that ignore SIGTERM live on: wait out the
            // grace for the group to empty, then SIGKILL whatever is left.
            while group.alive() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            group.signal(Signal::SIGKILL);
            match status {
                Some(s) => s,
                None => child.wait().await?,
            }
        }
    };
    // Output still buffered in the pipes is copied; a grandchild that keeps a pipe open is not
    // waited for longer than the grace.
    for h in [out, err].into_iter().flatten() {
        let abort = h.abort_handle();
        if tokio::time::timeout(grace.max(Duration::from_millis(200)), h)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
    group.disarm();
    Ok(status)
}

/// Kills the group when the run's future is dropped (aborted), so nothing outlives the run.
struct GroupGuard(Option<Pid>);

impl GroupGuard {
    fn signal(&self, sig: Signal) {
        if let Some(pg) = self.0 {
            let _ = killpg(pg, sig);
        }
    }

    fn alive(&self) -> bool {
        self.0.is_some_and(|pg| killpg(pg, None).is_ok())
    }

    /// The run ended normally: leave the group alone (a job may start a daemon on purpose).
    fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        // Still armed: the run's future was dropped mid-way (aborted), so nothing may outlive it.
        self.signal(Signal::SIGKILL);
    }
}

async fn copy_lines(mut r: impl AsyncRead + Unpin, log: JobLog) {
    let mut buf = vec![0u8; 8192];
    let mut line: Vec<u8> = Vec::new();
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for &b in &buf[..n] {
            if b == b'\n' {
                emit(&log, &mut line);
            } else {
                line.push(b);
                if line.len() >= MAX_LINE_BYTES {
                    emit(&log, &mut line);
                }
            }
        }
    }
    if !line.is_empty() {
        emit(&log, &mut line);
    }
}

fn emit(log: &JobLog, line: &mut Vec<u8>) {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    log.raw(&String::from_utf8_lossy(line));
    line.clear();
}

//! Child processes as handlers: configured commands and GLUE scripts.
//!
//! Each run gets its own process group, so kill and timeout reach every child, grandchild and
//! orphan: SIGTERM to the group, then SIGKILL to the group after the grace period. Output is
//! copied into the run log line by line as it is produced, with a cap on line length so a
//! process that never prints a newline cannot exhaust memory.
//!
//! Params reach a child three ways: `XXL_JOB_PARAM`, `{params}` in a command's argv (the GLUE
//! script's first argument), and always a private file named by `XXL_JOB_PARAM_FILE`. Linux
//! refuses to start a program whose single argv or environment string exceeds 128 KiB
//! (`MAX_ARG_STRLEN`), so params larger than that are passed in the file only, and the child is
//! told so (`XXL_JOB_PARAM_TRUNCATED=1`) instead of failing with `Argument list too long`.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::{BoxFuture, JobContext, JobHandler, JobLog, Placeholders};
use crate::config::CommandConfig;
use crate::job::{GlueKind, JobId, Outcome};

/// Longest line copied from a child's output; longer ones are split.
const MAX_LINE_BYTES: usize = 16 * 1024;

/// Linux's bound on one argv or environment string, its terminating NUL included
/// (`MAX_ARG_STRLEN`, 32 pages of 4 KiB); `execve` fails with `E2BIG` past it.
const MAX_ARG_STRLEN: usize = 32 * 4096;

/// The environment variable that carries the params when they fit.
const PARAM_ENV: &str = "XXL_JOB_PARAM";

/// Largest params passed in `XXL_JOB_PARAM` and as a GLUE script's argument: the longest value
/// for which `XXL_JOB_PARAM=<value>` still fits in one environment string.
pub(crate) const MAX_INLINE_PARAM_BYTES: usize = MAX_ARG_STRLEN - PARAM_ENV.len() - 2;

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
            let vars = Placeholders::of(&ctx);
            let argv: Vec<String> = cfg.command.iter().map(|a| vars.render(a)).collect();
            if let Some(msg) = argv_too_long(&cfg.command, &argv, ctx.param().len()) {
                ctx.log(&msg);
                return Outcome::fail(msg);
            }
            let Some((program, args)) = argv.split_first() else {
                // Config validation refuses an empty command; never index into one anyway.
                return Outcome::fail("command failed to start: the command is empty");
            };
            let mut cmd = Command::new(program);
            cmd.args(args);
            cmd.envs(&cfg.env);
            let param_file = match offer_params(&mut cmd, &ctx).await {
                Ok(f) => f,
                Err(msg) => return Outcome::fail(msg),
            };
            if let Some(dir) = &cfg.working_dir {
                cmd.current_dir(dir);
            }
            let res = run(cmd, &ctx, grace).await;
            drop(param_file);
            match res {
                Ok(status) if status.success() => Outcome::success(),
                Ok(status) => Outcome::fail(describe_exit("command", status)),
                Err(e) if is_e2big(&e) => {
                    let msg = format!(
                        "command failed to start: {program}: the arguments and environment are too large for Linux (params are {} bytes); let the command read the params from the file named by XXL_JOB_PARAM_FILE instead of {{params}} in its argv",
                        ctx.param().len()
                    );
                    ctx.log(&msg);
                    Outcome::fail(msg)
                }
                Err(e) => {
                    ctx.log(format!("Failed to start command {program:?}: {e}"));
                    Outcome::fail(format!("command failed to start: {program}: {e}"))
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
        crate::private_file::create_dir(glue_dir)?;
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
            // Read by the interpreter, which runs as the executor's user.
            let tmp = glue_dir.join(format!(".{name}.tmp"));
            crate::private_file::replace(&tmp, &file, source.as_bytes())?;
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
            // Params too large for one argument are passed in the file only (as for commands).
            cmd.arg(&me.file)
                .arg(inline_param(&ctx))
                .arg(ctx.shard_index.to_string())
                .arg(ctx.shard_total.to_string());
            let param_file = match offer_params(&mut cmd, &ctx).await {
                Ok(f) => f,
                Err(msg) => return Outcome::fail(msg),
            };
            let res = run(cmd, &ctx, me.kill_grace).await;
            drop(param_file);
            match res {
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

/// The params as `XXL_JOB_PARAM` and a GLUE script's argument carry them: as they are when
/// they fit in one argv/environment string, else empty (the file has them).
fn inline_param(ctx: &JobContext) -> &str {
    let p = ctx.param();
    if p.len() > MAX_INLINE_PARAM_BYTES {
        ""
    } else {
        p
    }
}

/// Sets the trigger's environment and writes the params file. Params too large for
/// `XXL_JOB_PARAM` leave it empty with `XXL_JOB_PARAM_TRUNCATED=1`, and the run log says so.
///
/// # Errors
/// The failure message when the params do not fit in the environment and the file could not
/// be written either: the child would not get its params at all.
async fn offer_params(cmd: &mut Command, ctx: &JobContext) -> Result<Option<ParamFile>, String> {
    let params = ctx.param();
    let inline = inline_param(ctx);
    let truncated = inline.len() != params.len();
    cmd.env("XXL_JOB_ID", ctx.job_id.to_string())
        .env("XXL_JOB_LOG_ID", ctx.log_id.to_string())
        .env(PARAM_ENV, inline)
        .env("XXL_JOB_PARAM_TRUNCATED", if truncated { "1" } else { "0" })
        .env("XXL_JOB_SHARD_INDEX", ctx.shard_index.to_string())
        .env("XXL_JOB_SHARD_TOTAL", ctx.shard_total.to_string())
        .env("XXL_JOB_LOG_DATE_TIME", ctx.log_date_time.to_string());
    match ParamFile::write(params, ctx).await {
        Ok(f) => {
            cmd.env("XXL_JOB_PARAM_FILE", &f.file);
            if truncated {
                ctx.log(format!(
                    "params are {} bytes, more than fit in one argument or environment variable ({MAX_INLINE_PARAM_BYTES} bytes): XXL_JOB_PARAM is empty and XXL_JOB_PARAM_TRUNCATED=1; the params are in the file named by XXL_JOB_PARAM_FILE",
                    params.len()
                ));
            }
            Ok(Some(f))
        }
        Err((dir, e)) if truncated => {
            let msg = format!(
                "params are {} bytes, more than fit in XXL_JOB_PARAM ({MAX_INLINE_PARAM_BYTES} bytes), and the params file could not be written in {}: {e}; set TMPDIR to a writable directory",
                params.len(),
                dir.display()
            );
            ctx.log(&msg);
            Err(msg)
        }
        Err((dir, e)) => {
            // The params are all in XXL_JOB_PARAM: run without the file rather than fail.
            ctx.log(format!(
                "XXL_JOB_PARAM_FILE is not set: cannot write the params file in {}: {e}",
                dir.display()
            ));
            Ok(None)
        }
    }
}

/// The run's params in a file of its own: a fresh directory (mode 0700) in the temp dir
/// (`TMPDIR`) holding `params` (mode 0600), so no other user reads or swaps it. Removed when
/// dropped: at the end of the run, or when the run's future is aborted.
#[derive(Debug)]
struct ParamFile {
    dir: PathBuf,
    file: PathBuf,
}

impl ParamFile {
    async fn write(params: &str, ctx: &JobContext) -> Result<Self, (PathBuf, std::io::Error)> {
        let base = std::env::temp_dir();
        let err = |e| (base.clone(), e);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut attempt = 0u32;
        let dir = loop {
            // `mkdir` fails on any existing name (a symlink included), so the directory is ours.
            let dir = base.join(format!(
                "xxl-edge-{}-{}-{nanos:x}-{attempt}",
                std::process::id(),
                ctx.log_id
            ));
            match tokio::fs::DirBuilder::new().mode(0o700).create(&dir).await {
                Ok(()) => break dir,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempt < 16 => {
                    attempt += 1;
                }
                Err(e) => return Err(err(e)),
            }
        };
        let me = Self {
            file: dir.join("params"),
            dir,
        };
        let mut f = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&me.file)
            .await
            .map_err(err)?;
        f.write_all(params.as_bytes()).await.map_err(err)?;
        f.flush().await.map_err(err)?;
        Ok(me)
    }
}

impl Drop for ParamFile {
    fn drop(&mut self) {
        // Two unlinks in a directory only we write: cheap enough to do in place.
        let _ = std::fs::remove_file(&self.file);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Removes the params directories that executors which are gone left behind (a `kill -9` ends a
/// run without its clean-up): `xxl-edge-{pid}-…` in the temp dir whose pid is no live process.
/// Returns how many were removed. Another live process's directories (the same pid reused
/// included) are left alone.
pub(crate) fn sweep_stale_param_dirs() -> usize {
    let base = std::env::temp_dir();
    let Ok(entries) = std::fs::read_dir(&base) else {
        return 0;
    };
    let me = std::process::id();
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("xxl-edge-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<i32>().ok())
        else {
            continue;
        };
        if pid <= 0 || pid as u32 == me {
            continue;
        }
        if pid_gone(pid) {
            let dir = entry.path();
            let _ = std::fs::remove_file(dir.join("params"));
            if std::fs::remove_dir(&dir).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// True when no process has this pid (`kill(pid, 0)` answers ESRCH).
fn pid_gone(pid: i32) -> bool {
    matches!(
        nix::sys::signal::kill(Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// A configured argv that `{params}` made longer than Linux takes for one argument: the
/// failure message, naming the fix.
fn argv_too_long(templates: &[String], argv: &[String], params_len: usize) -> Option<String> {
    let (i, arg) = argv
        .iter()
        .enumerate()
        .find(|(_, a)| a.len() >= MAX_ARG_STRLEN)?;
    let how = if templates
        .get(i)
        .is_some_and(|t| Placeholders::names_params(t))
    {
        format!(" after {{params}} was expanded (params are {params_len} bytes)")
    } else {
        String::new()
    };
    Some(format!(
        "command argument {i} is {} bytes{how}, more than Linux allows in one argument ({} bytes); let the command read the params from the file named by XXL_JOB_PARAM_FILE instead of {{params}} in its argv",
        arg.len(),
        MAX_ARG_STRLEN - 1
    ))
}

fn is_e2big(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(nix::errno::Errno::E2BIG as i32)
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

#[cfg(test)]
mod tests {
    /// A `kill -9` of the executor leaves its runs' params directories in the temp dir; the
    /// next start removes those of processes that are gone, and only those.
    #[test]
    fn stale_params_dirs_of_gone_processes_are_swept() {
        let gone = {
            let mut c = std::process::Command::new("true").spawn().unwrap();
            let pid = c.id();
            c.wait().unwrap();
            pid
        };
        let base = std::env::temp_dir();
        let stale = base.join(format!("xxl-edge-{gone}-7-sweeptest-0"));
        let mine = base.join(format!("xxl-edge-{}-7-sweeptest-0", std::process::id()));
        for d in [&stale, &mine] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::write(d.join("params"), "p").unwrap();
        }
        assert!(super::sweep_stale_param_dirs() >= 1);
        assert!(!stale.exists(), "a gone process's directory stays");
        assert!(mine.exists(), "a live process's directory was removed");
        std::fs::remove_dir_all(&mine).unwrap();
    }
}

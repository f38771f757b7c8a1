//! The executor binary as a child process, for tests that watch it exit and restart it on the same
//! data directory as a supervisor would.

use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{watch, Notify};

use super::GUARD;

/// The `[admin]` and `[executor]` tables every child executor of the tests starts with: the
/// fake admin at `admin_url`, the test token, 127.0.0.1 on a free port, `data_dir`. The caller's
/// text follows (more `[executor]` keys first, if any, then its other tables).
pub fn config_head(admin_url: &str, app_name: &str, data_dir: &std::path::Path) -> String {
    format!(
        r#"
[admin]
addresses = ["{admin_url}"]
access_token = "default_token"
timeout_secs = 1
[executor]
app_name = "{app_name}"
ip = "127.0.0.1"
listen = "127.0.0.1"
port = 0
data_dir = "{}"
"#,
        data_dir.display()
    )
}

/// `xxl-edge serve --log-json --config FILE`, its JSON log lines and its exit status.
pub struct Child {
    pub pid: i32,
    pub addr: std::net::SocketAddr,
    lines: Arc<Mutex<Vec<Value>>>,
    new_line: Arc<Notify>,
    exit: watch::Receiver<Option<ExitStatus>>,
    client: reqwest::Client,
}

impl Child {
    /// Starts the binary and waits for its "started" event.
    pub async fn start(config: &Path) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xxl-edge"));
        cmd.args(["serve", "--log-json", "--config"]).arg(config);
        Self::start_command(cmd).await
    }

    /// Starts the binary under `sh -c "SHELL_PREFIX; exec xxl-edge serve …"` (to set limits with
    /// `ulimit`, say) and waits for its "started" event.
    pub async fn start_after(shell_prefix: &str, config: &Path) -> Self {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                "{shell_prefix}; exec \"$0\" serve --log-json --config \"$1\""
            ))
            .arg(env!("CARGO_BIN_EXE_xxl-edge"))
            .arg(config);
        Self::start_command(cmd).await
    }

    /// Starts `cmd` (which runs `xxl-edge serve --log-json`) and waits for its "started" event.
    pub async fn start_command(mut cmd: Command) -> Self {
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let new_line = Arc::new(Notify::new());
        let stderr = child.stderr.take().unwrap();
        {
            let (lines, new_line) = (lines.clone(), new_line.clone());
            // Drained continuously so the executor never blocks on a full pipe.
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stderr)
                    .lines()
                    .map_while(Result::ok)
                {
                    let v = serde_json::from_str(&line).unwrap_or(json!({ "raw": line }));
                    lines.lock().unwrap().push(v);
                    new_line.notify_waiters();
                }
            });
        }
        let (exit_tx, exit) = watch::channel(None);
        std::thread::spawn(move || {
            let status = child.wait().unwrap();
            let _ = exit_tx.send(Some(status));
        });
        let mut me = Self {
            pid,
            addr: "127.0.0.1:0".parse().unwrap(),
            lines,
            new_line,
            exit,
            client: reqwest::Client::new(),
        };
        let started = me
            .wait_line("the executor's start", |v| {
                v["message"] == "xxl-edge executor started."
            })
            .await;
        me.addr = started["listen"].as_str().unwrap().parse().unwrap();
        me
    }

    /// Waits (bounded by [`GUARD`]) for a log line that satisfies `pred`; fails the test if the
    /// process exits first.
    pub async fn wait_line(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let fut = async {
            loop {
                let notified = self.new_line.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if let Some(v) = self.find_line(&pred) {
                    return v;
                }
                if let Some(status) = *self.exit.borrow() {
                    panic!(
                        "the executor exited ({status}) before {what}; its log:\n{}",
                        self.log_text()
                    );
                }
                // The exit is seen within 50 ms; lines wake the wait at once.
                let _ = tokio::time::timeout(Duration::from_millis(50), notified).await;
            }
        };
        match tokio::time::timeout(GUARD, fut).await {
            Ok(v) => v,
            Err(_) => panic!("timed out waiting for {what}; log:\n{}", self.log_text()),
        }
    }

    /// The first log line so far that satisfies `pred`, without waiting.
    pub fn find_line(&self, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        self.lines.lock().unwrap().iter().find(|v| pred(v)).cloned()
    }

    /// Every log line so far, one per line.
    pub fn log_text(&self) -> String {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The exit status once the process has exited, waiting at most `limit`.
    pub async fn exited_within(&self, limit: Duration) -> Option<ExitStatus> {
        let mut rx = self.exit.clone();
        tokio::time::timeout(limit, rx.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|s| *s))
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), sig);
    }

    /// `kill -9`, and waits (bounded) until the process is gone.
    pub async fn kill9(self) {
        self.signal(nix::sys::signal::Signal::SIGKILL);
        assert!(self.exited_within(GUARD).await.is_some(), "not killed");
    }

    /// SIGTERM, and the exit status of the stop that follows (bounded by [`GUARD`]).
    pub async fn sigterm(self) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        self.exited_within(GUARD).await.expect("serve stopped")
    }

    /// POSTs with the test token; `None` when the process does not answer (gone, or no answer
    /// within [`GUARD`]).
    pub async fn post(&self, path: &str, body: String) -> Option<Value> {
        let r = self
            .client
            .post(format!("http://{}{}", self.addr, path))
            .header("XXL-JOB-ACCESS-TOKEN", "default_token")
            .timeout(GUARD)
            .body(body)
            .send()
            .await
            .ok()?;
        r.json().await.ok()
    }

    /// The first page of a run's log.
    pub async fn log(&self, log_id: i64) -> String {
        let r = self
            .post(
                "/log",
                format!(r#"{{"logId":{log_id},"logDateTim":0,"fromLineNum":1}}"#),
            )
            .await
            .expect("the executor answers /log");
        r["data"]["logContent"].as_str().unwrap_or("").to_string()
    }

    /// Waits (bounded by [`GUARD`]) until the first page of a run's log contains `needle`.
    pub async fn wait_log(&self, log_id: i64, needle: &str) {
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            let log = self.log(log_id).await;
            if log.contains(needle) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "log {log_id} never showed {needle:?}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `/run` of a BEAN handler.
    pub async fn run(&self, job: i32, handler: &str, log_id: i64) -> Option<Value> {
        self.post(
            "/run",
            json!({"jobId": job, "executorHandler": handler, "logId": log_id,
                   "logDateTime": 1717171717000i64, "glueType": "BEAN",
                   "executorBlockStrategy": "SERIAL_EXECUTION"})
            .to_string(),
        )
        .await
    }
}

impl Drop for Child {
    /// A test that failed half-way leaves no executor behind (it would keep its tmpfs busy).
    fn drop(&mut self) {
        if self.exit.borrow().is_none() {
            self.signal(nix::sys::signal::Signal::SIGKILL);
        }
    }
}

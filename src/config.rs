//! Typed, validated configuration: defaults < TOML file < environment < flags.
//!
//! Everything is checked here, before a socket is bound or the store is opened, so a bad value
//! stops the process with a message that names the key. The environment is read through
//! [`Source`] so tests never touch the process environment.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::job::GlueKind;

/// A configuration problem, naming the key (or variable) and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown key or a value of the wrong type.
    #[error("config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, which names the key.
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("invalid {key}: {problem}")]
    Invalid {
        /// The TOML key or environment variable.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

/// Where environment-style values come from: the process environment in production, a map in tests.
pub trait Source {
    /// The value of `key`, if set.
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Env;

impl Source for Env {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Source for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

/// The default admin address, as in the reference's sample config.
pub const DEFAULT_ADMIN: &str = "http://127.0.0.1:8080/xxl-job-admin";
/// The reference's default port.
pub const DEFAULT_PORT: u16 = 9999;

/// The configuration file as written; every field optional so layers can be merged.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[admin]`.
    #[serde(default)]
    pub admin: RawAdmin,
    /// `[executor]`.
    #[serde(default)]
    pub executor: RawExecutor,
    /// `[runner]`.
    #[serde(default)]
    pub runner: RawRunner,
    /// `[server]`.
    #[serde(default)]
    pub server: RawServer,
    /// `[store]`.
    #[serde(default)]
    pub store: RawStore,
    /// `[glue]`.
    #[serde(default)]
    pub glue: RawGlue,
    /// `[telemetry]`.
    #[serde(default)]
    pub telemetry: RawTelemetry,
    /// `[handlers.NAME]`.
    #[serde(default)]
    pub handlers: BTreeMap<String, RawCommand>,
}

/// `[admin]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// `admin.addresses`.
    pub addresses: Option<Vec<String>>,
    /// `admin.access_token`.
    pub access_token: Option<String>,
    /// `admin.timeout_secs`.
    pub timeout_secs: Option<f64>,
}

/// `[executor]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExecutor {
    /// `executor.app_name`.
    pub app_name: Option<String>,
    /// `executor.address`.
    pub address: Option<String>,
    /// `executor.ip`.
    pub ip: Option<String>,
    /// `executor.port`.
    pub port: Option<i64>,
    /// `executor.listen`.
    pub listen: Option<String>,
    /// `executor.data_dir`.
    pub data_dir: Option<PathBuf>,
    /// `executor.log_retention_days`.
    pub log_retention_days: Option<i64>,
}

/// `[runner]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRunner {
    /// `runner.max_running`.
    pub max_running: Option<i64>,
    /// `runner.max_queue_per_job`.
    pub max_queue_per_job: Option<i64>,
    /// `runner.idle_reclaim_secs`.
    pub idle_reclaim_secs: Option<f64>,
    /// `runner.kill_grace_secs`.
    pub kill_grace_secs: Option<f64>,
    /// `runner.shutdown_grace_secs`.
    pub shutdown_grace_secs: Option<f64>,
}

/// `[server]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// `server.body_limit_bytes`.
    pub body_limit_bytes: Option<i64>,
    /// `server.log_page_max_lines`.
    pub log_page_max_lines: Option<i64>,
    /// `server.log_page_max_bytes`.
    pub log_page_max_bytes: Option<i64>,
}

/// `[store]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// `store.cache_bytes`.
    pub cache_bytes: Option<i64>,
    /// `store.flush_every_ms`: 0 (default) means every acknowledgement is flushed first.
    pub flush_every_ms: Option<i64>,
    /// `store.max_bytes`: budget for finished runs and their logs.
    pub max_bytes: Option<i64>,
    /// `store.min_free_bytes`: `/run` is refused below this much free disk.
    pub min_free_bytes: Option<i64>,
    /// `store.max_log_bytes_per_run`.
    pub max_log_bytes_per_run: Option<i64>,
}

/// `[glue]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGlue {
    /// `glue.enabled`.
    pub enabled: Option<Vec<String>>,
}

/// `[telemetry]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// `telemetry.metrics_listen`.
    pub metrics_listen: Option<String>,
    /// `telemetry.log_level`.
    pub log_level: Option<String>,
    /// `telemetry.log_format`: `text` or `json`.
    pub log_format: Option<String>,
    /// `telemetry.otlp_endpoint`: OTLP/HTTP base URL (`…/v1/traces` is appended).
    pub otlp_endpoint: Option<String>,
    /// `telemetry.otlp_traces_endpoint`: full traces URL (used as is).
    pub otlp_traces_endpoint: Option<String>,
    /// `telemetry.service_name`.
    pub service_name: Option<String>,
    /// `telemetry.trace_sample_ratio`.
    pub trace_sample_ratio: Option<f64>,
}

/// `[handlers.NAME]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCommand {
    /// The argv; `{jobId}`, `{logId}`, `{params}`, `{shardIndex}`, `{shardTotal}` are replaced.
    pub command: Option<Vec<String>>,
    /// Extra environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory.
    pub working_dir: Option<PathBuf>,
    /// Safe to run again when a crash interrupted it.
    pub rerun_safe: Option<bool>,
    /// Idempotency key template, e.g. `"{jobId}:{params}"`.
    pub idempotency_key: Option<String>,
    /// How long a key is remembered.
    pub idempotency_ttl_secs: Option<f64>,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Admin connection.
    pub admin: AdminConfig,
    /// This executor.
    pub executor: ExecutorConfig,
    /// Queues and limits.
    pub runner: RunnerConfig,
    /// HTTP server limits.
    pub server: ServerConfig,
    /// The sled store.
    pub store: StoreConfig,
    /// GLUE kinds the operator allows.
    pub glue_enabled: Vec<GlueKind>,
    /// Telemetry.
    pub telemetry: TelemetryConfig,
    /// Command handlers by name.
    pub handlers: BTreeMap<String, CommandConfig>,
}

/// Admin connection settings.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Admin base URLs, trailing `/` removed.
    pub addresses: Vec<String>,
    /// The shared token; empty means none.
    pub access_token: String,
    /// Connect and read timeout for calls to the admin.
    pub timeout: Duration,
}

/// This executor's identity and local resources.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Registry key (the admin's appname).
    pub app_name: String,
    /// The address registered verbatim, if set.
    pub address: Option<String>,
    /// The ip used to build the registered address.
    pub ip: Option<String>,
    /// Port to listen on and to register.
    pub port: u16,
    /// Bind address.
    pub listen: IpAddr,
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// Days finished runs and their logs are kept; 0 keeps them until the byte budget.
    pub log_retention_days: u32,
}

impl ExecutorConfig {
    /// The address to register: `executor.address` verbatim, else `http://{ip}:{port}/`.
    pub fn registered_address(&self, bound_port: u16) -> String {
        if let Some(a) = &self.address {
            return a.clone();
        }
        let ip = self.ip.clone().unwrap_or_else(detect_ip);
        format!("http://{ip}:{bound_port}/")
    }
}

/// The first non-loopback IPv4 address of this host, as the reference picks it.
pub fn detect_ip() -> String {
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for ifa in addrs {
            if let Some(sin) = ifa.address.as_ref().and_then(|a| a.as_sockaddr_in()) {
                let ip = sin.ip();
                if !ip.is_loopback() && !ip.is_unspecified() {
                    return ip.to_string();
                }
            }
        }
    }
    Ipv4Addr::LOCALHOST.to_string()
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

/// Store settings.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// sled's page cache.
    pub cache_bytes: u64,
    /// `None`: every acknowledgement waits for a (shared) flush. `Some(d)`: flush every `d`.
    pub flush_every: Option<Duration>,
    /// Budget for the store on disk; finished, reported runs are pruned beyond it.
    pub max_bytes: u64,
    /// `/run` is refused when the data directory's file system has less free space.
    pub min_free_bytes: u64,
    /// Log bytes kept per run; later lines are dropped with one marker line.
    pub max_log_bytes_per_run: u64,
}

/// Telemetry settings.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// Serve `/metrics` here instead of on the executor port.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Default log filter when `RUST_LOG` is unset.
    pub log_level: String,
    /// JSON logs instead of text.
    pub log_json: bool,
    /// Full OTLP/HTTP traces URL; `None` keeps trace export off.
    pub otlp_traces_url: Option<String>,
    /// `service.name` of the traces.
    pub service_name: String,
    /// Share of traces kept (parent-based ratio sampler).
    pub trace_sample_ratio: f64,
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

/// Flag overrides from the command line (the highest layer).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--admin` (repeatable).
    pub admin_addresses: Option<Vec<String>>,
    /// `--token`.
    pub access_token: Option<String>,
    /// `--app-name`.
    pub app_name: Option<String>,
    /// `--address`.
    pub address: Option<String>,
    /// `--ip`.
    pub ip: Option<String>,
    /// `--port`.
    pub port: Option<i64>,
    /// `--listen`.
    pub listen: Option<String>,
    /// `--data-dir`.
    pub data_dir: Option<PathBuf>,
    /// `--log-json`.
    pub log_json: Option<bool>,
}

impl Config {
    /// Defaults only: what `xxl-edge serve` runs with when nothing is configured.
    pub fn defaults() -> Self {
        // Defaults always validate; the test `defaults_validate` guards this.
        Self::load(None, &HashMap::new(), &Overrides::default())
            .unwrap_or_else(|e| unreachable!("defaults must validate: {e}"))
    }

    /// Reads the layers and validates the result.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first bad key.
    pub fn load(
        file: Option<&Path>,
        env: &dyn Source,
        flags: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut raw = match file {
            Some(path) => Self::read_file(path)?,
            None => RawConfig::default(),
        };
        apply_env(&mut raw, env)?;
        apply_flags(&mut raw, flags);
        Self::validate(raw)
    }

    /// Parses a TOML file into the raw layer.
    ///
    /// # Errors
    /// Unreadable file, bad TOML, unknown key or wrong type.
    pub fn read_file(path: &Path) -> Result<RawConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse_toml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses TOML text; the error names the key.
    ///
    /// # Errors
    /// The parser's message.
    pub fn parse_toml(text: &str) -> Result<RawConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    /// Checks every value and builds the typed config.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first bad key.
    pub fn validate(raw: RawConfig) -> Result<Self, ConfigError> {
        let addresses: Vec<String> = raw
            .admin
            .addresses
            .unwrap_or_else(|| vec![DEFAULT_ADMIN.to_string()])
            .into_iter()
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .map(|a| a.trim_end_matches('/').to_string())
            .collect();
        for a in &addresses {
            let ok = a
                .strip_prefix("http://")
                .or_else(|| a.strip_prefix("https://"))
                .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
            if !ok || a.contains(',') || a.contains(char::is_whitespace) {
                return Err(invalid(
                    "admin.addresses",
                    format!("\"{a}\" is not an http:// or https:// URL"),
                ));
            }
        }
        let timeout = secs(
            "admin.timeout_secs",
            raw.admin.timeout_secs.unwrap_or(3.0),
            0.1,
            600.0,
        )?;

        let app_name = raw
            .executor
            .app_name
            .unwrap_or_else(|| "xxl-edge".to_string())
            .trim()
            .to_string();
        if app_name.is_empty() || app_name.len() > 64 || app_name.contains(char::is_whitespace) {
            return Err(invalid(
                "executor.app_name",
                "must be 1 to 64 characters without spaces (the admin's appname)",
            ));
        }
        let address = raw
            .executor
            .address
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty());
        if let Some(a) = &address {
            if !(a.starts_with("http://") || a.starts_with("https://")) || a.contains(',') {
                return Err(invalid(
                    "executor.address",
                    format!("\"{a}\" must be an http:// or https:// URL without commas"),
                ));
            }
        }
        let ip = raw
            .executor
            .ip
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty());
        if let Some(ip) = &ip {
            if ip.contains(['/', ',', ' ']) {
                return Err(invalid("executor.ip", format!("\"{ip}\" is not a host")));
            }
        }
        let port = raw.executor.port.unwrap_or(i64::from(DEFAULT_PORT));
        let port = u16::try_from(port)
            .map_err(|_| invalid("executor.port", format!("{port} is not in 0..=65535")))?;
        let listen_s = raw.executor.listen.unwrap_or_else(|| "0.0.0.0".to_string());
        let listen: IpAddr = listen_s.trim().parse().map_err(|_| {
            invalid(
                "executor.listen",
                format!("\"{listen_s}\" is not an IP address"),
            )
        })?;
        let data_dir = raw
            .executor
            .data_dir
            .unwrap_or_else(|| PathBuf::from("./data"));
        if data_dir.as_os_str().is_empty() {
            return Err(invalid("executor.data_dir", "must not be empty"));
        }
        let log_retention_days = int(
            "executor.log_retention_days",
            raw.executor.log_retention_days.unwrap_or(30),
            0,
            36_500,
        )? as u32;

        let runner = RunnerConfig {
            max_running: int(
                "runner.max_running",
                raw.runner.max_running.unwrap_or(64),
                1,
                100_000,
            )? as usize,
            max_queue_per_job: int(
                "runner.max_queue_per_job",
                raw.runner.max_queue_per_job.unwrap_or(1000),
                1,
                10_000_000,
            )? as usize,
            idle_reclaim: secs(
                "runner.idle_reclaim_secs",
                raw.runner.idle_reclaim_secs.unwrap_or(90.0),
                0.01,
                86_400.0,
            )?,
            kill_grace: secs(
                "runner.kill_grace_secs",
                raw.runner.kill_grace_secs.unwrap_or(5.0),
                0.0,
                3600.0,
            )?,
            shutdown_grace: secs(
                "runner.shutdown_grace_secs",
                raw.runner.shutdown_grace_secs.unwrap_or(10.0),
                0.0,
                3600.0,
            )?,
        };

        let server = ServerConfig {
            body_limit_bytes: int(
                "server.body_limit_bytes",
                raw.server.body_limit_bytes.unwrap_or(5 * 1024 * 1024),
                1024,
                1 << 30,
            )? as usize,
            log_page_max_lines: int(
                "server.log_page_max_lines",
                raw.server.log_page_max_lines.unwrap_or(1000),
                1,
                1_000_000,
            )? as usize,
            log_page_max_bytes: int(
                "server.log_page_max_bytes",
                raw.server.log_page_max_bytes.unwrap_or(1024 * 1024),
                1024,
                1 << 30,
            )? as usize,
        };

        let flush_ms = int(
            "store.flush_every_ms",
            raw.store.flush_every_ms.unwrap_or(0),
            0,
            60_000,
        )?;
        let store = StoreConfig {
            cache_bytes: int(
                "store.cache_bytes",
                raw.store.cache_bytes.unwrap_or(4 * 1024 * 1024),
                64 * 1024,
                1 << 40,
            )? as u64,
            flush_every: (flush_ms > 0).then(|| Duration::from_millis(flush_ms as u64)),
            max_bytes: int(
                "store.max_bytes",
                raw.store.max_bytes.unwrap_or(256 * 1024 * 1024),
                1024 * 1024,
                1 << 50,
            )? as u64,
            min_free_bytes: int(
                "store.min_free_bytes",
                raw.store.min_free_bytes.unwrap_or(16 * 1024 * 1024),
                0,
                1 << 50,
            )? as u64,
            max_log_bytes_per_run: int(
                "store.max_log_bytes_per_run",
                raw.store.max_log_bytes_per_run.unwrap_or(4 * 1024 * 1024),
                1024,
                1 << 40,
            )? as u64,
        };

        let mut glue_enabled = Vec::new();
        for name in raw.glue.enabled.unwrap_or_default() {
            let kind = GlueKind::parse(name.trim()).ok_or_else(|| {
                let known: Vec<_> = GlueKind::ALL.iter().map(|k| k.config_name()).collect();
                invalid(
                    "glue.enabled",
                    format!("unknown GLUE kind \"{name}\"; known: {}", known.join(", ")),
                )
            })?;
            if !glue_enabled.contains(&kind) {
                glue_enabled.push(kind);
            }
        }

        let metrics_listen = raw
            .telemetry
            .metrics_listen
            .filter(|s| !s.trim().is_empty())
            .map(|s| {
                s.trim().parse().map_err(|_| {
                    invalid(
                        "telemetry.metrics_listen",
                        format!("\"{s}\" is not an address like 127.0.0.1:9100"),
                    )
                })
            })
            .transpose()?;
        let log_json = match raw.telemetry.log_format.as_deref().map(str::trim) {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err(invalid(
                    "telemetry.log_format",
                    format!("\"{other}\" is neither \"text\" nor \"json\""),
                ))
            }
        };
        // The signal-specific URL is used as is; the base URL gets `/v1/traces`.
        let otlp_traces_url = match (
            raw.telemetry
                .otlp_traces_endpoint
                .filter(|s| !s.trim().is_empty()),
            raw.telemetry.otlp_endpoint.filter(|s| !s.trim().is_empty()),
        ) {
            (Some(full), _) => Some(("telemetry.otlp_traces_endpoint", full, "")),
            (None, Some(base)) => Some(("telemetry.otlp_endpoint", base, "/v1/traces")),
            (None, None) => None,
        }
        .map(|(key, given, suffix)| {
            let url = given.trim();
            if url.starts_with("http://") || url.starts_with("https://") {
                Ok(if suffix.is_empty() {
                    url.to_string()
                } else {
                    format!("{}{suffix}", url.trim_end_matches('/'))
                })
            } else {
                Err(invalid(
                    key,
                    format!("\"{given}\" is not an http:// or https:// URL"),
                ))
            }
        })
        .transpose()?;
        let trace_sample_ratio = raw.telemetry.trace_sample_ratio.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&trace_sample_ratio) {
            return Err(invalid(
                "telemetry.trace_sample_ratio",
                format!("{trace_sample_ratio} is not in 0.0..=1.0"),
            ));
        }
        let telemetry = TelemetryConfig {
            metrics_listen,
            log_level: raw
                .telemetry
                .log_level
                .unwrap_or_else(|| "info".to_string()),
            log_json,
            otlp_traces_url,
            service_name: raw
                .telemetry
                .service_name
                .filter(|s| !s.trim().is_empty())
                .unwrap_or_else(|| "xxl-edge".to_string()),
            trace_sample_ratio,
        };

        let mut handlers = BTreeMap::new();
        for (name, h) in raw.handlers {
            let key = format!("handlers.{name}");
            if name.trim().is_empty() {
                return Err(invalid("handlers", "a handler name must not be empty"));
            }
            let command = h
                .command
                .ok_or_else(|| invalid(format!("{key}.command"), "is required"))?;
            if command.is_empty() || command[0].trim().is_empty() {
                return Err(invalid(
                    format!("{key}.command"),
                    "must name a program: command = [\"/path/to/program\", \"arg\"]",
                ));
            }
            let idempotency = match h.idempotency_key {
                Some(k) if !k.trim().is_empty() => Some((
                    k,
                    secs(
                        &format!("{key}.idempotency_ttl_secs"),
                        h.idempotency_ttl_secs.unwrap_or(86_400.0),
                        1.0,
                        10.0 * 365.0 * 86_400.0,
                    )?,
                )),
                Some(_) => {
                    return Err(invalid(
                        format!("{key}.idempotency_key"),
                        "must not be empty",
                    ))
                }
                None => None,
            };
            handlers.insert(
                name,
                CommandConfig {
                    command,
                    env: h.env,
                    working_dir: h.working_dir,
                    rerun_safe: h.rerun_safe.unwrap_or(false),
                    idempotency,
                },
            );
        }

        Ok(Config {
            admin: AdminConfig {
                addresses,
                access_token: raw.admin.access_token.unwrap_or_default(),
                timeout,
            },
            executor: ExecutorConfig {
                app_name,
                address,
                ip,
                port,
                listen,
                data_dir,
                log_retention_days,
            },
            runner,
            server,
            store,
            glue_enabled,
            telemetry,
            handlers,
        })
    }
}

fn int(key: &str, v: i64, min: i64, max: i64) -> Result<i64, ConfigError> {
    if v < min || v > max {
        return Err(invalid(key, format!("{v} is not in {min}..={max}")));
    }
    Ok(v)
}

fn secs(key: &str, v: f64, min: f64, max: f64) -> Result<Duration, ConfigError> {
    if !v.is_finite() || v < min || v > max {
        return Err(invalid(key, format!("{v} is not in {min}..={max} seconds")));
    }
    Ok(Duration::from_secs_f64(v))
}

fn env_int(env: &dyn Source, var: &str) -> Result<Option<i64>, ConfigError> {
    env.get(var)
        .map(|v| {
            v.trim()
                .parse::<i64>()
                .map_err(|_| invalid(var, format!("\"{v}\" is not a whole number")))
        })
        .transpose()
}

fn apply_env(raw: &mut RawConfig, env: &dyn Source) -> Result<(), ConfigError> {
    if let Some(v) = env.get("XXL_JOB_ADMIN_ADDRESSES") {
        raw.admin.addresses = Some(v.split(',').map(str::to_string).collect());
    }
    if let Some(v) = env.get("XXL_JOB_ACCESS_TOKEN") {
        raw.admin.access_token = Some(v);
    }
    if let Some(v) = env.get("XXL_JOB_ADMIN_TIMEOUT") {
        raw.admin.timeout_secs = Some(v.trim().parse().map_err(|_| {
            invalid(
                "XXL_JOB_ADMIN_TIMEOUT",
                format!("\"{v}\" is not a number of seconds"),
            )
        })?);
    }
    if let Some(v) = env.get("XXL_JOB_EXECUTOR_APPNAME") {
        raw.executor.app_name = Some(v);
    }
    if let Some(v) = env.get("XXL_JOB_EXECUTOR_ADDRESS") {
        raw.executor.address = Some(v);
    }
    if let Some(v) = env.get("XXL_JOB_EXECUTOR_IP") {
        raw.executor.ip = Some(v);
    }
    if let Some(v) = env_int(env, "XXL_JOB_EXECUTOR_PORT")? {
        raw.executor.port = Some(v);
    }
    if let Some(v) = env.get("XXL_EDGE_LISTEN") {
        raw.executor.listen = Some(v);
    }
    if let Some(v) = env.get("XXL_EDGE_DATA_DIR") {
        raw.executor.data_dir = Some(PathBuf::from(v));
    }
    if let Some(v) = env_int(env, "XXL_JOB_EXECUTOR_LOG_RETENTION_DAYS")? {
        raw.executor.log_retention_days = Some(v);
    }
    if let Some(v) = env.get("XXL_EDGE_METRICS_LISTEN") {
        raw.telemetry.metrics_listen = Some(v);
    }
    if let Some(v) = env.get("XXL_EDGE_LOG_FORMAT") {
        raw.telemetry.log_format = Some(v);
    }
    // The standard OpenTelemetry variables.
    if let Some(v) = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") {
        raw.telemetry.otlp_endpoint = Some(v);
    }
    if let Some(v) = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        raw.telemetry.otlp_traces_endpoint = Some(v);
    }
    if let Some(v) = env.get("OTEL_SERVICE_NAME") {
        raw.telemetry.service_name = Some(v);
    }
    if let Some(v) = env.get("XXL_EDGE_GLUE_ENABLED") {
        raw.glue.enabled = Some(
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect(),
        );
    }
    Ok(())
}

fn apply_flags(raw: &mut RawConfig, f: &Overrides) {
    if let Some(v) = &f.admin_addresses {
        raw.admin.addresses = Some(v.clone());
    }
    if let Some(v) = &f.access_token {
        raw.admin.access_token = Some(v.clone());
    }
    if let Some(v) = &f.app_name {
        raw.executor.app_name = Some(v.clone());
    }
    if let Some(v) = &f.address {
        raw.executor.address = Some(v.clone());
    }
    if let Some(v) = &f.ip {
        raw.executor.ip = Some(v.clone());
    }
    if let Some(v) = f.port {
        raw.executor.port = Some(v);
    }
    if let Some(v) = &f.listen {
        raw.executor.listen = Some(v.clone());
    }
    if let Some(v) = &f.data_dir {
        raw.executor.data_dir = Some(v.clone());
    }
    if let Some(true) = f.log_json {
        raw.telemetry.log_format = Some("json".into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_validate() {
        let c = Config::defaults();
        assert_eq!(c.admin.addresses, vec![DEFAULT_ADMIN.to_string()]);
        assert_eq!(c.executor.port, 9999);
        assert_eq!(c.executor.data_dir, PathBuf::from("./data"));
        assert_eq!(c.admin.timeout, Duration::from_secs(3));
        assert!(c.glue_enabled.is_empty());
    }

    #[test]
    fn layers_rise_in_precedence() {
        let raw = Config::parse_toml(
            "[executor]\nport = 1000\napp_name = \"from-file\"\n[admin]\naddresses = [\"http://a/xxl-job-admin/\"]\n",
        )
        .unwrap();
        let mut raw2 = raw.clone();
        apply_env(
            &mut raw2,
            &env(&[
                ("XXL_JOB_EXECUTOR_PORT", "2000"),
                ("XXL_JOB_EXECUTOR_APPNAME", "from-env"),
            ]),
        )
        .unwrap();
        apply_flags(
            &mut raw2,
            &Overrides {
                port: Some(3000),
                ..Default::default()
            },
        );
        let c = Config::validate(raw2).unwrap();
        assert_eq!(c.executor.port, 3000);
        assert_eq!(c.executor.app_name, "from-env");
        assert_eq!(
            c.admin.addresses,
            vec!["http://a/xxl-job-admin".to_string()]
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::parse_toml("[executor]\nprot = 1\n").unwrap_err();
        assert!(e.contains("prot"), "{e}");
        let e = Config::validate(Config::parse_toml("[executor]\nport = 70000\n").unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("executor.port"), "{e}");
        let e = Config::load(
            None,
            &env(&[("XXL_JOB_EXECUTOR_PORT", "abc")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("XXL_JOB_EXECUTOR_PORT"), "{e}");
        let e = Config::validate(Config::parse_toml("[glue]\nenabled=[\"groovy\"]\n").unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("glue.enabled"), "{e}");
        let e = Config::validate(Config::parse_toml("[handlers.x]\ncommand=[]\n").unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("handlers.x.command"), "{e}");
    }

    #[test]
    fn otlp_endpoints_follow_the_standard_variables() {
        let c = Config::load(
            None,
            &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318/")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            c.telemetry.otlp_traces_url.as_deref(),
            Some("http://otel:4318/v1/traces")
        );
        let c = Config::load(
            None,
            &env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:1/x"),
                ("OTEL_SERVICE_NAME", "gw-7"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.telemetry.otlp_traces_url.as_deref(), Some("http://t:1/x"));
        let e = Config::load(
            None,
            &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "otel:4318")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("telemetry.otlp_endpoint"), "{e}");
        assert_eq!(c.telemetry.service_name, "gw-7");
        assert!(Config::defaults().telemetry.otlp_traces_url.is_none());
    }

    #[test]
    fn registered_address_is_verbatim_or_built() {
        let mut c = Config::defaults().executor;
        c.ip = Some("10.0.0.5".into());
        assert_eq!(c.registered_address(9999), "http://10.0.0.5:9999/");
        c.address = Some("http://gw-7.example:9999/".into());
        assert_eq!(c.registered_address(1), "http://gw-7.example:9999/");
    }
}

//! Typed, validated configuration: defaults < TOML file < environment < flags.
//!
//! Everything is checked here, before a socket is bound or the store is opened, so a bad value
//! stops the process with a message that names the key, and every bad value is reported at once.
//! The environment is read through [`Source`] so tests never touch the process environment.
//!
//! Each section lives in its own file, which names each of its keys once: its field in the
//! section as written, its environment variable (if any), and one conversion line with its
//! default and bounds. The flag layer is the table in `layers.rs`.
//!
//! The typed sections stay here rather than with the modules that use them: configuration is
//! the bottom layer, and its consumers (store, runner, server) sit above it.

mod admin;
mod check;
mod executor;
mod glue;
mod handlers;
mod keys;
mod layers;
mod runner;
mod secret;
mod server;
mod store;
mod telemetry;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::job::GlueKind;
use check::Check;

pub use admin::AdminConfig;
pub use executor::ExecutorConfig;
pub use handlers::CommandConfig;
pub use keys::{KeysConfig, RedisKeysConfig, Unreachable};
pub use runner::RunnerConfig;
pub use secret::Secret;
pub use server::ServerConfig;
pub use store::StoreConfig;
pub use telemetry::TelemetryConfig;

/// A configuration problem, naming the key (or variable) and what is wrong with it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
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
    /// Values out of range or malformed: every one found, not only the first.
    #[error("{0}")]
    Invalid(ConfigErrors),
}

/// Every bad value of one configuration, each with its key (or environment variable).
///
/// `Display` prints one line per problem, `invalid KEY: PROBLEM`, after a count when there
/// are several.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(Vec<(String, String)>);

impl ConfigErrors {
    /// Each problem as (key, what is wrong).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, p)| (k.as_str(), p.as_str()))
    }

    /// How many problems.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true for an error that was returned; here for symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [(key, problem)] = self.0.as_slice() {
            return write!(f, "invalid {key}: {problem}");
        }
        write!(f, "{} problems:", self.0.len())?;
        for (key, problem) in &self.0 {
            write!(f, "\n  invalid {key}: {problem}")?;
        }
        Ok(())
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

/// The configuration as written, before defaults and checks: what [`Config::parse_toml`]
/// returns and [`Config::validate`] takes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    admin: admin::Raw,
    #[serde(default)]
    executor: executor::Raw,
    #[serde(default)]
    runner: runner::Raw,
    #[serde(default)]
    server: server::Raw,
    #[serde(default)]
    store: store::Raw,
    #[serde(default)]
    glue: glue::Raw,
    #[serde(default)]
    telemetry: telemetry::Raw,
    #[serde(default)]
    keys: keys::Raw,
    #[serde(default)]
    handlers: BTreeMap<String, handlers::Raw>,
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
    /// Where idempotency keys live.
    pub keys: KeysConfig,
    /// Command handlers by name.
    pub handlers: BTreeMap<String, CommandConfig>,
    /// Each key and the value it took, recorded by the conversion itself.
    summary: Vec<(String, String)>,
}

/// Flag overrides from the command line (the highest layer).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--admin` (repeatable).
    pub admin_addresses: Option<Vec<String>>,
    /// `--token`.
    pub access_token: Option<Secret>,
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
    /// `--tls-cert`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key`.
    pub tls_key: Option<PathBuf>,
    /// `--tls-client-ca`.
    pub tls_client_ca: Option<PathBuf>,
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
    /// A [`ConfigError`]: the file's first unknown key or wrong type (the TOML parser stops
    /// there), else every bad value of every layer.
    pub fn load(
        file: Option<&Path>,
        env: &dyn Source,
        flags: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => Self::read_file(path)?,
            None => toml::Table::new(),
        };
        let mut check = Check::default();
        layers::apply_env(&mut table, env, &mut check);
        layers::apply_flags(&mut table, flags, &mut check);
        match toml::Value::Table(table).try_into::<RawConfig>() {
            Ok(raw) => Self::convert(raw, check),
            Err(e) => {
                // The layers set only known keys with values of their type, so this is a bug in a
                // section's variable table; say so rather than panic.
                check.problem("environment or flags", e.to_string().trim_end().to_string());
                Err(ConfigError::Invalid(ConfigErrors(check.problems)))
            }
        }
    }

    /// Reads and checks the file (keys and types, with the line of the first problem), as the
    /// table the other layers are laid over.
    fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let parse_error = |message| ConfigError::Parse {
            path: path.to_path_buf(),
            message,
        };
        Self::parse_toml(&text).map_err(parse_error)?;
        toml::from_str(&text).map_err(|e| parse_error(e.to_string().trim_end().to_string()))
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
    /// [`ConfigError::Invalid`] listing every bad key.
    pub fn validate(raw: RawConfig) -> Result<Self, ConfigError> {
        Self::convert(raw, Check::default())
    }

    fn convert(raw: RawConfig, mut c: Check) -> Result<Self, ConfigError> {
        let config = Config {
            admin: raw.admin.convert(&mut c),
            executor: raw.executor.convert(&mut c),
            runner: raw.runner.convert(&mut c),
            server: raw.server.convert(&mut c),
            store: raw.store.convert(&mut c),
            glue_enabled: raw.glue.convert(&mut c),
            telemetry: raw.telemetry.convert(&mut c),
            keys: KeysConfig::Local,
            handlers: handlers::convert(raw.handlers, &mut c),
            summary: Vec::new(),
        };
        let keys = raw.keys.convert(&config.executor.app_name, &mut c);
        if !c.problems.is_empty() {
            return Err(ConfigError::Invalid(ConfigErrors(c.problems)));
        }
        Ok(Config {
            keys,
            summary: c.shown,
            ..config
        })
    }

    /// What `check-config` points out about a valid configuration that may not do what it seems
    /// to.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.admin.addresses.len() > 1 {
            notes.push(format!(
                "admin.addresses lists {} admins: they must be members of one admin cluster \
                 (one shared database). A trigger carries no admin identity, so independent \
                 admins would collide on logIds (\"repeat trigger job\") and one admin's \
                 callbacks would go to another; run one executor per independent admin \
                 instead (its own port and data_dir).",
                self.admin.addresses.len()
            ));
        }
        if let KeysConfig::Redis(r) = &self.keys {
            if r.unreachable == Unreachable::Local {
                notes.push(
                    "keys.unreachable = \"local\": while Redis cannot be reached, an \
                     idempotency key holds on this device only, so another device of the app may \
                     run the same key too (each such run's log says so)."
                        .to_string(),
                );
            }
        }
        notes.extend(self.transport_notes());
        notes
    }

    /// File descriptors kept free of connections: the store's files, the listeners, the admin
    /// client's sockets, the log output (64), and a job process's pipes (4 each).
    pub fn fd_reserve(&self) -> u64 {
        64 + 4 * self.runner.max_running as u64
    }

    /// The soft open-file limit this configuration wants: every connection plus
    /// [`Config::fd_reserve`].
    pub fn open_files_wanted(&self) -> u64 {
        self.server.max_connections as u64 + self.fd_reserve()
    }

    /// Each key as `(key, value)` with the value it took when it was validated (secrets shown as
    /// `(set)` or `(none)`), for `check-config`. Changes made to the fields afterwards are not
    /// reflected.
    pub fn summary(&self) -> impl Iterator<Item = (&str, &str)> {
        self.summary.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::admin::DEFAULT_ADMIN;
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn invalid(toml: &str) -> ConfigErrors {
        match Config::validate(Config::parse_toml(toml).unwrap()) {
            Err(ConfigError::Invalid(e)) => e,
            other => panic!("expected invalid values, got {other:?}"),
        }
    }

    fn keys(e: &ConfigErrors) -> Vec<&str> {
        e.iter().map(|(k, _)| k).collect()
    }

    #[test]
    fn defaults_validate() {
        let c = Config::defaults();
        assert_eq!(c.admin.addresses, vec![DEFAULT_ADMIN.to_string()]);
        assert_eq!(c.executor.port, 9999);
        assert_eq!(c.executor.data_dir, PathBuf::from("./data"));
        assert_eq!(c.admin.timeout, Duration::from_secs(3));
        assert!(c.glue_enabled.is_empty());
        assert_eq!(c.telemetry.log_level, "info");
        assert!(c.admin.access_token.is_empty());
    }

    #[test]
    fn layers_rise_in_precedence() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("xxl-edge.toml");
        std::fs::write(
            &file,
            "[executor]\nport = 1000\napp_name = \"from-file\"\nip = \"10.0.0.1\"\n\
             [admin]\naddresses = [\"http://a/xxl-job-admin/\"]\n[runner]\nmax_running = 7\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&file),
            &env(&[
                ("XXL_JOB_EXECUTOR_PORT", "2000"),
                ("XXL_JOB_EXECUTOR_APPNAME", "from-env"),
                ("XXL_JOB_ACCESS_TOKEN", "env-token"),
            ]),
            &Overrides {
                port: Some(3000),
                access_token: Some(Secret::new("flag-token")),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.executor.port, 3000);
        assert_eq!(c.executor.app_name, "from-env");
        assert_eq!(c.executor.ip.as_deref(), Some("10.0.0.1"));
        assert_eq!(c.runner.max_running, 7);
        assert_eq!(c.admin.access_token.expose(), "flag-token");
        assert_eq!(
            c.admin.addresses,
            vec!["http://a/xxl-job-admin".to_string()]
        );
    }

    #[test]
    fn a_local_fallback_for_redis_keys_is_pointed_out() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        let notes = |unreachable: &str| {
            std::fs::write(
                &file,
                format!("[keys]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\n{unreachable}"),
            )
            .unwrap();
            Config::load(Some(&file), &env(&[]), &Overrides::default())
                .unwrap()
                .notes()
        };
        let local = notes("unreachable = \"local\"\n");
        assert!(
            local
                .iter()
                .any(|n| n.contains("holds on this device only")),
            "{local:?}"
        );
        assert!(notes("").is_empty(), "fail (the default) needs no note");
    }

    #[test]
    fn the_tls_flags_set_the_executor_tls_keys() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, "not parsed here").unwrap();
            p
        };
        let (cert, key, ca) = (file("cert.pem"), file("key.pem"), file("ca.pem"));
        let c = Config::load(
            None,
            &env(&[("XXL_EDGE_TLS_CERT", "/nowhere/env.pem")]),
            &Overrides {
                tls_cert: Some(cert.clone()),
                tls_key: Some(key.clone()),
                tls_client_ca: Some(ca.clone()),
                ..Default::default()
            },
        )
        .unwrap();
        let tls = c.executor.tls.expect("TLS on");
        assert_eq!((tls.cert, tls.key, tls.client_ca), (cert, key, Some(ca)));
    }

    #[test]
    fn every_variable_sets_its_key() {
        let c = Config::load(
            None,
            &env(&[
                ("XXL_JOB_ADMIN_ADDRESSES", "http://a:1/, ,http://b:2"),
                ("XXL_JOB_ACCESS_TOKEN", "t"),
                ("XXL_JOB_ADMIN_TIMEOUT", "1.5"),
                ("XXL_JOB_EXECUTOR_APPNAME", "gw"),
                ("XXL_JOB_EXECUTOR_ADDRESS", "http://gw-7:9999/"),
                ("XXL_JOB_EXECUTOR_IP", "10.1.1.1"),
                ("XXL_JOB_EXECUTOR_PORT", "9001"),
                ("XXL_EDGE_LISTEN", "127.0.0.1"),
                ("XXL_EDGE_DATA_DIR", "/var/lib/x"),
                ("XXL_JOB_EXECUTOR_LOG_RETENTION_DAYS", "3"),
                ("XXL_EDGE_METRICS_LISTEN", "127.0.0.1:9100"),
                ("XXL_EDGE_LOG_FORMAT", "json"),
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel:4318"),
                ("OTEL_SERVICE_NAME", "gw-7"),
                ("XXL_EDGE_GLUE_ENABLED", "shell, python,"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.admin.addresses, vec!["http://a:1", "http://b:2"]);
        assert_eq!(c.admin.access_token.expose(), "t");
        assert_eq!(c.admin.timeout, Duration::from_millis(1500));
        assert_eq!(c.executor.app_name, "gw");
        assert_eq!(c.executor.address.as_deref(), Some("http://gw-7:9999/"));
        assert_eq!(c.executor.ip.as_deref(), Some("10.1.1.1"));
        assert_eq!(c.executor.port, 9001);
        assert_eq!(c.executor.listen.to_string(), "127.0.0.1");
        assert_eq!(c.executor.data_dir, PathBuf::from("/var/lib/x"));
        assert_eq!(c.executor.log_retention_days, 3);
        assert_eq!(
            c.telemetry.metrics_listen.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:9100")
        );
        assert!(c.telemetry.log_json);
        assert_eq!(c.glue_enabled.len(), 2);
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::parse_toml("[executor]\nprot = 1\n").unwrap_err();
        assert!(e.contains("prot"), "{e}");
        let e = Config::validate(Config::parse_toml("[executor]\nport = 70000\n").unwrap())
            .unwrap_err()
            .to_string();
        assert_eq!(e, "invalid executor.port: 70000 is not in 0..=65535");
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
        let e = invalid("[handlers.y]\nrerun_safe = true\n");
        assert_eq!(keys(&e), ["handlers.y.command"]);
    }

    #[test]
    fn every_bad_value_is_reported_at_once() {
        let e = invalid(
            "[admin]\naddresses = [\"ftp://a\"]\ntimeout_secs = 0\n\
             [executor]\nport = 70000\nlisten = \"everywhere\"\n\
             [runner]\nmax_running = 0\n\
             [store]\nflush_every_ms = -1\n\
             [telemetry]\nlog_level = \"loud\"\nlog_format = \"xml\"\n\
             [handlers.a]\ncommand = []\n[handlers.b]\ncommand = [\"x\"]\nidempotency_key = \" \"\n",
        );
        assert_eq!(
            keys(&e),
            [
                "admin.addresses",
                "admin.timeout_secs",
                "executor.port",
                "executor.listen",
                "runner.max_running",
                "store.flush_every_ms",
                "telemetry.log_level",
                "telemetry.log_format",
                "handlers.a.command",
                "handlers.b.idempotency_key",
            ]
        );
        let text = e.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "10 problems:");
        assert_eq!(lines.len(), 11, "{text}");
        assert!(lines[3].contains("invalid executor.port: 70000 is not in 0..=65535"));
    }

    #[test]
    fn variable_errors_and_value_errors_come_together() {
        let e = Config::load(
            None,
            &env(&[
                ("XXL_JOB_EXECUTOR_PORT", "abc"),
                ("XXL_JOB_ADMIN_TIMEOUT", "soon"),
                ("XXL_EDGE_LOG_FORMAT", "xml"),
            ]),
            &Overrides {
                listen: Some("nowhere".into()),
                ..Default::default()
            },
        );
        let Err(ConfigError::Invalid(e)) = e else {
            panic!("expected invalid values, got {e:?}");
        };
        assert_eq!(
            keys(&e),
            [
                "XXL_JOB_ADMIN_TIMEOUT",
                "XXL_JOB_EXECUTOR_PORT",
                "executor.listen",
                "telemetry.log_format",
            ]
        );
    }

    #[test]
    fn log_level_is_a_filter_the_logger_understands() {
        for ok in [
            "info",
            "WARN",
            "off",
            "warn,xxl_edge=debug",
            " info , sled=warn ",
        ] {
            let toml = format!("[telemetry]\nlog_level = \"{ok}\"\n");
            let c = Config::validate(Config::parse_toml(&toml).unwrap())
                .unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert!(!c.telemetry.log_level.contains(' '), "{ok}");
        }
        for bad in [
            "loud",
            "debgu",
            "xxl_edge=loud",
            "info,,warn",
            "",
            "a=b=c",
            "[[[=",
            "=info",
            "xxl_edge=",
        ] {
            let toml = format!("[telemetry]\nlog_level = \"{bad}\"\n");
            let e = invalid(&toml);
            assert_eq!(keys(&e), ["telemetry.log_level"], "{bad}");
        }
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
    fn admin_credentials_are_never_printed() {
        let c = Config::load(
            None,
            &env(&[(
                "XXL_JOB_ADMIN_ADDRESSES",
                "http://ops:s3cr3t@a:1/xxl-job-admin",
            )]),
            &Overrides::default(),
        )
        .unwrap();
        let shown: String = c.summary().map(|(k, v)| format!("{k} = {v}\n")).collect();
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert!(shown.contains("a:1/xxl-job-admin"), "{shown}");
        let e = Config::load(
            None,
            &env(&[("XXL_JOB_ADMIN_ADDRESSES", "http://ops:s3cr3t@a:1/x y")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("admin.addresses") && !e.contains("s3cr3t"),
            "{e}"
        );
    }

    #[test]
    fn the_token_is_never_printed() {
        let token = "s3cr3t-token-value";
        let c = Config::load(
            None,
            &env(&[("XXL_JOB_ACCESS_TOKEN", token)]),
            &Overrides {
                access_token: Some(Secret::new(token)),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.admin.access_token.expose(), token);
        for text in [
            format!("{c:?}"),
            format!("{c:#?}"),
            format!(
                "{:?}",
                Config::parse_toml(&format!("[admin]\naccess_token = \"{token}\"\n"))
            ),
            format!(
                "{:?}",
                Overrides {
                    access_token: Some(Secret::new(token)),
                    ..Default::default()
                }
            ),
            c.summary().map(|(k, v)| format!("{k} = {v}\n")).collect(),
        ] {
            assert!(!text.contains(token), "{text}");
        }
        assert!(c
            .summary()
            .any(|(k, v)| k == "admin.access_token" && v == "(set)"));
    }

    #[test]
    fn summary_lists_every_key_once() {
        let c = Config::validate(
            Config::parse_toml("[handlers.h]\ncommand = [\"/bin/true\"]\n").unwrap(),
        )
        .unwrap();
        let keys: Vec<&str> = c.summary().map(|(k, _)| k).collect();
        let mut unique = keys.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), keys.len(), "{keys:?}");
        for k in [
            "admin.timeout_secs",
            "executor.port",
            "runner.max_running",
            "server.log_page_max_lines",
            "store.flush_every_ms",
            "glue.enabled",
            "telemetry.log_level",
            "handlers.h.command",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
    }

    #[test]
    fn a_token_that_can_never_match_is_refused_without_being_shown() {
        for bad in [
            r"s3cr3t\nline",
            r"s3cr3t\r",
            r"s3cr3t\t",
            "s3cr3t-\u{e9}",
            "   ",
            " s3cr3t",
            "s3cr3t ",
        ] {
            // TOML basic strings: `\n` in the file is a newline in the token.
            let e = invalid(&format!("[admin]\naccess_token = \"{bad}\"\n"));
            assert_eq!(keys(&e), ["admin.access_token"], "{bad:?}");
            assert!(!e.to_string().contains("s3cr3t"), "{e}");
        }
        // The same through the environment and the flag.
        let e = Config::load(
            None,
            &env(&[("XXL_JOB_ACCESS_TOKEN", "s3cr3t\n")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("admin.access_token"), "{e}");
        assert!(!e.contains("s3cr3t"), "{e}");
        let e = Config::load(
            None,
            &env(&[]),
            &Overrides {
                access_token: Some(Secret::new("  ")),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("only blanks"), "{e}");
        for ok in ["", "default_token", "a b", "!#$%&'()*+,-./:;<=>?@[]^_`{|}~"] {
            let c = Config::load(
                None,
                &env(&[("XXL_JOB_ACCESS_TOKEN", ok)]),
                &Overrides::default(),
            )
            .unwrap_or_else(|e| panic!("{ok:?}: {e}"));
            assert_eq!(c.admin.access_token.expose(), ok);
        }
    }

    #[test]
    fn several_admins_are_noted_as_one_cluster() {
        let one = Config::defaults();
        assert!(one.notes().is_empty());
        let two = Config::load(
            None,
            &env(&[("XXL_JOB_ADMIN_ADDRESSES", "http://a:1,http://b:2")]),
            &Overrides::default(),
        )
        .unwrap();
        let notes = two.notes();
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].contains("members of one admin cluster"),
            "{}",
            notes[0]
        );
        assert!(
            notes[0].contains("one executor per independent admin"),
            "{}",
            notes[0]
        );
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

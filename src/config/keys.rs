//! `[keys]`: where idempotency keys live, this device's store (`local`) or a Redis the whole
//! fleet of an app shares (`redis`).

use std::time::Duration;

use serde::Deserialize;

use super::check::Check;
use super::layers::{EnvVar, Kind};
use super::secret::Secret;

pub(super) const ENV: &[EnvVar] = &[
    EnvVar::new("XXL_EDGE_KEYS_BACKEND", "keys.backend", Kind::Text),
    EnvVar::new("XXL_EDGE_KEYS_REDIS_URL", "keys.redis_url", Kind::Text),
    EnvVar::new("XXL_EDGE_KEYS_DEVICE", "keys.device", Kind::Text),
];

/// `[keys]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    backend: Option<String>,
    /// May carry a password: kept as a [`Secret`], shown as `(set)`.
    redis_url: Option<Secret>,
    prefix: Option<String>,
    device: Option<String>,
    connect_timeout_secs: Option<f64>,
    call_timeout_secs: Option<f64>,
    lock_ttl_secs: Option<f64>,
    unreachable: Option<String>,
}

/// Where idempotency keys are checked and held.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum KeysConfig {
    /// This device's own store: a key holds on this device only (the default).
    #[default]
    Local,
    /// A Redis shared by every device of the app.
    Redis(RedisKeysConfig),
}

/// What to do with a keyed trigger when Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unreachable {
    /// The run fails with a message naming Redis: never run twice silently.
    Fail,
    /// The device's own keys decide, and the run log says so.
    Local,
}

/// The Redis backend of idempotency keys.
#[derive(Debug, Clone)]
pub struct RedisKeysConfig {
    /// `redis://[user:password@]host[:port][/db]` or `rediss://…` (TLS).
    pub url: Secret,
    /// Prepended to every Redis key; default `xxl-edge:{app_name}:`.
    pub prefix: String,
    /// This device's name in lock tokens and messages; default the address it registers.
    pub device: Option<String>,
    /// Bound on opening a connection.
    pub connect_timeout: Duration,
    /// Bound on one call (connection included).
    pub call_timeout: Duration,
    /// A held lock lives this long without renewal (a dead device's lock ends then); a run
    /// renews it every third of it.
    pub lock_ttl: Duration,
    /// When Redis cannot be reached.
    pub unreachable: Unreachable,
}

impl Raw {
    pub(super) fn convert(self, app_name: &str, c: &mut Check) -> KeysConfig {
        let backend = self.backend.as_deref().map(str::trim).unwrap_or("local");
        let unreachable = match self.unreachable.as_deref().map(str::trim) {
            None | Some("fail") => Unreachable::Fail,
            Some("local") => Unreachable::Local,
            Some(other) => {
                c.problem(
                    "keys.unreachable",
                    format!("\"{other}\" is not \"fail\" or \"local\""),
                );
                Unreachable::Fail
            }
        };
        let connect_timeout = c.secs(
            "keys.connect_timeout_secs",
            self.connect_timeout_secs,
            2.0,
            0.01..=60.0,
        );
        let call_timeout = c.secs(
            "keys.call_timeout_secs",
            self.call_timeout_secs,
            2.0,
            0.01..=60.0,
        );
        let lock_ttl = c.secs(
            "keys.lock_ttl_secs",
            self.lock_ttl_secs,
            60.0,
            0.3..=86_400.0,
        );
        match backend {
            "local" => {
                c.show("keys.backend", "local");
                KeysConfig::Local
            }
            "redis" => {
                c.show("keys.backend", "redis");
                let url = self.redis_url.unwrap_or_default();
                let text = url.expose().trim();
                if text.is_empty() {
                    c.problem(
                        "keys.redis_url",
                        "must be set when keys.backend is \"redis\"",
                    );
                } else if !(text.starts_with("redis://") || text.starts_with("rediss://")) {
                    // The text may hold a password: the problem does not repeat it.
                    c.problem("keys.redis_url", "is not a redis:// or rediss:// URL");
                } else if let Err(e) = redis::Client::open(text) {
                    c.problem(
                        "keys.redis_url",
                        format!("cannot be used: {}", e.kind_text()),
                    );
                } else {
                    c.show("keys.redis_url", "(set)");
                }
                let prefix = self
                    .prefix
                    .unwrap_or_else(|| format!("xxl-edge:{app_name}:"));
                c.show("keys.prefix", &prefix);
                let device = self
                    .device
                    .map(|d| d.trim().to_string())
                    .filter(|d| !d.is_empty());
                if let Some(d) = &device {
                    if d.contains('/') {
                        c.problem("keys.device", "must not contain '/'");
                    }
                    c.show("keys.device", d);
                }
                if !matches!(unreachable, Unreachable::Fail) {
                    c.show("keys.unreachable", "local");
                } else {
                    c.show("keys.unreachable", "fail");
                }
                KeysConfig::Redis(RedisKeysConfig {
                    url: Secret::new(text.to_string()),
                    prefix,
                    device,
                    connect_timeout,
                    call_timeout,
                    lock_ttl,
                    unreachable,
                })
            }
            other => {
                c.problem(
                    "keys.backend",
                    format!("\"{other}\" is not \"local\" or \"redis\""),
                );
                KeysConfig::Local
            }
        }
    }
}

/// A Redis error's kind without its detail (which could quote the URL).
trait KindText {
    fn kind_text(&self) -> String;
}

impl KindText for redis::RedisError {
    fn kind_text(&self) -> String {
        format!("{:?}", self.kind())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Config, ConfigError};
    use super::*;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::validate(Config::parse_toml(text).unwrap())
    }

    fn problems(text: &str) -> Vec<(String, String)> {
        match load(text) {
            Err(ConfigError::Invalid(e)) => e
                .iter()
                .map(|(k, p)| (k.to_string(), p.to_string()))
                .collect(),
            other => panic!("expected problems, got {other:?}"),
        }
    }

    #[test]
    fn keys_default_to_the_device_store() {
        assert!(matches!(Config::defaults().keys, KeysConfig::Local));
    }

    #[test]
    fn a_redis_backend_takes_its_url_prefix_and_policy() {
        let c = load(
            "[executor]\napp_name = \"gw\"\n[keys]\nbackend = \"redis\"\n\
             redis_url = \"rediss://:s3cret@redis.site:6380/2\"\nlock_ttl_secs = 5\n\
             unreachable = \"local\"\n",
        )
        .unwrap();
        let KeysConfig::Redis(r) = &c.keys else {
            panic!("{:?}", c.keys)
        };
        assert_eq!(r.url.expose(), "rediss://:s3cret@redis.site:6380/2");
        assert_eq!(r.prefix, "xxl-edge:gw:");
        assert_eq!(r.lock_ttl, Duration::from_secs(5));
        assert_eq!(r.unreachable, Unreachable::Local);
        assert_eq!(r.call_timeout, Duration::from_secs(2));
        let shown: Vec<_> = c.summary().collect();
        assert!(shown.contains(&("keys.redis_url", "(set)")), "{shown:?}");
        assert!(!format!("{shown:?}{c:?}").contains("s3cret"));
    }

    #[test]
    fn bad_keys_settings_are_named_without_the_password() {
        assert_eq!(
            problems("[keys]\nbackend = \"memcached\"\n"),
            vec![(
                "keys.backend".to_string(),
                "\"memcached\" is not \"local\" or \"redis\"".to_string()
            )]
        );
        assert_eq!(
            problems("[keys]\nbackend = \"redis\"\n"),
            vec![(
                "keys.redis_url".to_string(),
                "must be set when keys.backend is \"redis\"".to_string()
            )]
        );
        let p = problems(
            "[keys]\nbackend = \"redis\"\nredis_url = \"http://:pw@h/\"\nunreachable = \"retry\"\ndevice = \"a/b\"\n",
        );
        assert_eq!(
            p.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["keys.unreachable", "keys.redis_url", "keys.device"]
        );
        assert!(!format!("{p:?}").contains("pw"));
    }
}

//! The environment and flag layers, laid over the file's table before it is read.
//!
//! Layering on the TOML table (not on typed structs) means a key is set by its name alone: the
//! environment table in each section's file and the flag table below name the key once, and no
//! per-field merge code exists.

use toml::{Table, Value};

use super::check::Check;
use super::{admin, executor, glue, keys, server, telemetry, Overrides, Source};

/// One environment variable and the TOML key it sets.
pub(super) struct EnvVar {
    var: &'static str,
    key: &'static str,
    kind: Kind,
}

impl EnvVar {
    pub(super) const fn new(var: &'static str, key: &'static str, kind: Kind) -> Self {
        Self { var, key, kind }
    }
}

/// How a variable's text is read.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    /// As is.
    Text,
    /// Comma-separated; blanks around items and empty items are dropped.
    List,
    /// A whole number.
    Int,
    /// A number of seconds.
    Secs,
}

/// Every section's variables.
const ENV: [&[EnvVar]; 6] = [
    admin::ENV,
    executor::ENV,
    glue::ENV,
    keys::ENV,
    server::ENV,
    telemetry::ENV,
];

/// Sets `section.name` in `table`.
fn set(table: &mut Table, key: &str, value: Value) {
    let (section, name) = key.split_once('.').unwrap_or(("", key));
    let entry = table
        .entry(section)
        .or_insert_with(|| Value::Table(Table::new()));
    if !entry.is_table() {
        // The file's own check rejected a non-table section before this runs.
        *entry = Value::Table(Table::new());
    }
    if let Value::Table(t) = entry {
        t.insert(name.to_string(), value);
    }
}

fn list<'a>(items: impl IntoIterator<Item = &'a str>) -> Value {
    Value::Array(
        items
            .into_iter()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| Value::String(s.to_string()))
            .collect(),
    )
}

/// Lays every set variable over `table`; text that is not of the variable's kind is a problem
/// named after the variable.
pub(super) fn apply_env(table: &mut Table, env: &dyn Source, c: &mut Check) {
    for v in ENV.iter().flat_map(|vars| vars.iter()) {
        let Some(text) = env.get(v.var) else {
            continue;
        };
        let value = match v.kind {
            Kind::Text => Value::String(text),
            Kind::List => list(text.split(',')),
            Kind::Int => match text.trim().parse() {
                Ok(n) => Value::Integer(n),
                Err(_) => {
                    c.problem(v.var, format!("\"{text}\" is not a whole number"));
                    continue;
                }
            },
            Kind::Secs => match text.trim().parse() {
                Ok(n) => Value::Float(n),
                Err(_) => {
                    c.problem(v.var, format!("\"{text}\" is not a number of seconds"));
                    continue;
                }
            },
        };
        set(table, v.key, value);
    }
}

/// Lays the command-line flags over `table` (the highest layer).
pub(super) fn apply_flags(table: &mut Table, f: &Overrides, c: &mut Check) {
    let text = |s: &Option<String>| s.clone().map(Value::String);
    let mut path = |flag: &str, p: &Option<std::path::PathBuf>| {
        p.as_ref().and_then(|d| match d.to_str() {
            Some(s) => Some(Value::String(s.to_string())),
            None => {
                c.problem(flag, format!("{} is not valid UTF-8", d.display()));
                None
            }
        })
    };
    let data_dir = path("--data-dir", &f.data_dir);
    let tls_cert = path("--tls-cert", &f.tls_cert);
    let tls_key = path("--tls-key", &f.tls_key);
    let tls_client_ca = path("--tls-client-ca", &f.tls_client_ca);
    let flags = [
        (
            "admin.addresses",
            f.admin_addresses
                .as_ref()
                .map(|a| Value::Array(a.iter().cloned().map(Value::String).collect())),
        ),
        (
            "admin.access_token",
            f.access_token
                .as_ref()
                .map(|t| Value::String(t.expose().to_string())),
        ),
        ("executor.app_name", text(&f.app_name)),
        ("executor.address", text(&f.address)),
        ("executor.ip", text(&f.ip)),
        ("executor.port", f.port.map(Value::Integer)),
        ("executor.listen", text(&f.listen)),
        ("executor.data_dir", data_dir),
        ("executor.tls_cert", tls_cert),
        ("executor.tls_key", tls_key),
        ("executor.tls_client_ca", tls_client_ca),
        (
            "telemetry.log_format",
            (f.log_json == Some(true)).then(|| Value::String("json".into())),
        ),
    ];
    for (key, value) in flags {
        if let Some(value) = value {
            set(table, key, value);
        }
    }
}

//! `[executor]`: this executor's identity and local resources.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::tls::ServerTlsConfig;

use super::check::Check;
use super::layers::{EnvVar, Kind};

/// The reference's default port.
pub(super) const DEFAULT_PORT: u16 = 9999;

pub(super) const ENV: &[EnvVar] = &[
    EnvVar::new("XXL_JOB_EXECUTOR_APPNAME", "executor.app_name", Kind::Text),
    EnvVar::new("XXL_JOB_EXECUTOR_ADDRESS", "executor.address", Kind::Text),
    EnvVar::new("XXL_JOB_EXECUTOR_IP", "executor.ip", Kind::Text),
    EnvVar::new("XXL_JOB_EXECUTOR_PORT", "executor.port", Kind::Int),
    EnvVar::new("XXL_EDGE_LISTEN", "executor.listen", Kind::Text),
    EnvVar::new("XXL_EDGE_DATA_DIR", "executor.data_dir", Kind::Text),
    EnvVar::new(
        "XXL_JOB_EXECUTOR_LOG_RETENTION_DAYS",
        "executor.log_retention_days",
        Kind::Int,
    ),
    EnvVar::new("XXL_EDGE_TLS_CERT", "executor.tls_cert", Kind::Text),
    EnvVar::new("XXL_EDGE_TLS_KEY", "executor.tls_key", Kind::Text),
    EnvVar::new(
        "XXL_EDGE_TLS_CLIENT_CA",
        "executor.tls_client_ca",
        Kind::Text,
    ),
    EnvVar::new(
        "XXL_EDGE_TLS_RELOAD_SECS",
        "executor.tls_reload_secs",
        Kind::Secs,
    ),
];

/// `[executor]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    app_name: Option<String>,
    address: Option<String>,
    ip: Option<String>,
    port: Option<i64>,
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    log_retention_days: Option<i64>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    tls_reload_secs: Option<f64>,
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
    /// TLS on the executor port; `None`: plain HTTP.
    pub tls: Option<ServerTlsConfig>,
}

impl ExecutorConfig {
    /// The address to register: `executor.address` verbatim, else `http://{ip}:{port}/`, or
    /// `https://…` when the port speaks TLS.
    pub fn registered_address(&self, bound_port: u16) -> String {
        if let Some(a) = &self.address {
            return a.clone();
        }
        let ip = self.ip.clone().unwrap_or_else(detect_ip);
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{ip}:{bound_port}/")
    }
}

/// The first non-loopback IPv4 address of this host, as the reference picks it.
fn detect_ip() -> String {
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

/// A file the process must be able to read: a problem when it is not a readable file. Only
/// opened here (its content is checked when the executor starts, by the TLS loader).
pub(super) fn readable_file(c: &mut Check, key: &str, path: &Path) {
    match std::fs::File::open(path).and_then(|f| f.metadata()) {
        Ok(m) if m.is_file() => c.show(key, path.display()),
        Ok(_) => c.problem(key, format!("{} is not a file", path.display())),
        Err(e) => c.problem(key, format!("cannot read {}: {e}", path.display())),
    }
}

/// A path given as text: trimmed, blank means unset.
fn given_path(p: Option<PathBuf>) -> Option<PathBuf> {
    p.and_then(|p| given(p.to_str().map(str::to_string)).map(PathBuf::from))
}

/// Trimmed; blank means unset.
fn given(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

impl Raw {
    pub(super) fn convert(self, c: &mut Check) -> ExecutorConfig {
        let app_name = self
            .app_name
            .unwrap_or_else(|| "xxl-edge".to_string())
            .trim()
            .to_string();
        if app_name.is_empty() || app_name.len() > 64 || app_name.contains(char::is_whitespace) {
            c.problem(
                "executor.app_name",
                "must be 1 to 64 characters without spaces (the admin's appname)",
            );
        }
        c.show("executor.app_name", &app_name);

        let address = given(self.address);
        if let Some(a) = &address {
            if !(a.starts_with("http://") || a.starts_with("https://")) || a.contains(',') {
                c.problem(
                    "executor.address",
                    format!("\"{a}\" must be an http:// or https:// URL without commas"),
                );
            }
            c.show("executor.address", a);
        }
        let ip = given(self.ip);
        if let Some(ip) = &ip {
            if ip.contains(['/', ',', ' ']) {
                c.problem("executor.ip", format!("\"{ip}\" is not a host"));
            }
            c.show("executor.ip", ip);
        }

        let port = c.int(
            "executor.port",
            self.port,
            i64::from(DEFAULT_PORT),
            0..=i64::from(u16::MAX),
        ) as u16;

        let listen_s = self.listen.unwrap_or_else(|| "0.0.0.0".to_string());
        let listen = match listen_s.trim().parse::<IpAddr>() {
            Ok(ip) => {
                c.show("executor.listen", ip);
                ip
            }
            Err(_) => {
                c.problem(
                    "executor.listen",
                    format!("\"{listen_s}\" is not an IP address"),
                );
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            }
        };

        let data_dir = self.data_dir.unwrap_or_else(|| PathBuf::from("./data"));
        if data_dir.as_os_str().is_empty() {
            c.problem("executor.data_dir", "must not be empty");
        }
        c.show("executor.data_dir", data_dir.display());

        let tls = convert_tls(
            c,
            given_path(self.tls_cert),
            given_path(self.tls_key),
            given_path(self.tls_client_ca),
            self.tls_reload_secs,
        );
        if let (Some(_), Some(a)) = (&tls, &address) {
            if a.starts_with("http://") {
                c.problem(
                    "executor.address",
                    format!("\"{a}\" is http:// but the port speaks TLS (executor.tls_cert): the admin would send plain HTTP to it; register https://"),
                );
            }
        }

        ExecutorConfig {
            app_name,
            address,
            ip,
            port,
            listen,
            data_dir,
            log_retention_days: c.int(
                "executor.log_retention_days",
                self.log_retention_days,
                30,
                0..=36_500,
            ) as u32,
            tls,
        }
    }
}

/// `executor.tls_*`: both the certificate and the key, or neither.
fn convert_tls(
    c: &mut Check,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    reload_secs: Option<f64>,
) -> Option<ServerTlsConfig> {
    let reload = c.secs(
        "executor.tls_reload_secs",
        reload_secs,
        30.0,
        0.0..=86_400.0,
    );
    let (cert, key) = match (cert, key) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) => {
            if client_ca.is_some() {
                c.problem(
                    "executor.tls_client_ca",
                    "needs TLS on the port (executor.tls_cert and executor.tls_key)",
                );
            }
            return None;
        }
        (Some(_), None) => {
            c.problem(
                "executor.tls_key",
                "must be set with executor.tls_cert (the certificate's private key)",
            );
            return None;
        }
        (None, Some(_)) => {
            c.problem(
                "executor.tls_cert",
                "must be set with executor.tls_key (the certificate chain, PEM)",
            );
            return None;
        }
    };
    readable_file(c, "executor.tls_cert", &cert);
    readable_file(c, "executor.tls_key", &key);
    if let Some(ca) = &client_ca {
        readable_file(c, "executor.tls_client_ca", ca);
    }
    Some(ServerTlsConfig {
        cert,
        key,
        client_ca,
        reload_every: (!reload.is_zero()).then_some(reload),
    })
}

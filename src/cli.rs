//! The command line, apart from `main.rs` so that `examples/dist-docs.rs` can build the man
//! pages and shell completions from the same definition without putting their generators
//! into the device binary.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use xxl_edge::config::Secret;

/// What `--version` prints after the name: the crate version, the target triple the binary was
/// built for and its git commit (both from `build.rs`), so a binary found on a device says
/// what it is.
pub(crate) const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("XXL_EDGE_BUILD_TARGET"),
    ", commit ",
    env!("XXL_EDGE_GIT_COMMIT"),
    ")"
);

/// An XXL-JOB executor for edge hosts: durable, observable, small.
#[derive(Parser, Debug)]
#[command(name = "xxl-edge", version = VERSION, about, long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Cmd {
    /// Run the executor (defaults: admin http://127.0.0.1:8080/xxl-job-admin, port 9999, data in ./data).
    Serve(ServeArgs),
    /// Validate the configuration (file, environment and flags) and print it; bind nothing.
    CheckConfig(ConfigArgs),
    /// Send one trigger to a running executor as the admin would, follow its log, and exit 0
    /// only if the run succeeded.
    Trigger(TriggerArgs),
    /// Show recent runs, queue and outbox backlog, and the store's size, from the data directory.
    State(StateArgs),
}

#[derive(Args, Debug, Clone)]
pub(crate) struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Admin address (repeat for several); overrides admin.addresses and XXL_JOB_ADMIN_ADDRESSES.
    #[arg(long = "admin", value_name = "URL")]
    pub(crate) admin: Vec<String>,
    /// Access token shared with the admin; overrides admin.access_token and XXL_JOB_ACCESS_TOKEN.
    #[arg(long, value_name = "TOKEN")]
    pub(crate) token: Option<Secret>,
    /// Appname registered with the admin; overrides executor.app_name.
    #[arg(long, value_name = "NAME")]
    pub(crate) app_name: Option<String>,
    /// Address registered verbatim (e.g. http://gw-7:9999/); overrides executor.address.
    #[arg(long, value_name = "URL")]
    pub(crate) address: Option<String>,
    /// IP used to build the registered address; overrides executor.ip.
    #[arg(long, value_name = "IP")]
    pub(crate) ip: Option<String>,
    /// Port to listen on and register; overrides executor.port.
    #[arg(long, value_name = "PORT")]
    pub(crate) port: Option<i64>,
    /// Bind address; overrides executor.listen (default 0.0.0.0).
    #[arg(long, value_name = "IP")]
    pub(crate) listen: Option<String>,
    /// Data directory; overrides executor.data_dir and XXL_EDGE_DATA_DIR.
    #[arg(long, value_name = "DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// PEM certificate chain: the port speaks TLS; overrides executor.tls_cert.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert; overrides executor.tls_key.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// PEM CA: only clients with a certificate it signed connect; overrides executor.tls_client_ca.
    #[arg(long, value_name = "FILE")]
    pub(crate) tls_client_ca: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArgs,
    /// Log as JSON lines instead of text (also telemetry.log_format = "json").
    #[arg(long)]
    pub(crate) log_json: bool,
    /// Tokio worker threads (default: 2, or 1 on a single-core device).
    #[arg(long, value_name = "N", env = "XXL_EDGE_WORKER_THREADS")]
    pub(crate) worker_threads: Option<usize>,
}

#[derive(Args, Debug)]
pub(crate) struct TriggerArgs {
    /// Handler name (`executorHandler`).
    pub(crate) name: String,
    /// Job parameter.
    #[arg(long, value_name = "P")]
    pub(crate) param: Option<String>,
    /// Job id to use.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub(crate) job_id: i32,
    /// Log id to use (default: the current time in ms, so it is new).
    #[arg(long, value_name = "N")]
    pub(crate) log_id: Option<i64>,
    /// Timeout in seconds (`executorTimeout`), 0 for none.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub(crate) timeout: i32,
    /// Shard index and total, e.g. 0/1.
    #[arg(long, value_name = "I/N", default_value = "0/1")]
    pub(crate) shard: String,
    /// Executor URL.
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:9999")]
    pub(crate) executor: String,
    /// Access token (default: XXL_JOB_ACCESS_TOKEN).
    #[arg(
        long,
        value_name = "T",
        env = "XXL_JOB_ACCESS_TOKEN",
        hide_env_values = true
    )]
    pub(crate) token: Option<Secret>,
    /// Give up following the log after this many seconds.
    #[arg(long, value_name = "SECS", default_value_t = 3600)]
    pub(crate) wait: u64,
}

#[derive(Args, Debug)]
pub(crate) struct StateArgs {
    /// Data directory (default: from the config, else ./data).
    #[arg(long, value_name = "DIR", env = "XXL_EDGE_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// TOML configuration file to take executor.data_dir from.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// How many recent runs to list.
    #[arg(long, default_value_t = 20)]
    pub(crate) recent: usize,
}

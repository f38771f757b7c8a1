//! xxl-edge: an XXL-JOB executor for edge hosts, with a durable run journal, callback outbox and
//! idempotency keys in sled, real kill and timeout, bounded memory, disk and log pages, and
//! Prometheus metrics.
//!
//! The XXL-JOB admin pushes triggers over HTTP (`/run`, `/kill`, `/beat`, `/idleBeat`, `/log`);
//! the executor registers with every admin every 30 s and reports each run's result with
//! `/api/callback`. Once `/run` answers 200 the trigger is on disk, and the admin gets exactly one
//! result for it, across `kill -9`, power cuts and admin outages.
//!
//! # Layout
//! - [`job`]: domain types (`Trigger`, `Outcome`, ids, strategies); no I/O.
//! - `clock`: epoch milliseconds and the log timestamp.
//! - [`config`]: typed, validated configuration from defaults, TOML, environment and flags.
//! - [`handler`]: the `JobHandler` trait, `JobContext`, command and GLUE script handlers.
//! - [`telemetry`]: metrics on an explicit Prometheus registry; log setup.
//! - `store`: the only module that names sled: journal, waiting callbacks, keys, run logs,
//!   retention.
//! - `admin`: wire DTOs (the only place that spells XXL-JOB field names) and the admin client.
//! - `runner`: admission, per-job workers, kill, timeout, recovery after restart.
//! - `runlog`: one home for a run's log lines, their counter and cap.
//! - `report`: callback delivery, oldest first, in batches of at most 50 with backoff.
//! - `registry`: the 30 s registration loop and `registryRemove`.
//! - `api`: the warp routes and the single error-to-envelope mapping.
//! - [`executor`]: `Executor::builder()` wiring and graceful shutdown.
//! - [`tls`]: TLS on the executor port, with certificates reloaded when they change.
//!
//! # Example
//! ```no_run
//! use xxl_edge::{Executor, JobContext, Outcome};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let executor = Executor::builder()
//!     .handler("demoJobHandler", |ctx: JobContext| async move {
//!         ctx.log(format!("hello from shard {}/{}", ctx.shard_index, ctx.shard_total));
//!         Outcome::success()
//!     })
//!     .build()
//!     .await?;
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:9999").await?;
//! executor.run(listener, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

// What an embedding user needs.
pub mod client;
pub mod config;
pub mod executor;
mod fleet_keys;
pub mod handler;
pub mod job;
pub mod state;
pub mod telemetry;
pub mod tls;

// The executor's parts: crate-private. The `internals` feature makes three of them public for the
// project's own micro benchmarks only; nothing there is a stable interface.
#[cfg(feature = "internals")]
pub mod admin;
#[cfg(not(feature = "internals"))]
pub(crate) mod admin;
#[cfg(feature = "internals")]
pub mod api;
#[cfg(not(feature = "internals"))]
pub(crate) mod api;
pub(crate) mod clock;
mod private_file;
pub(crate) mod registry;
pub(crate) mod report;
mod runlog;
pub(crate) mod runner;
#[cfg(feature = "internals")]
pub mod store;
#[cfg(not(feature = "internals"))]
pub(crate) mod store;

pub use config::{Config, ConfigError, Secret};
pub use executor::{Error, Executor, ExecutorBuilder, RecoveryReport};
pub use handler::{Handler, IntoOutcome, JobContext, JobHandler};
pub use job::{JobId, LogId, Outcome, Trigger};
pub use store::StoreError;

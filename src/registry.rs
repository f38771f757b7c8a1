//! Registration: every 30 s with *every* configured admin (the reference stops at the first that
//! answers), and `registryRemove` on shutdown. The admins are the members of one cluster (one
//! database, see `Config::notes`): registering with each keeps the device listed while any
//! member is reachable.
//! A failure is logged once when an admin is lost and once when it is regained.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::admin::wire::RegistryParam;
use crate::admin::AdminClient;

/// The reference's beat interval.
pub const BEAT_INTERVAL: Duration = Duration::from_secs(30);

/// When each admin last accepted a registration, for the metric and `state`.
#[derive(Debug, Clone, Default)]
pub struct RegistrationStatus {
    last_ok: Arc<Mutex<Vec<Option<Instant>>>>,
}

impl RegistrationStatus {
    /// Seconds since the last success per admin, `None` if never.
    pub fn ages(&self) -> Vec<Option<Duration>> {
        self.last_ok
            .lock()
            .map(|v| v.iter().map(|t| t.map(|t| t.elapsed())).collect())
            .unwrap_or_default()
    }
}

/// Beats until `stop`, then deregisters from every admin.
#[derive(Debug, Clone)]
pub struct Registrar {
    admin: AdminClient,
    param: RegistryParam,
    interval: Duration,
    status: RegistrationStatus,
}

impl Registrar {
    /// A registrar for this executor's appname and address.
    pub fn new(admin: AdminClient, app_name: &str, address: &str, interval: Duration) -> Self {
        let n = admin.addresses().len();
        Self {
            admin,
            param: RegistryParam::executor(app_name, address),
            interval,
            status: RegistrationStatus {
                last_ok: Arc::new(Mutex::new(vec![None; n])),
            },
        }
    }

    /// The shared status.
    pub fn status(&self) -> RegistrationStatus {
        self.status.clone()
    }

    /// Registers at once, then every interval, until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let addrs = self.admin.shown_addresses();
        if addrs.is_empty() {
            tracing::warn!("No admin address configured; registration is skipped.");
            return;
        }
        let mut healthy = vec![None::<bool>; addrs.len()];
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let calls = (0..addrs.len()).map(|i| {
                let admin = self.admin.clone();
                let p = self.param.clone();
                async move { admin.registry(i, &p).await }
            });
            let beat = tracing::debug_span!("registry.beat", otel.kind = "internal");
            let results =
                tracing::Instrument::instrument(futures_util::future::join_all(calls), beat).await;
            for (i, r) in results.into_iter().enumerate() {
                match r {
                    Ok(()) => {
                        if let Ok(mut v) = self.status.last_ok.lock() {
                            v[i] = Some(Instant::now());
                        }
                        if healthy[i] != Some(true) {
                            tracing::info!(admin = %addrs[i], address = %self.param.registry_value, "Registered with admin.");
                        }
                        healthy[i] = Some(true);
                    }
                    Err(e) => {
                        if healthy[i] != Some(false) {
                            tracing::warn!(admin = %addrs[i], error = %e, "Registration failed; retrying every beat.");
                        }
                        healthy[i] = Some(false);
                    }
                }
            }
        }
    }

    /// Sends `registryRemove` to every admin, each bounded by the client timeout.
    pub async fn deregister(&self) {
        let addrs = self.admin.shown_addresses();
        let calls = (0..addrs.len()).map(|i| {
            let admin = self.admin.clone();
            let p = self.param.clone();
            async move { (i, admin.registry_remove(i, &p).await) }
        });
        for (i, r) in futures_util::future::join_all(calls).await {
            if let Err(e) = r {
                tracing::warn!(admin = %addrs[i], error = %e, "registryRemove failed.");
            }
        }
    }
}

//! `process_cpu_seconds_total` at the kernel's resolution. The `prometheus` crate's process
//! collector divides clock ticks by `CLK_TCK` in integers, so the counter moves in whole
//! seconds: on an idle device the CPU panel shows steps of 1.7 % at a 1 m rate, or nothing.
//! This collector keeps that collector's other series and replaces the CPU one with
//! `getrusage(RUSAGE_SELF)` user + system time (microseconds).

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;

/// The process collector with a full-resolution CPU counter.
pub struct ProcessCollector {
    inner: prometheus::process_collector::ProcessCollector,
    cpu: prometheus::Counter,
}

const CPU: &str = "process_cpu_seconds_total";

impl ProcessCollector {
    /// For this process.
    ///
    /// # Errors
    /// Never in practice (a fixed, valid metric name).
    pub fn for_self() -> prometheus::Result<Self> {
        Ok(Self {
            inner: prometheus::process_collector::ProcessCollector::for_self(),
            cpu: prometheus::Counter::new(CPU, "Total user and system CPU time spent in seconds.")?,
        })
    }
}

/// User plus system CPU time of this process, in seconds.
pub fn cpu_seconds() -> Option<f64> {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).ok()?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Some(secs(u.user_time()) + secs(u.system_time()))
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        // The inner collector's descriptions include `process_cpu_seconds_total`, with the same
        // name and type as the one this collector exports instead.
        self.inner.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut out: Vec<MetricFamily> = self
            .inner
            .collect()
            .into_iter()
            .filter(|f| f.name() != CPU)
            .collect();
        if let Some(now) = cpu_seconds() {
            // A counter never goes back; concurrent scrapes may race to raise it.
            let past = self.cpu.get();
            if now > past {
                self.cpu.inc_by(now - past);
            }
            out.extend(self.cpu.collect());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_are_exported_at_full_resolution() {
        // Burn some CPU (bounded) so the process has used more than a few hundredths of a second.
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while cpu_seconds().unwrap() < 0.2 && started.elapsed() < std::time::Duration::from_secs(10)
        {
            for i in 0..100_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
        }
        std::hint::black_box(x);
        let m = crate::telemetry::Metrics::new().unwrap();
        let before = cpu_seconds().unwrap();
        let out = m.render();
        let after = cpu_seconds().unwrap();
        let line = out
            .lines()
            .find(|l| l.starts_with("process_cpu_seconds_total "))
            .expect("the CPU counter is exported");
        let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        // Whole seconds (the crate's collector) would read 0 here.
        assert!(before <= v && v <= after, "{before} <= {v} <= {after}");
        assert!(
            out.contains("# TYPE process_cpu_seconds_total counter"),
            "{out}"
        );
        assert!(out.contains("process_open_fds "), "{out}");
    }
}

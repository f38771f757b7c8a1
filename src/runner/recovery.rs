//! After a restart: what the journal held is reported or queued again.
//!
//! In two steps, so that no run starts before the executor's sockets are bound (a port that is
//! taken must not end a process in the middle of runs it just started): [`Runner::recover`]
//! records the outcomes of interrupted runs and resolves the rest; [`Runner::start_recovered`]
//! queues them once the listeners are up.

use std::sync::Arc;

use super::worker::{Queued, Worker};
use super::{lock, Refusal, Resolved, Runner};
use crate::handler::Handler;
use crate::job::{reason, Glue, Outcome, OutcomeKind, Trigger};
use crate::store::Recovery;

/// Triggers to run again once the executor serves, in logId order.
#[derive(Default)]
pub(crate) struct Recovered {
    triggers: Vec<(Trigger, Resolved)>,
}

impl Recovered {
    /// How many will be queued.
    pub(crate) fn len(&self) -> usize {
        self.triggers.len()
    }
}

/// Counts of what recovery found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RecoveryCounts {
    pub(crate) failed: usize,
    pub(crate) rerun: usize,
}

impl Runner {
    /// Reports interrupted runs (or marks them to run again when their handler is declared safe
    /// to re-run) and resolves the accepted ones; starts nothing.
    pub(crate) fn recover(&self, r: Recovery) -> (Recovered, RecoveryCounts) {
        let mut counts = RecoveryCounts::default();
        let mut again = Vec::new();
        for rec in r.interrupted {
            let t = rec.trigger;
            let safe = matches!(&t.glue, Glue::Bean)
                && self
                    .inner
                    .handlers
                    .get(&t.handler)
                    .is_some_and(Handler::is_rerun_safe);
            let log = self.inner.logs.open(t.log_id);
            if safe {
                log.note("xxl-edge restarted during the run; the handler is declared safe to re-run, so it runs again");
                counts.rerun += 1;
                again.push(t);
            } else {
                log.note(reason::RESTARTED);
                self.record(
                    &t,
                    &Outcome::fail(reason::RESTARTED),
                    OutcomeKind::Interrupted,
                    None,
                );
                counts.failed += 1;
            }
        }
        for (rec, why) in r.lost {
            let msg = format!(
                "xxl-edge could not run this trigger after a restart: its params file is unusable ({why})"
            );
            self.inner.logs.open(rec.trigger.log_id).note(&msg);
            self.record(&rec.trigger, &Outcome::fail(msg), OutcomeKind::Failed, None);
            counts.failed += 1;
        }
        again.extend(r.queued.into_iter().map(|rec| rec.trigger));
        again.sort_by_key(|t| t.log_id);
        let mut recovered = Recovered::default();
        for t in again {
            match self.resolve(&t) {
                Ok(resolved) => recovered.triggers.push((t, resolved)),
                Err(refusal) => {
                    self.not_run_after_restart(&t, &refusal);
                    counts.failed += 1;
                }
            }
        }
        (recovered, counts)
    }

    /// Queues what [`Runner::recover`] resolved. Returns how many could not be queued (their
    /// GLUE script could not be written); those are reported as failed.
    pub(crate) fn start_recovered(&self, r: Recovered) -> usize {
        let mut failed = 0;
        let _recovery = tracing::debug_span!("job.recover", otel.kind = "internal").entered();
        for (t, resolved) in r.triggers {
            if let Err(refusal) = self.requeue(&t, resolved) {
                self.not_run_after_restart(&t, &refusal);
                failed += 1;
            }
        }
        failed
    }

    fn not_run_after_restart(&self, t: &Trigger, refusal: &Refusal) {
        self.inner.logs.open(t.log_id).note(&format!(
            "xxl-edge could not run this trigger after a restart: {}",
            refusal.msg
        ));
        self.record(
            t,
            &Outcome::fail(refusal.msg.clone()),
            OutcomeKind::Failed,
            None,
        );
    }

    fn requeue(&self, t: &Trigger, resolved: Resolved) -> Result<(), Refusal> {
        let existing = lock(&self.inner.jobs)
            .get(&t.job_id)
            .filter(|w| w.resolved.same_as(&resolved))
            .cloned();
        let w = match existing {
            Some(w) => w,
            None => {
                // The GLUE file is written outside the map lock.
                let handler = self.build_handler(t, &resolved)?;
                let w = Worker::new(t.job_id, resolved, handler, self.inner.busy_jobs.clone());
                let old = lock(&self.inner.jobs).insert(t.job_id, w.clone());
                if let Some(old) = old {
                    let q = old.stop_with(reason::CHANGE_SOURCE);
                    self.kill_queued(&old, q);
                }
                self.spawn_worker(w.clone());
                w
            }
        };
        let jobs = lock(&self.inner.jobs);
        if jobs.get(&t.job_id).is_some_and(|cur| Arc::ptr_eq(cur, &w)) {
            self.inner.metrics.queued.inc();
            w.push(Queued::new(t.clone(), None, false));
            Ok(())
        } else {
            Err(Refusal::new(
                crate::telemetry::TriggerResult::StoreError,
                "the job's worker was replaced during recovery",
            ))
        }
    }
}

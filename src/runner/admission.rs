//! Admission: what a new trigger does to its job, decided from a snapshot of the job's state, the
//! trigger and the limits, with no I/O (protocol §2.3, §4.2).
//!
//! The runner takes this decision under its map lock, does the I/O the decision needs (journal,
//! GLUE script file) outside the lock, and takes it again on the state it then finds before it
//! commits: the lock is never held across I/O.

use crate::job::{reason, BlockStrategy, Glue, LogId, Trigger};
use crate::telemetry::TriggerResult;

/// Why `/run` refused a trigger. The message is what the admin shows; nothing was accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg}")]
pub struct Refusal {
    /// For the metric label.
    pub result: TriggerResult,
    /// For the admin.
    pub msg: String,
}

impl Refusal {
    pub(crate) fn new(result: TriggerResult, msg: impl Into<String>) -> Self {
        Self {
            result,
            msg: msg.into(),
        }
    }

    /// The reference's duplicate-logId answer (3.4.1+ spelling).
    pub(crate) fn repeat(log_id: LogId) -> Self {
        Self::new(
            TriggerResult::DuplicateLogId,
            format!("repeat trigger job, logId:{log_id}"),
        )
    }
}

/// True when retention already removed this trigger's run from the journal: its logId and its
/// `logDateTime` are both at or below the pruned watermark (the largest of each among pruned
/// runs). Admins allocate logIds from a growing database sequence, so an old logId sent again
/// comes with its old trigger time and is refused like any repeat; an admin whose database was
/// rebuilt counts logIds from 1 again, but with the current time, above the watermark's, and its
/// triggers run.
pub(crate) fn pruned_repeat(watermark: Option<(LogId, i64)>, t: &Trigger) -> bool {
    watermark.is_some_and(|(id, time)| t.log_id <= id && t.log_date_time <= time)
}

/// The state of the trigger's job as admission sees it; `None` when the job has no worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JobView {
    /// The worker runs the handler (or GLUE version) this trigger resolves to.
    pub same_handler: bool,
    /// Running or with queued triggers (the reference's `isRunningOrHasQueue`).
    pub busy: bool,
    /// Triggers waiting behind the running one.
    pub queued: usize,
    /// This logId already waits in the queue.
    pub holds_log_id: bool,
}

/// The limits admission enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// `runner.max_queue_per_job`.
    pub max_queue_per_job: usize,
    /// `runner.max_running`.
    pub max_running: usize,
}

/// What to do with a trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Push it on the job's existing worker.
    Queue,
    /// Start a new worker for the job; stop the old one for `replace` if there is one.
    NewWorker {
        /// The stop reason for the worker it replaces.
        replace: Option<&'static str>,
    },
    /// Refuse it; nothing changes.
    Refuse(Refusal),
}

/// Decides a trigger's fate. `other_busy_jobs` counts busy jobs other than this one.
pub(crate) fn decide(
    job: Option<JobView>,
    t: &Trigger,
    other_busy_jobs: usize,
    limits: Limits,
) -> Decision {
    let replace = match job {
        None => None,
        // A changed handler or GLUE version replaces the worker whatever the block strategy
        // and however busy it is (§4.2).
        Some(j) if !j.same_handler => Some(match t.glue {
            Glue::Bean => reason::CHANGE_HANDLER,
            Glue::Script { .. } => reason::CHANGE_SOURCE,
        }),
        Some(j) => {
            if j.holds_log_id {
                return Decision::Refuse(Refusal::repeat(t.log_id));
            }
            match t.block {
                BlockStrategy::DiscardLater if j.busy => {
                    return Decision::Refuse(Refusal::new(
                        TriggerResult::Discarded,
                        "block strategy effect：Discard Later",
                    ));
                }
                BlockStrategy::CoverEarly if j.busy => Some(reason::COVER_EARLY),
                _ if j.queued >= limits.max_queue_per_job => {
                    return Decision::Refuse(Refusal::new(
                        TriggerResult::QueueFull,
                        format!(
                            "job queue full: {} triggers are already queued for jobId {} (limit runner.max_queue_per_job = {}); the trigger was not accepted",
                            j.queued, t.job_id, limits.max_queue_per_job
                        ),
                    ));
                }
                _ => return Decision::Queue,
            }
        }
    };
    if other_busy_jobs >= limits.max_running {
        return Decision::Refuse(Refusal::new(
            TriggerResult::RunningLimit,
            format!(
                "executor busy: {other_busy_jobs} jobs are running or queued (limit runner.max_running = {}); the trigger was not accepted",
                limits.max_running
            ),
        ));
    }
    Decision::NewWorker { replace }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{GlueKind, JobId};

    const LIMITS: Limits = Limits {
        max_queue_per_job: 2,
        max_running: 3,
    };

    fn trigger(block: BlockStrategy, script: bool) -> Trigger {
        Trigger {
            job_id: JobId(7),
            log_id: LogId(70),
            log_date_time: 1,
            handler: "h".into(),
            params: None,
            block,
            timeout: None,
            glue: if script {
                Glue::Script {
                    kind: GlueKind::Shell,
                    source: String::new(),
                    updated: 1,
                }
            } else {
                Glue::Bean
            },
            shard_index: 0,
            shard_total: 1,
        }
    }

    fn view(same_handler: bool, busy: bool, queued: usize) -> Option<JobView> {
        Some(JobView {
            same_handler,
            busy,
            queued,
            holds_log_id: false,
        })
    }

    fn refused(d: &Decision) -> Option<TriggerResult> {
        match d {
            Decision::Refuse(r) => Some(r.result),
            _ => None,
        }
    }

    use BlockStrategy::{CoverEarly, DiscardLater, Serial};

    /// The block-strategy rules of protocol §2.3 and §4.2, one row each.
    #[test]
    fn block_strategies_follow_the_reference() {
        let new = Decision::NewWorker { replace: None };
        let q = Decision::Queue;
        let cover = Decision::NewWorker {
            replace: Some(reason::COVER_EARLY),
        };
        let rows: Vec<(BlockStrategy, Option<JobView>, Decision)> = vec![
            // No worker: every strategy starts one.
            (Serial, None, new.clone()),
            (DiscardLater, None, new.clone()),
            (CoverEarly, None, new.clone()),
            // An idle worker: every strategy queues.
            (Serial, view(true, false, 0), q.clone()),
            (DiscardLater, view(true, false, 0), q.clone()),
            (CoverEarly, view(true, false, 0), q.clone()),
            // A busy worker.
            (Serial, view(true, true, 1), q.clone()),
            (CoverEarly, view(true, true, 1), cover),
        ];
        for (block, job, want) in rows {
            let got = decide(job, &trigger(block, false), 0, LIMITS);
            assert_eq!(got, want, "{block:?} {job:?}");
        }
        let d = decide(
            view(true, true, 0),
            &trigger(DiscardLater, false),
            0,
            LIMITS,
        );
        assert_eq!(refused(&d), Some(TriggerResult::Discarded));
        let Decision::Refuse(r) = d else {
            unreachable!()
        };
        assert_eq!(r.msg, "block strategy effect：Discard Later");
    }

    /// A changed handler or GLUE version replaces the worker whatever the strategy (§4.2).
    #[test]
    fn a_changed_handler_replaces_the_worker_even_when_busy() {
        for block in [Serial, DiscardLater, CoverEarly] {
            assert_eq!(
                decide(view(false, true, 2), &trigger(block, false), 0, LIMITS),
                Decision::NewWorker {
                    replace: Some(reason::CHANGE_HANDLER)
                }
            );
            assert_eq!(
                decide(view(false, true, 2), &trigger(block, true), 0, LIMITS),
                Decision::NewWorker {
                    replace: Some(reason::CHANGE_SOURCE)
                }
            );
        }
    }

    #[test]
    fn a_queued_log_id_is_a_repeat() {
        let job = Some(JobView {
            same_handler: true,
            busy: true,
            queued: 1,
            holds_log_id: true,
        });
        let d = decide(job, &trigger(Serial, false), 0, LIMITS);
        assert_eq!(d, Decision::Refuse(Refusal::repeat(LogId(70))));
        assert_eq!(
            Refusal::repeat(LogId(70)).msg,
            "repeat trigger job, logId:70"
        );
    }

    #[test]
    fn a_pruned_log_id_is_a_repeat_unless_its_trigger_time_is_newer() {
        let mut t = trigger(Serial, false);
        t.log_date_time = 1_000;
        // No watermark yet: nothing was pruned.
        assert!(!pruned_repeat(None, &t));
        // At or below both marks: an old trigger sent again.
        assert!(pruned_repeat(Some((LogId(70), 1_000)), &t));
        assert!(pruned_repeat(Some((LogId(100), 5_000)), &t));
        // A logId above the mark is new.
        assert!(!pruned_repeat(Some((LogId(69), 5_000)), &t));
        // A rebuilt admin counts from 1 again, with the current time: it runs.
        assert!(!pruned_repeat(Some((LogId(100), 999)), &t));
    }

    #[test]
    fn limits_refuse_with_the_limit_named() {
        // The queue is full behind a busy worker.
        let d = decide(view(true, true, 2), &trigger(Serial, false), 0, LIMITS);
        assert_eq!(refused(&d), Some(TriggerResult::QueueFull));
        assert!(format!("{d:?}").contains("runner.max_queue_per_job = 2"));
        // A new worker beyond max_running other busy jobs.
        let d = decide(None, &trigger(Serial, false), 3, LIMITS);
        assert_eq!(refused(&d), Some(TriggerResult::RunningLimit));
        assert!(format!("{d:?}").contains("runner.max_running = 3"));
        // So is a replacement: it adds a running job.
        let d = decide(view(true, true, 0), &trigger(CoverEarly, false), 3, LIMITS);
        assert_eq!(refused(&d), Some(TriggerResult::RunningLimit));
        // Queueing behind a busy job adds none.
        assert_eq!(
            decide(view(true, true, 0), &trigger(Serial, false), 3, LIMITS),
            Decision::Queue
        );
    }
}

//! The committer: one thread takes every waiting submission (up to `max_batch`), applies
//! them in one store unit, and only then answers them all (group commit); with replicas
//! it first brings the correlation index up to date. The look-back pull-in of incidents a
//! unit opened runs after the answers, before the next unit.

use super::*;

/// What the committer works with (its correlation index it keeps beside, on its thread).
pub(super) struct Committing {
    pub(super) store: Arc<dyn Store>,
    pub(super) correlator: Arc<Correlator>,
    pub(super) open: Arc<AtomicUsize>,
    /// With a service map: its fingerprint, which unattached events are filed under.
    pub(super) filing: Option<String>,
    /// Other processes' writes (a store several replicas share).
    pub(super) watch: Option<crate::store::Watcher>,
}

/// Brings the index up to date with what other replicas wrote since the last batch:
/// each incident they announced is read again (a lost listening connection reloads all).
pub(super) fn follow_others(
    c: &Committing,
    index: &mut IncidentIndex,
    now: chrono::DateTime<Utc>,
) -> Result<(), StoreError> {
    let Some(watch) = &c.watch else {
        return Ok(());
    };
    let mut ids = std::collections::BTreeSet::new();
    let mut resync = false;
    while let Ok(change) = watch.changes.try_recv() {
        match change {
            crate::store::StoreChange::Incident(id) => {
                ids.insert(id);
            }
            crate::store::StoreChange::Resync => resync = true,
        }
    }
    if resync {
        *index = IncidentIndex::load(&c.correlator, c.store.as_ref(), now)?;
        tracing::info!(
            open = index.open_count(),
            "correlation index reloaded after a lost listening connection"
        );
        return Ok(());
    }
    for id in ids {
        if let Some(incident) = c.store.incident(&id)? {
            index.upsert(&incident);
        }
    }
    index.commit(now);
    Ok(())
}

/// The committer's loop, on its own thread: takes every waiting submission (up to
/// `max_batch`), applies them in one unit, and answers them once it is durable.
pub(super) fn run_committer(
    c: Committing,
    mut index: IncidentIndex,
    mut rx: mpsc::Receiver<Msg>,
    max_batch: usize,
    changes: broadcast::Sender<LifecycleChange>,
) {
    // Pull-ins a crash interrupted are finished before anything new is applied.
    match unwound(|| resume_pull_ins(&c)) {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => tracing::info!(incidents = n, "finished interrupted look-back pull-ins"),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "resuming pull-ins failed; retried at the next trigger")
        }
        Err(panic) => {
            tracing::error!(%panic, "resuming pull-ins panicked; retried at the next start")
        }
    }
    let mut batch = Vec::with_capacity(max_batch);
    // Waits for the first submission, then takes whatever else is waiting. On `Stop` the
    // queue is closed: what is in it still comes, then `None`.
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Submit(pending) => batch.push(pending),
                Msg::Stop => rx.close(),
            }
            if batch.len() < max_batch {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            // A bug must not stop ingest for good: whatever of the batch was not answered
            // yet gets 503 (its answer channels drop), and the committer goes on.
            let batch = std::mem::take(&mut batch);
            if let Err(panic) = unwound(|| commit_batch(&c, &mut index, batch, &changes)) {
                tracing::error!(%panic, "the committer panicked");
            }
        }
    }
    if let Err(e) = c.store.flush() {
        tracing::error!(error = %e, "final flush failed");
    }
    tracing::info!("committer stopped");
}

fn commit_batch(
    c: &Committing,
    index: &mut IncidentIndex,
    batch: Vec<Pending>,
    changes: &broadcast::Sender<LifecycleChange>,
) {
    let (submissions, replies): (Vec<Submission>, Vec<_>) =
        batch.into_iter().map(|p| (p.submission, p.reply)).unzip();
    let started = std::time::Instant::now();
    let size = submissions.len();
    let now = Utc::now();
    let result = unwound(|| {
        follow_others(c, index, now)?;
        apply_submissions(
            c.store.as_ref(),
            &c.correlator,
            index,
            c.filing.as_deref(),
            &submissions,
            now,
        )
    })
    .unwrap_or_else(|panic| {
        // A bug: the unit stored nothing, but the index may be half-way through it (and
        // through other replicas' news). Read it again; the batch is answered 503.
        match IncidentIndex::load(&c.correlator, c.store.as_ref(), now) {
            Ok(fresh) => *index = fresh,
            Err(e) => {
                tracing::error!(error = %e, "reloading the correlation index failed");
                index.rollback();
            }
        }
        Err(StoreError::Engine(format!("the unit panicked: {panic}")))
    });
    c.open.store(index.open_count(), Ordering::Relaxed);
    metrics::histogram!("incidentpost_commit_duration_seconds").record(started.elapsed());
    metrics::histogram!("incidentpost_commit_batch_size").record(size as f64);
    match result {
        Ok(Applied {
            receipts,
            changes: lifecycle,
            opened,
        }) => {
            for (reply, receipt) in replies.into_iter().zip(receipts) {
                let _ = reply.send(Ok(receipt));
            }
            // The look-back of the incidents this unit opened (one read of each window for
            // all of them), once their webhooks are answered: the trigger is durable
            // already, and its sender need not wait for the window to be read. It runs
            // before the next unit, which sees what it moved; a failed pull-in keeps its
            // marker and is retried at the next start. (It does not touch the index.)
            if !opened.is_empty() {
                let started = std::time::Instant::now();
                match unwound(|| pull_in_each_if_need_be(c, &opened, now)) {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::error!(incidents = ?opened, error = %e, "a look-back pull-in failed; retried at the next start")
                    }
                    Err(panic) => {
                        tracing::error!(incidents = ?opened, %panic, "a look-back pull-in panicked; retried at the next start")
                    }
                }
                metrics::histogram!("incidentpost_pull_in_duration_seconds")
                    .record(started.elapsed());
            }
            for change in lifecycle {
                tracing::info!(incident = %change.incident_id, change = ?change.change, "incident lifecycle");
                // No receiver is fine: nobody is waiting for renders yet.
                let _ = changes.send(change);
            }
        }
        Err(e) => {
            tracing::error!(error = %e, batch = size, "commit failed; answering 503");
            metrics::counter!("incidentpost_commit_failures_total").increment(1);
            for reply in replies {
                let _ = reply.send(Err(IngestError::Storage));
            }
        }
    }
}

/// Runs `f`, catching a panic (a bug) as its message, so the committer outlives it.
fn unwound<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".into())
    })
}

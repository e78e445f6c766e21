//! The committer: one task takes every waiting submission (up to `max_batch`), applies
//! them in one store unit on a blocking thread, and only then answers them all (group
//! commit); with replicas it first brings the correlation index up to date. The look-back
//! pull-in of incidents a unit opened runs after the answers, before the next unit.

use super::*;

/// What the committer works with. The index is behind a mutex only so the blocking
/// thread of each batch can borrow it; the committer is its only user.
#[derive(Clone)]
pub(super) struct Committing {
    pub(super) store: Arc<dyn Store>,
    pub(super) correlator: Arc<Correlator>,
    pub(super) index: Arc<std::sync::Mutex<IncidentIndex>>,
    pub(super) open: Arc<AtomicUsize>,
    /// With a service map: its fingerprint, which unattached events are filed under.
    pub(super) filing: Option<String>,
    /// Other processes' writes (a store several replicas share).
    pub(super) watch: Option<Arc<std::sync::Mutex<crate::store::Watcher>>>,
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
    let watch = watch.lock().unwrap_or_else(|p| p.into_inner());
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
    drop(watch);
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

pub(super) async fn run_committer(
    c: Committing,
    mut rx: mpsc::Receiver<Pending>,
    max_batch: usize,
    changes: broadcast::Sender<LifecycleChange>,
    cancel: CancellationToken,
) {
    // Pull-ins a crash interrupted are finished before anything new is applied.
    let resume = c.clone();
    match tokio::task::spawn_blocking(move || resume_pull_ins(&resume)).await {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => tracing::info!(incidents = n, "finished interrupted look-back pull-ins"),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "resuming pull-ins failed; retried at the next trigger")
        }
        Err(e) => tracing::error!(error = %e, "pull-in task failed"),
    }
    let mut buf = Vec::with_capacity(max_batch);
    loop {
        let n = tokio::select! {
            biased;
            n = rx.recv_many(&mut buf, max_batch) => n,
            _ = cancel.cancelled() => {
                // Refuse new work, then commit everything already queued.
                rx.close();
                while rx.recv_many(&mut buf, max_batch).await > 0 {
                    commit_batch(&c, std::mem::take(&mut buf), &changes).await;
                }
                break;
            }
        };
        if n == 0 {
            break;
        }
        commit_batch(&c, std::mem::take(&mut buf), &changes).await;
    }
    let store = c.store.clone();
    if let Err(e) = tokio::task::spawn_blocking(move || store.flush()).await {
        tracing::error!(error = %e, "final flush task failed");
    }
    tracing::info!("committer stopped");
}

pub(super) async fn commit_batch(
    c: &Committing,
    batch: Vec<Pending>,
    changes: &broadcast::Sender<LifecycleChange>,
) {
    let (submissions, replies): (Vec<Submission>, Vec<_>) =
        batch.into_iter().map(|p| (p.submission, p.reply)).unzip();
    let started = std::time::Instant::now();
    let size = submissions.len();
    let work = c.clone();
    let now = Utc::now();
    let result = tokio::task::spawn_blocking(move || {
        let mut index = work.index.lock().unwrap_or_else(|p| p.into_inner());
        follow_others(&work, &mut index, now)?;
        let applied = apply_submissions(
            work.store.as_ref(),
            &work.correlator,
            &mut index,
            work.filing.as_deref(),
            &submissions,
            now,
        )?;
        work.open.store(index.open_count(), Ordering::Relaxed);
        Ok::<_, StoreError>(applied)
    })
    .await;
    metrics::histogram!("incidentpost_commit_duration_seconds").record(started.elapsed());
    metrics::histogram!("incidentpost_commit_batch_size").record(size as f64);
    match result {
        Ok(Ok(Applied {
            receipts,
            changes: lifecycle,
            opened,
        })) => {
            for (reply, receipt) in replies.into_iter().zip(receipts) {
                let _ = reply.send(Ok(receipt));
            }
            // The look-back of the incidents this unit opened (one read of each window for
            // all of them), once their webhooks are answered: the trigger is durable
            // already, and its sender need not wait for the window to be read. It runs
            // before the next unit, which sees what it moved; a failed pull-in keeps its
            // marker and is retried at the next start.
            if !opened.is_empty() {
                let work = c.clone();
                let pulled = tokio::task::spawn_blocking(move || {
                    let started = std::time::Instant::now();
                    if let Err(e) = pull_in_each_if_need_be(&work, &opened, now) {
                        tracing::error!(incidents = ?opened, error = %e, "a look-back pull-in failed; retried at the next start");
                    }
                    metrics::histogram!("incidentpost_pull_in_duration_seconds")
                        .record(started.elapsed());
                })
                .await;
                if let Err(e) = pulled {
                    tracing::error!(error = %e, "pull-in task failed; retried at the next start");
                }
            }
            for change in lifecycle {
                tracing::info!(incident = %change.incident_id, change = ?change.change, "incident lifecycle");
                // No receiver is fine: nobody is waiting for renders yet.
                let _ = changes.send(change);
            }
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, batch = size, "commit failed; answering 503");
            metrics::counter!("incidentpost_commit_failures_total").increment(1);
            for reply in replies {
                let _ = reply.send(Err(IngestError::Storage));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "commit task panicked; answering 503");
            for reply in replies {
                let _ = reply.send(Err(IngestError::Storage));
            }
        }
    }
}

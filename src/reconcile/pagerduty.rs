//! PagerDuty: each open incident (and once more on resolve) read from the REST API
//! (`GET /incidents/{id}` and `/incidents/{id}/notes`). A status change or a note we do
//! not have goes through the same ingest path and dedupe as a webhook, marked
//! `recovered`, under a key its late webhook shares (the note id; the status and the
//! incident's trigger-to-resolve cycle), so whichever comes second is a duplicate.
//!
//! `reconcile:pagerduty:final:<id>:<cycle>` records that a resolved incident was checked
//! once more after its resolve: until then (within the grace window) its pack is not
//! rendered as final.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::{load_state, retry_at, save_state, CallError, RoundSummary};
use crate::domain::{Incident, IncidentId, IncidentStatus, Source, ATTR_RECOVERED};
use crate::ingest::{Ingest, Receipt, Submission};
use crate::store::{Store, StoreError};

const FINAL_PREFIX: &str = "reconcile:pagerduty:final:";
/// Notes of one incident looked at per check at most.
const MAX_NOTES: usize = 2000;
/// Missed notes one check adds at most.
const MAX_NEW_NOTES: usize = 100;
/// A recovered note's text is cut to this many characters (a webhook could not carry more
/// than `server.max_body_bytes` either).
const MAX_NOTE_CHARS: usize = 16 * 1024;

/// The notes an incident already has.
#[derive(Default)]
struct KnownNotes {
    ids: std::collections::HashSet<String>,
    texts: std::collections::HashSet<String>,
}
/// Incidents read per round at most (two calls each); the least recently read first.
const MAX_INCIDENTS_PER_ROUND: usize = 50;
/// The largest API answer read.
const MAX_ANSWER_BYTES: usize = 8 << 20;
/// What recovered events say they came from.
pub const RECOVERED_FROM_API: &str = "pagerduty_api";

fn final_key(incident: &Incident) -> String {
    format!("{FINAL_PREFIX}{}:{}", incident.id, incident.reopen_count)
}

pub struct PagerDutyReconciler {
    http: reqwest::Client,
    api_url: String,
    token: String,
    store: Arc<dyn Store>,
    ingest: Ingest,
    grace: chrono::Duration,
    last_checked: Mutex<HashMap<IncidentId, Instant>>,
}

impl PagerDutyReconciler {
    pub fn new(
        token: &str,
        api_url: &str,
        store: Arc<dyn Store>,
        ingest: Ingest,
        grace: chrono::Duration,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            // An answer is PagerDuty's or nothing: a redirect elsewhere is not followed.
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .build()?;
        Ok(PagerDutyReconciler {
            http,
            api_url: api_url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            store,
            ingest,
            grace,
            last_checked: Mutex::new(HashMap::new()),
        })
    }

    /// Why a resolved incident's pack waits: PagerDuty has not been read since it resolved.
    pub fn pending(&self, incident: &Incident) -> Result<Option<&'static str>, StoreError> {
        if incident.opened_by != Source::Pagerduty {
            return Ok(None);
        }
        // A refused token, or an API failing round after round, is not waited for.
        let state = load_state(self.store.as_ref(), Source::Pagerduty)?;
        if state.refused || state.failures >= 2 {
            return Ok(None);
        }
        Ok(self
            .store
            .cursor(&final_key(incident))?
            .is_none()
            .then_some("PagerDuty's record of the incident is being read once more"))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(store.as_ref()))
            .await
            .map_err(|e| StoreError::Engine(e.to_string()))?
    }

    /// Every open incident PagerDuty opened, and those resolved within the grace window
    /// not checked since: at most [`MAX_INCIDENTS_PER_ROUND`], least recently read first.
    pub async fn round(&self) -> RoundSummary {
        super::summary_or_failure(self.round_inner().await, Source::Pagerduty)
    }

    async fn round_inner(&self) -> Result<RoundSummary, StoreError> {
        let now = Utc::now();
        let mut state = self.blocking(|s| load_state(s, Source::Pagerduty)).await?;
        let mut summary = RoundSummary::default();
        if let Some(until) = state.backoff_until.filter(|u| *u > now) {
            summary.skipped = Some(format!("rate limited by PagerDuty until {until}"));
            return Ok(summary);
        }
        let since = now - self.grace;
        let live = self
            .blocking(move |s| {
                let mut out = Vec::new();
                for i in s.live_incidents(since)? {
                    if i.opened_by != Source::Pagerduty {
                        continue;
                    }
                    let done = !i.status.is_open() && s.cursor(&final_key(&i))?.is_some();
                    if !done {
                        out.push(i);
                    }
                }
                Ok(out)
            })
            .await?;
        let mut todo = {
            let checked = self.last_checked.lock().unwrap_or_else(|p| p.into_inner());
            let mut todo: Vec<(bool, Option<Instant>, Incident)> = live
                .into_iter()
                .map(|i| (i.status.is_open(), checked.get(&i.id).copied(), i))
                .collect();
            // Resolved ones waiting for their last check first, then the least recently read.
            todo.sort_by_key(|t| (t.0, t.1));
            todo
        };
        let complete = todo.len() <= MAX_INCIDENTS_PER_ROUND;
        todo.truncate(MAX_INCIDENTS_PER_ROUND);
        let mut failed = false;
        let mut complete = complete;
        let deadline = tokio::time::Instant::now() + super::ROUND_DEADLINE;
        for (_, _, incident) in todo {
            if tokio::time::Instant::now() > deadline {
                tracing::warn!(
                    "PagerDuty reconciliation round out of time; the next round goes on"
                );
                complete = false;
                break;
            }
            match self.check(&incident).await {
                Ok(n) => {
                    summary.checked += 1;
                    summary.recovered += n;
                }
                Err(CallError::RateLimited(until)) => {
                    tracing::warn!(%until, "PagerDuty rate limit: reconciliation backs off");
                    state.backoff_until = Some(until);
                    summary.error = Some(format!("rate limited until {until}"));
                    failed = true;
                    break;
                }
                Err(CallError::Refused(message)) => {
                    tracing::warn!(error = %message, "PagerDuty refused the token");
                    state.refused = true;
                    summary.error = Some(message);
                    failed = true;
                    break;
                }
                Err(CallError::Failed(message)) | Err(CallError::Gone(message)) => {
                    tracing::warn!(incident = %incident.id, error = %message, "reading an incident from PagerDuty failed");
                    summary.error = Some(format!("incident {}: {message}", incident.id));
                    failed = true;
                }
                Err(CallError::Store(e)) => return Err(e),
            }
        }
        state.checked += summary.checked;
        state.recovered += summary.recovered;
        if failed {
            state.last_error = summary.error.clone();
        } else {
            // Every call answered: a partial round (a bound reached) is no failure either.
            state.failures = 0;
            state.refused = false;
            state.last_error = None;
        }
        state.end_round(Source::Pagerduty, now, failed, complete);
        summary.complete = complete && !failed;
        self.blocking(move |s| save_state(s, Source::Pagerduty, &state))
            .await?;
        Ok(summary)
    }

    /// The last check of an incident that just resolved here (notes added in its last
    /// minutes whose webhooks were lost), so its final pack has them.
    pub async fn check_resolved(&self, id: &IncidentId) {
        let key = id.clone();
        let incident = match self.blocking(move |s| s.incident(&key)).await {
            Ok(Some(i)) if !i.status.is_open() && i.opened_by == Source::Pagerduty => i,
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(incident = %id, error = %e, "reading the resolved incident failed");
                return;
            }
        };
        let marker = final_key(&incident);
        if matches!(self.blocking(move |s| s.cursor(&marker)).await, Ok(Some(_))) {
            return;
        }
        let backing_off = self
            .blocking(|s| load_state(s, Source::Pagerduty))
            .await
            .ok()
            .and_then(|s| s.backoff_until)
            .is_some_and(|u| u > Utc::now());
        if backing_off {
            return;
        }
        match self.check(&incident).await {
            Ok(n) => {
                if n > 0 {
                    let _ = self
                        .blocking(move |s| {
                            let mut state = load_state(s, Source::Pagerduty)?;
                            state.recovered += n;
                            save_state(s, Source::Pagerduty, &state)
                        })
                        .await;
                }
            }
            Err(e) => {
                tracing::warn!(incident = %id, error = %e, "the last PagerDuty check of a resolved incident failed; the next round retries")
            }
        }
    }

    /// Reads one incident and its notes; submits what we missed. Returns how many
    /// changes and notes were recovered.
    async fn check(&self, incident: &Incident) -> Result<u64, CallError> {
        let now = Utc::now();
        self.last_checked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(incident.id.clone(), Instant::now());
        let id = incident.id.clone();
        let Some(body) = self.get(&format!("/incidents/{id}"), now).await? else {
            // PagerDuty does not know it (another account, or deleted): nothing to wait for.
            tracing::info!(incident = %id, "PagerDuty does not know this incident; not reconciled");
            self.mark_final(incident).await?;
            return Ok(0);
        };
        let mut remote = body.get("incident").cloned().unwrap_or(Value::Null);
        if !remote.is_object() {
            return Err(CallError::Failed(
                "the incident answer has no incident object".into(),
            ));
        }
        // Whatever the answer says, it is about this incident.
        remote["id"] = json!(id.as_str());
        let notes = self
            .get(&format!("/incidents/{id}/notes"), now)
            .await?
            .and_then(|b| b.get("notes").cloned())
            .and_then(|n| n.as_array().cloned())
            .unwrap_or_default();
        // Read again after the calls: a webhook may have landed meanwhile. The notes we
        // have are known by id, or (stored before note ids were kept, through V2, or with
        // their keys pruned) by their text.
        let key = id.clone();
        let (incident, known) = self
            .blocking(move |s| {
                let incident = s.incident(&key)?;
                let mut known = KnownNotes::default();
                for e in s.incident_events(&key)? {
                    if e.kind == crate::domain::EventKind::IncidentNote {
                        if let Some(id) = e.attrs.get("note_id").and_then(Value::as_str) {
                            known.ids.insert(id.to_owned());
                        }
                        if let Some(text) = e.attrs.get("text").and_then(Value::as_str) {
                            known.texts.insert(text.trim().to_owned());
                        }
                    }
                }
                Ok((incident, known))
            })
            .await?;
        let Some(incident) = incident else {
            return Ok(0);
        };
        let incident = &incident;
        let mut submissions = Vec::new();
        for note in notes.iter().take(MAX_NOTES) {
            if submissions.len() >= MAX_NEW_NOTES {
                tracing::warn!(incident = %id, "more missed notes than one check adds ({MAX_NEW_NOTES}); the next check goes on");
                break;
            }
            if let Some(sub) = self
                .missed_note(incident, &remote, note, &known, now)
                .await?
            {
                submissions.push(sub);
            }
        }
        submissions.extend(missed_changes(incident, &remote, now));
        let mut recovered = 0;
        for sub in submissions {
            let what = sub
                .events
                .first()
                .map(|e| e.title.clone())
                .unwrap_or_default();
            match self.ingest.submit(sub).await {
                Ok(Receipt::Stored { .. }) => {
                    recovered += 1;
                    metrics::counter!("incidentpost_deliveries_recovered_total", "source" => "pagerduty").increment(1);
                    tracing::info!(incident = %id, recovered = %what, "missed PagerDuty update recovered from the REST API");
                }
                Ok(Receipt::Duplicate { .. }) => {}
                Err(e) => {
                    return Err(CallError::Failed(format!(
                        "storing a recovered update: {e}"
                    )))
                }
            }
        }
        let key = id.clone();
        let after = self.blocking(move |s| s.incident(&key)).await?;
        if let Some(after) = after.filter(|i| !i.status.is_open()) {
            self.mark_final(&after).await?;
        }
        Ok(recovered)
    }

    async fn mark_final(&self, incident: &Incident) -> Result<(), StoreError> {
        let key = final_key(incident);
        let at = Utc::now().to_rfc3339();
        self.blocking(move |s| s.put_cache(&key, &at)).await
    }

    /// A note we never stored, as its webhook would have brought it.
    async fn missed_note(
        &self,
        incident: &Incident,
        remote: &Value,
        note: &Value,
        known: &KnownNotes,
        now: DateTime<Utc>,
    ) -> Result<Option<Submission>, StoreError> {
        let Some(note_id) = note
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty() && id.len() <= 64)
        else {
            return Ok(None);
        };
        let text = note.get("content").and_then(Value::as_str).unwrap_or("");
        if known.ids.contains(note_id) || known.texts.contains(text.trim()) {
            return Ok(None);
        }
        let key = crate::sources::pagerduty::note_key(incident.id.as_str(), note_id);
        if self.blocking(move |s| s.delivery(&key)).await?.is_some() {
            return Ok(None);
        }
        let occurred_at = note
            .get("created_at")
            .and_then(Value::as_str)
            .and_then(crate::sources::time::parse_rfc3339)
            .unwrap_or(now);
        let data = json!({
            "incident": {
                "id": incident.id.as_str(),
                "type": "incident_reference",
                "summary": remote.get("summary").or(remote.get("title")),
                "html_url": remote.get("html_url"),
            },
            "id": note_id,
            "content": crate::sources::truncate(text, MAX_NOTE_CHARS),
            "type": "incident_note",
        });
        let normalized = crate::sources::pagerduty::normalize_recovered(
            "incident.annotated",
            &format!("recovered:note:{note_id}"),
            occurred_at,
            note.get("user").cloned(),
            data,
            now,
        );
        Ok(recovered_submission(normalized, note, None, &incident.id))
    }
}

/// The status changes PagerDuty shows that we never heard of: an acknowledge, a resolve.
fn missed_changes(incident: &Incident, remote: &Value, now: DateTime<Utc>) -> Vec<Submission> {
    let theirs = remote.get("status").and_then(Value::as_str).unwrap_or("");
    let time = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .and_then(crate::sources::time::parse_rfc3339)
    };
    let changed_at = time(remote.get("last_status_change_at")).unwrap_or(now);
    let last_ack = remote
        .get("acknowledgements")
        .and_then(Value::as_array)
        .and_then(|a| a.last());
    let ack_at = || {
        last_ack
            .and_then(|a| time(a.get("at")))
            .unwrap_or(changed_at)
    };
    let acker = || last_ack.and_then(|a| a.get("acknowledger")).cloned();
    let change = |status, at, agent| recovered_change(incident, remote, status, at, agent, now);
    let mut out = Vec::new();
    match theirs {
        "acknowledged" if incident.status == IncidentStatus::Triggered => {
            let agent = acker().or_else(|| remote.get("last_status_change_by").cloned());
            out.extend(change(IncidentStatus::Acknowledged, ack_at(), agent));
        }
        "resolved" if incident.status.is_open() => {
            let acked_here =
                incident.status != IncidentStatus::Triggered || incident.acknowledged_at.is_some();
            if !acked_here && last_ack.is_some() {
                out.extend(change(IncidentStatus::Acknowledged, ack_at(), acker()));
            }
            let at = time(remote.get("resolved_at")).unwrap_or(changed_at);
            let agent = remote.get("last_status_change_by").cloned();
            out.extend(change(IncidentStatus::Resolved, at, agent));
        }
        _ => {}
    }
    out
}

/// One recovered status change, as its webhook would have brought it, stored also under
/// the key its late webhook shares ([`crate::domain::transition_key`]).
fn recovered_change(
    incident: &Incident,
    remote: &Value,
    status: IncidentStatus,
    at: DateTime<Utc>,
    agent: Option<Value>,
    now: DateTime<Utc>,
) -> Option<Submission> {
    let normalized = crate::sources::pagerduty::normalize_recovered(
        &format!("incident.{}", status.as_str()),
        &format!(
            "recovered:{}:{}:{}",
            incident.id,
            status.as_str(),
            incident.reopen_count
        ),
        at,
        agent,
        remote.clone(),
        now,
    );
    let mut sub = recovered_submission(normalized, remote, Some(status), &incident.id)?;
    let actor = sub.events[0]
        .attrs
        .get(crate::domain::ATTR_ACTOR_ID)
        .and_then(Value::as_str)
        .map(str::to_owned);
    sub.delivery_keys.push(crate::domain::transition_key(
        &incident.id,
        status,
        incident.reopen_count,
        actor.as_deref(),
    ));
    Some(sub)
}

/// A submission of recovered events, the API's answer kept as their raw payload.
fn recovered_submission(
    normalized: Result<crate::sources::Normalized, crate::sources::NormalizeError>,
    raw: &Value,
    status: Option<IncidentStatus>,
    incident: &IncidentId,
) -> Option<Submission> {
    let mut normalized = match normalized {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(incident = %incident, ?status, error = %e, "a PagerDuty API answer could not be read as an update; skipped");
            return None;
        }
    };
    if normalized.events.is_empty() {
        return None;
    }
    // The times a webhook may carry, no others: a resolve dated 9999 would keep the
    // incident in its grace window for ever.
    if let Err(e) = crate::sources::check_times(&normalized, Utc::now()) {
        tracing::warn!(incident = %incident, ?status, error = %e, "a PagerDuty API answer has an impossible time; skipped");
        return None;
    }
    for event in &mut normalized.events {
        event
            .attrs
            .insert(ATTR_RECOVERED.into(), Value::from(RECOVERED_FROM_API));
    }
    Some(Submission {
        delivery_keys: normalized.delivery_keys,
        event_keys: normalized.event_keys,
        events: normalized.events,
        raw: serde_json::to_vec(raw).unwrap_or_default(),
        cursors: Vec::new(),
        incident: None,
    })
}

impl PagerDutyReconciler {
    /// GETs an API path: the JSON body, `None` on 404.
    async fn get(&self, path: &str, now: DateTime<Utc>) -> Result<Option<Value>, CallError> {
        let response = self
            .http
            .get(format!("{}{path}", self.api_url))
            .header("Authorization", format!("Token token={}", self.token))
            .header("Accept", "application/vnd.pagerduty+json;version=2")
            .send()
            .await
            .map_err(|e| CallError::Failed(format!("calling PagerDuty: {e}")))?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        if status == 429 {
            return Err(CallError::RateLimited(retry_at(
                header("retry-after").as_deref(),
                header("ratelimit-reset")
                    .and_then(|secs| secs.trim().parse::<i64>().ok())
                    .map(|secs| (now.timestamp() + secs.clamp(0, 3600)).to_string())
                    .as_deref(),
                now,
            )));
        }
        match status {
            200 => {}
            404 => return Ok(None),
            401 | 403 => {
                return Err(CallError::Refused(format!(
                    "PagerDuty answered {status}: sources.pagerduty.api_token was refused (it needs a read-only REST API key)"
                )))
            }
            _ => return Err(CallError::Failed(format!("PagerDuty answered {status}"))),
        }
        let mut response = response;
        let mut bytes = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| CallError::Failed(format!("reading PagerDuty's answer: {e}")))?
        {
            if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(CallError::Failed(format!(
                    "PagerDuty's answer is larger than {MAX_ANSWER_BYTES} bytes"
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        let body = serde_json::from_slice::<Value>(&bytes)
            .map_err(|e| CallError::Failed(format!("PagerDuty's answer did not parse: {e}")))?;
        Ok(Some(body))
    }
}

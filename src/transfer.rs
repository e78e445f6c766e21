//! `incidentpost export` / `import`: the whole store as NDJSON (one [`ExportRecord`] per
//! line), so data can be backed up as text or moved to another store. Import writes into
//! an empty data directory in atomic chunks, then renders the packs of resolved incidents
//! again (they are derived data): the same events give byte-identical packs.

use std::io::{BufRead, Write};

use anyhow::{bail, Context};
use base64::Engine;

use crate::domain::Incident;
use crate::postmortem::{render_pack_with, Templates};
use crate::store::{ExportRecord, Store, StoreError, EXPORT_FORMAT};

/// Writes every record of `store` to `out`; returns how many lines were written.
pub fn export(store: &dyn Store, out: &mut dyn Write) -> anyhow::Result<u64> {
    let mut lines = 0u64;
    store.export(&mut |record| {
        serde_json::to_writer(&mut *out, &record).map_err(|e| StoreError::Engine(e.to_string()))?;
        out.write_all(b"\n")
            .map_err(|e| StoreError::Engine(e.to_string()))?;
        lines += 1;
        Ok(())
    })?;
    out.flush()?;
    Ok(lines)
}

/// Reads an export into `store`, which must hold no incidents. Returns (lines, incidents).
pub fn import(
    store: &dyn Store,
    input: &mut dyn BufRead,
    templates: &Templates,
    people: &crate::people::Directory,
) -> anyhow::Result<(u64, u64)> {
    if store.incident_count()? > 0 {
        bail!("the data directory already holds incidents; import into an empty storage.path");
    }
    let mut chunk: Vec<ExportRecord> = Vec::new();
    let mut lines = 0u64;
    let mut incidents: Vec<Incident> = Vec::new();
    let mut line = String::new();
    let mut n = 0u64;
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            break;
        }
        n += 1;
        if line.trim().is_empty() {
            continue;
        }
        let record: ExportRecord = serde_json::from_str(&line)
            .with_context(|| format!("line {n} is not an export record"))?;
        if let ExportRecord::Header { schema, .. } = &record {
            if *schema != EXPORT_FORMAT {
                bail!("the export has format {schema}; this build reads {EXPORT_FORMAT}");
            }
            continue;
        }
        if let ExportRecord::Incident(i) = &record {
            incidents.push((**i).clone());
        }
        chunk.push(record);
        lines += 1;
        if chunk.len() >= 1000 {
            write_chunk(store, &std::mem::take(&mut chunk))?;
        }
    }
    write_chunk(store, &chunk)?;
    store.flush()?;
    for incident in incidents.iter().filter(|i| !i.status.is_open()) {
        let events = store.incident_events(&incident.id)?;
        let stored = store
            .incident(&incident.id)?
            .unwrap_or_else(|| incident.clone());
        let known = crate::postmortem::Known {
            prs: crate::postmortem::enrich::cached(store, &events),
            people: people
                .with_slack_profiles(crate::postmortem::enrich::cached_profiles(store, &events)),
        };
        let pack = render_pack_with(templates, &stored, &events, &known)?;
        store.put_pack(&incident.id, &pack.zip)?;
    }
    store.flush()?;
    Ok((lines, incidents.len() as u64))
}

fn write_chunk(store: &dyn Store, records: &[ExportRecord]) -> Result<(), StoreError> {
    if records.is_empty() {
        return Ok(());
    }
    store.write(&mut |tx| {
        for r in records {
            match r {
                ExportRecord::Header { .. } => {}
                ExportRecord::Incident(i) => tx.put_incident(i)?,
                ExportRecord::Event { seq, event } => tx.put_incident_event(*seq, event)?,
                ExportRecord::Stream(e) => tx.put_stream_event(e)?,
                ExportRecord::Raw { id, payload_base64 } => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(payload_base64)
                        .map_err(|e| StoreError::Corrupt {
                            key: id.to_string(),
                            message: e.to_string(),
                        })?;
                    tx.put_raw(*id, &bytes)?
                }
                ExportRecord::Delivery { key, record } => tx.put_delivery(key, record)?,
                ExportRecord::Link { key, incident } => tx.put_link(key, incident)?,
                ExportRecord::Cursor { key, value } => tx.put_cursor(key, value)?,
            }
        }
        Ok(())
    })
}

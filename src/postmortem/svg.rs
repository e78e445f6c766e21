//! `timeline.svg`, drawn from the events: a time axis with readable ticks, one lane per
//! source, markers coloured by severity, labelled key events, the detect → acknowledge →
//! mitigate → resolve phases shaded, and metric series as small line charts. Output is
//! deterministic (same events, same bytes) and every text is XML-escaped.

use std::fmt::Write;

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;

use super::facts::Facts;
use crate::domain::{Event, EventKind, Severity};

const WIDTH: f64 = 1200.0;
const LEFT: f64 = 150.0;
const RIGHT: f64 = 30.0;
const TOP: f64 = 60.0;
const LANE: f64 = 44.0;
const CHART: f64 = 70.0;

/// Escapes text for XML content and attributes.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

fn colour(sev: Option<Severity>, kind: EventKind) -> &'static str {
    match (sev, kind) {
        (_, EventKind::IncidentResolved | EventKind::AlertRecovered | EventKind::CiSucceeded) => {
            "#2e7d32"
        }
        (_, EventKind::ChangeRolledBack) => "#1565c0",
        (Some(Severity::Critical), _) => "#b71c1c",
        (Some(Severity::Error), _) => "#e53935",
        (Some(Severity::Warning), _) => "#f9a825",
        _ if kind.is_change() => "#6a1b9a",
        _ => "#546e7a",
    }
}

/// A tick step that gives 6–12 ticks over `span`.
fn tick_step(span: Duration) -> Duration {
    let candidates = [
        1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440, 2880, 10080,
    ];
    let mins = span.num_minutes().max(1);
    let m = candidates
        .iter()
        .copied()
        .find(|c| mins / c <= 10)
        // Longer than ten weeks: whole days, still about ten ticks.
        .unwrap_or_else(|| (mins / 10 / 1440 + 1) * 1440);
    Duration::minutes(m)
}

fn short(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

/// Renders the SVG. `events` are the incident's events (any order).
/// `roster` names the actors in the tooltips and labels as the postmortem does.
pub fn render(facts: &Facts, events: &[Event], roster: &crate::people::Roster) -> String {
    let mut events: Vec<&Event> = events
        .iter()
        .filter(|e| !e.kind.as_str().starts_with("annotation."))
        .collect();
    events.sort_by_key(|e| e.occurred_at);
    let mut lanes: Vec<&'static str> = Vec::new();
    for e in &events {
        let name = e.source.display_name();
        if !lanes.contains(&name) {
            lanes.push(name);
        }
    }
    let series: Vec<&Event> = events
        .iter()
        .copied()
        .filter(|e| e.kind == EventKind::MetricSample)
        .collect();
    let (start, end) = match (events.first(), events.last()) {
        (Some(a), Some(b)) => (a.occurred_at, b.occurred_at),
        _ => {
            let t = facts.triggered.value.unwrap_or_default();
            (t, t)
        }
    };
    // Changes from days before would squash the incident; they are drawn at the left edge.
    let focus_start = facts
        .detected
        .value
        .or(facts.triggered.value)
        .unwrap_or(start);
    let lo = if (focus_start - start) > Duration::hours(6) {
        focus_start - Duration::minutes(30)
    } else {
        start
    };
    let span = (end - lo).max(Duration::minutes(10));
    let pad = span / 20;
    let (t0, t1) = (lo - pad, end + pad);
    let plot_w = WIDTH - LEFT - RIGHT;
    let x = |t: DateTime<Utc>| -> f64 {
        let t = t.max(t0);
        LEFT + plot_w * ((t - t0).num_milliseconds() as f64)
            / ((t1 - t0).num_milliseconds().max(1) as f64)
    };
    let lanes_h = LANE * lanes.len().max(1) as f64;
    let charts_h = CHART * series.len() as f64;
    let height = TOP + lanes_h + 40.0 + charts_h + 30.0;

    let mut s = String::new();
    let _ = writeln!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height:.0}\" viewBox=\"0 0 {WIDTH} {height:.0}\" font-family=\"Helvetica, Arial, sans-serif\" font-size=\"12\">"
    );
    let _ = writeln!(
        s,
        "<title>{}</title>",
        xml_escape(&format!("Timeline of incident {}", facts.incident_id))
    );
    let _ = writeln!(s, "<rect width=\"100%\" height=\"100%\" fill=\"#ffffff\"/>");
    let _ = writeln!(
        s,
        "<text x=\"{LEFT}\" y=\"24\" font-size=\"16\" font-weight=\"bold\">{}</text>",
        xml_escape(&short(
            facts.title.value.as_deref().unwrap_or("Incident"),
            110
        ))
    );

    // Phases.
    let phases = [
        (
            "detect",
            facts.detected.value,
            facts
                .acknowledged
                .value
                .or(facts.mitigated.value)
                .or(facts.resolved.value),
            "#ffcdd2",
        ),
        (
            "acknowledge",
            facts.acknowledged.value,
            facts.mitigated.value.or(facts.resolved.value),
            "#ffe0b2",
        ),
        (
            "mitigate",
            facts.mitigated.value,
            facts.resolved.value,
            "#fff9c4",
        ),
    ];
    for (name, a, b, fill) in phases {
        if let (Some(a), Some(b)) = (a, b) {
            if b > a {
                let (xa, xb) = (x(a), x(b));
                let _ = writeln!(
                    s,
                    "<rect class=\"phase\" x=\"{xa:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{lanes_h:.1}\" fill=\"{fill}\" opacity=\"0.7\"><title>{name}</title></rect>",
                    TOP,
                    (xb - xa).max(1.0)
                );
                let _ = writeln!(
                    s,
                    "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"#555\">{name}</text>",
                    xa + 3.0,
                    TOP - 6.0
                );
            }
        }
    }

    // Lanes.
    for (i, lane) in lanes.iter().enumerate() {
        let y = TOP + LANE * i as f64;
        let _ = writeln!(
            s,
            "<line x1=\"{LEFT}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#cfd8dc\"/>",
            y + LANE / 2.0,
            WIDTH - RIGHT,
            y + LANE / 2.0
        );
        let _ = writeln!(
            s,
            "<text class=\"lane\" x=\"10\" y=\"{:.1}\" font-weight=\"bold\">{}</text>",
            y + LANE / 2.0 + 4.0,
            xml_escape(lane)
        );
    }

    // Axis and ticks.
    let axis_y = TOP + lanes_h + 8.0;
    let _ = writeln!(s, "<line x1=\"{LEFT}\" y1=\"{axis_y:.1}\" x2=\"{:.1}\" y2=\"{axis_y:.1}\" stroke=\"#37474f\"/>", WIDTH - RIGHT);
    let step = tick_step(t1 - t0);
    let step_secs = step.num_seconds().max(60);
    let first = (t0.timestamp() + step_secs - 1) / step_secs * step_secs;
    let mut t = first;
    while t <= t1.timestamp() {
        if let Some(tt) = DateTime::<Utc>::from_timestamp(t, 0) {
            let xt = x(tt);
            let label = if facts.multi_day || step >= Duration::days(1) {
                tt.format("%b %d %H:%M").to_string()
            } else {
                tt.format("%H:%M").to_string()
            };
            let _ = writeln!(s, "<line x1=\"{xt:.1}\" y1=\"{axis_y:.1}\" x2=\"{xt:.1}\" y2=\"{:.1}\" stroke=\"#37474f\"/>", axis_y + 5.0);
            let _ = writeln!(s, "<text class=\"tick\" x=\"{xt:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"10\">{label}</text>", axis_y + 18.0);
        }
        t += step_secs;
    }
    let _ = writeln!(s, "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" font-size=\"10\" fill=\"#555\">UTC</text>", WIDTH - RIGHT, axis_y + 30.0);

    // Markers; key events labelled.
    let key = |k: EventKind| {
        matches!(
            k,
            EventKind::IncidentTriggered
                | EventKind::IncidentAcknowledged
                | EventKind::IncidentResolved
                | EventKind::ChangeRolledBack
                | EventKind::ChangeMerged
                | EventKind::ChangeDeployed
        )
    };
    let mut labelled = 0usize;
    for e in &events {
        if e.kind == EventKind::MetricSample {
            continue;
        }
        let lane = lanes
            .iter()
            .position(|l| *l == e.source.display_name())
            .unwrap_or(0);
        let cy = TOP + LANE * lane as f64 + LANE / 2.0;
        let cx = x(e.occurred_at);
        let title = super::facts::shown_title(e, roster);
        let tip = format!(
            "{} [{}] {}",
            e.occurred_at.format("%Y-%m-%d %H:%M UTC"),
            e.source.display_name(),
            title
        );
        let _ = writeln!(
            s,
            "<circle class=\"event\" cx=\"{cx:.1}\" cy=\"{cy:.1}\" r=\"6\" fill=\"{}\" stroke=\"#263238\" stroke-width=\"0.5\"><title>{}</title></circle>",
            colour(e.severity, e.kind),
            xml_escape(&tip)
        );
        if key(e.kind) {
            let dy = if labelled % 2 == 0 { -10.0 } else { 18.0 };
            labelled += 1;
            // Near the right edge the label reads leftwards so it stays on the canvas.
            let (lx, anchor) = if cx > WIDTH - RIGHT - 220.0 {
                (cx - 8.0, "end")
            } else {
                (cx + 8.0, "start")
            };
            let _ = writeln!(
                s,
                "<text class=\"label\" x=\"{lx:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"{anchor}\">{}</text>",
                cy + dy,
                xml_escape(&short(&title, 40))
            );
        }
    }

    // Metric series.
    for (i, e) in series.iter().enumerate() {
        let top = TOP + lanes_h + 40.0 + CHART * i as f64;
        let samples: Vec<(DateTime<Utc>, f64)> = e
            .attrs
            .get("samples")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let t = p
                    .get(0)?
                    .as_str()
                    .and_then(crate::sources::time::parse_rfc3339)?;
                Some((t, p.get(1)?.as_f64()?))
            })
            .collect();
        let label = e
            .attrs
            .get("label")
            .and_then(Value::as_str)
            .unwrap_or("metric");
        let unit = e.attrs.get("unit").and_then(Value::as_str).unwrap_or("");
        let max = samples
            .iter()
            .map(|p| p.1)
            .fold(0.0_f64, f64::max)
            .max(1e-9);
        let _ = writeln!(
            s,
            "<text class=\"series\" x=\"10\" y=\"{:.1}\">{}</text>",
            top + 20.0,
            xml_escape(&short(
                &format!("{label} (max {}{unit})", super::fmt_num(max)),
                22
            ))
        );
        let h = CHART - 20.0;
        let points: Vec<String> = samples
            .iter()
            .map(|(t, v)| format!("{:.1},{:.1}", x(*t), top + 5.0 + h - h * v / max))
            .collect();
        let _ = writeln!(s, "<rect x=\"{LEFT}\" y=\"{:.1}\" width=\"{plot_w:.1}\" height=\"{h:.1}\" fill=\"#fafafa\" stroke=\"#eceff1\"/>", top + 5.0);
        if !points.is_empty() {
            let _ = writeln!(
                s,
                "<polyline fill=\"none\" stroke=\"#1565c0\" stroke-width=\"1.5\" points=\"{}\"/>",
                points.join(" ")
            );
        }
    }
    s.push_str("</svg>\n");
    s
}

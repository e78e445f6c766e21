//! `GET /openapi.json`: the HTTP surface as OpenAPI 3.0, built beside the route table
//! (`api::configure`) from the same names, so a route added there is added here.

use actix_web::HttpResponse;
use serde_json::{json, Value};

use crate::postmortem::FILES;

fn error_responses(codes: &[&str]) -> Value {
    let mut m = serde_json::Map::new();
    for code in codes {
        m.insert((*code).to_owned(), json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}));
    }
    Value::Object(m)
}

fn merge(a: Value, b: Value) -> Value {
    match (a, b) {
        (Value::Object(mut a), Value::Object(b)) => {
            a.extend(b);
            Value::Object(a)
        }
        (a, _) => a,
    }
}

fn id_param() -> Value {
    json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}})
}

/// The document, with the answers the edge (`api::edge`) may give on any route added.
pub fn document() -> Value {
    let mut doc = routes();
    let Some(paths) = doc["paths"].as_object_mut() else {
        return doc;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            let secured = op
                .get("security")
                .is_none_or(|s| s.as_array().is_none_or(|a| !a.is_empty()));
            let Some(responses) = op["responses"].as_object_mut() else {
                continue;
            };
            // Probes and metrics answer any Host (see api::edge).
            let mut codes = if matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics") {
                vec![]
            } else {
                vec!["421"]
            };
            if method != "get" {
                codes.extend(["403", "408", "413"]);
            }
            if secured && !path.starts_with("/webhooks/") {
                codes.extend(["401", "429"]);
            }
            if let Value::Object(extra) = error_responses(&codes) {
                for (code, body) in extra {
                    responses.entry(code).or_insert(body);
                }
            }
        }
    }
    doc
}

fn routes() -> Value {
    let ok_json = |desc: &str| json!({"200": {"description": desc, "content": {"application/json": {"schema": {"type": "object"}}}}});
    json!({
        "openapi": "3.0.3",
        "info": {"title": "IncidentPost", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Verified incident webhooks in, a durable event log, cited postmortems out."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
                "Edit": {"type": "object", "additionalProperties": false, "properties": {
                    "title": {"type": "string"}, "summary": {"type": "string"}, "root_cause": {"type": "string"},
                    "impact": {"type": "string"}, "customer_message": {"type": "string"}, "author": {"type": "string"},
                    "mitigations": {"type": "array", "items": {"type": "string"}},
                    "action_items": {"type": "array", "items": {"type": "object", "required": ["priority", "text"], "additionalProperties": false,
                        "properties": {"priority": {"type": "string", "enum": ["HIGH", "MEDIUM", "LOW"]}, "text": {"type": "string"}}}}
                }}
            }
        },
        "security": [{"bearer": []}],
        "paths": {
            "/healthz": {"get": {"summary": "The process answers", "security": [], "responses": ok_json("ok")}},
            "/readyz": {"get": {"summary": "Ready to take webhooks", "security": [], "responses": merge(ok_json("ready"), json!({"503": {"description": "not ready"}}))}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "security": [], "responses": {"200": {"description": "metrics", "content": {"text/plain": {}}}}}},
            "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": ok_json("OpenAPI 3.0")}},
            "/webhooks/{source}": {"post": {
                "summary": "A provider's webhook (signature or token checked on the raw body)", "security": [],
                "parameters": [{"name": "source", "in": "path", "required": true, "schema": {"type": "string", "enum": ["pagerduty", "datadog", "github", "slack", "cloudwatch"]}}],
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": merge(merge(ok_json("duplicate or handshake"), json!({"202": {"description": "stored"}})), error_responses(&["400", "401", "404", "413", "503"]))
            }},
            "/incidents": {"get": {
                "summary": "Incidents, newest first",
                "parameters": [
                    {"name": "status", "in": "query", "schema": {"type": "string", "enum": ["all", "open", "triggered", "acknowledged", "resolved"]}},
                    {"name": "service", "in": "query", "schema": {"type": "string"}},
                    {"name": "q", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}}
                ],
                "responses": merge(ok_json("a page of incidents"), error_responses(&["400", "401"]))
            }},
            "/incidents/import": {"post": {
                "summary": "A pasted timeline becomes an incident and its pack",
                "parameters": [
                    {"name": "date", "in": "query", "schema": {"type": "string", "format": "date"}},
                    {"name": "id", "in": "query", "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}}
                ],
                "requestBody": {"required": true, "content": {"text/plain": {"schema": {"type": "string"}}}},
                "responses": merge(merge(ok_json("already imported"), json!({"201": {"description": "imported"}})), error_responses(&["400", "401"]))
            }},
            "/incidents/{id}": {
                "get": {"summary": "One incident", "parameters": [id_param()], "responses": merge(ok_json("the incident"), error_responses(&["400", "401", "404"]))},
                "patch": {"summary": "Edit the postmortem (appends annotations, re-renders)", "parameters": [id_param()],
                          "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Edit"}}}},
                          "responses": merge(ok_json("edited"), error_responses(&["400", "401", "404"]))}
            },
            "/incidents/{id}/events": {"get": {"summary": "Its events by occurred_at, a page at a time", "parameters": [id_param(),
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}}], "responses": merge(ok_json("events"), error_responses(&["400", "401", "404"]))}},
            "/incidents/{id}/render": {"post": {"summary": "Render the pack now", "parameters": [id_param()], "responses": merge(ok_json("manifest"), error_responses(&["400", "401", "404"]))}},
            "/incidents/{id}/pack.zip": {"get": {"summary": "The postmortem pack", "parameters": [id_param()],
                "responses": merge(json!({"200": {"description": "zip", "content": {"application/zip": {}}}}), error_responses(&["400", "401", "404"]))}},
            "/incidents/{id}/{file}": {"get": {"summary": "One file of the pack",
                "parameters": [id_param(), {"name": "file", "in": "path", "required": true, "schema": {"type": "string", "enum": FILES}}],
                "responses": merge(json!({"200": {"description": "the file"}}), error_responses(&["400", "401", "404"]))}},
            "/events/unattached": {"get": {"summary": "Events no incident claimed",
                "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}}],
                "responses": merge(ok_json("events"), error_responses(&["400", "401"]))}},
            "/deliveries/report": {"get": {"summary": "Per source: deliveries received, stored, rejected by reason, duplicates, recovered and still missing; each reconciler's state",
                "responses": merge(ok_json("the receipt ledger"), error_responses(&["401", "503"]))}},
            "/deliveries/reconcile": {"post": {"summary": "Reconcile with GitHub's delivery log and PagerDuty's API now (one bounded round)",
                "responses": merge(ok_json("what the round did, per source"), error_responses(&["401", "503"]))}}
        }
    })
}

/// `GET /openapi.json`.
pub async fn serve() -> HttpResponse {
    HttpResponse::Ok().json(document())
}

//! IncidentPost: verified webhooks in, a durable event log keyed by incident, postmortems out.
//!
//! Data flows one way: `sources` (verify, normalize) → `ingest` (dedupe, correlate,
//! lifecycle, durable append via `store`) → read API (`api`). See README.md.
#![forbid(unsafe_code)]

pub mod annotations;
pub mod api;
pub mod auth;
pub mod config;
pub mod correlate;
pub mod domain;
pub mod ingest;
pub mod people;
pub mod pollers;
pub mod postmortem;
pub mod reconcile;
pub mod sources;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod transfer;
pub mod web;

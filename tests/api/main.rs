//! Integration tests: the real service on loopback, real sled in a temp dir. One test
//! binary so the crate links once.

mod cloudwatch;
mod config_cli;
mod correlation;
mod datadog;
mod durability;
mod edge;
mod github;
mod helpers;
mod history;
mod hostile;
mod lifecycle;
mod ops;
mod pack;
mod pagerduty;
mod people;
mod read_api;
mod reconcile;
mod replay;
mod replicas;
mod slack;
mod transfer;
mod web;

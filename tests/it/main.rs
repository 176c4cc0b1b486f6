//! Black-box integration tests for the `tollgate` binary.
//!
//! Every test starts its own `redis-server` (on a unix socket in a temporary directory), its own
//! upstream HTTP servers on `127.0.0.1:0` and its own gateway process, so tests can run in
//! parallel under `cargo nextest run`. Nothing is mocked: calls travel through real sockets.

// Tests may panic freely: a panic is how a test reports a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

mod adjustments;
mod admin;
mod anonymous;
mod balance;
mod body_limit;
mod check;
mod cluster;
mod concurrency;
mod cors;
mod dns_targets;
mod embedded;
mod failover;
mod harness;
mod health_check;
mod host_routes;
mod http2;
mod hygiene;
mod idempotency;
mod identify;
mod jwt;
mod limits;
mod measured;
mod milestones;
mod model;
mod operations;
mod outage;
mod periods;
mod plugins;
mod problems;
mod refunds;
mod request_id;
mod runtime_keys;
mod schema;
mod sentinel;
mod server_tls;
mod shared_burst;
mod store_tls;
mod stripe_meter;
mod telemetry;
mod telemetry_spool;
mod upgrade;
mod upstream_request;
mod upstream_tls;
mod webhooks;

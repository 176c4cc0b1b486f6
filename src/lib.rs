#![forbid(unsafe_code)]
//! tollgate: a reverse-proxy metering gateway.
//!
//! The request path reads top to bottom in [`pipeline::Gateway::admit`]; [`proxy`] is the thin
//! pingora edge around it, [`app`] wires everything together.

pub mod admin;
pub mod app;
pub mod config;
pub mod keys;
pub mod meter {
    //! Metering primitives.
    pub mod period;
}
pub mod pipeline;
pub mod plugins;
pub mod proxy;
pub mod reload;
pub(crate) mod resp;
pub mod store;
pub mod tls;
pub mod telemetry {
    //! Metrics, call outcomes, and usage events: built on the request path, spooled to disk,
    //! delivered to every sink.
    pub mod emit;
    pub mod event;
    mod json;
    pub mod metrics;
    pub mod outcome;
    pub mod queue;
    pub mod service;
    pub mod sinks;
    pub mod spool;
}

/// Makes aws-lc-rs the process's TLS crypto provider (the one jsonwebtoken already uses), so
/// every HTTP client built later (JWKS fetches, HTTP sinks) has one without compiling a second.
/// Idempotent: a provider installed earlier stays.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

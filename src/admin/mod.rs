//! The admin listener: `/metrics`, `/healthz`, `/readyz` (SPEC §7). Tenant and key routes join
//! here with the operations release.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use prometheus::{Encoder, Registry, TextEncoder};

use crate::pipeline::Gateway;

/// The admin HTTP application.
pub struct AdminApp {
    gateway: Arc<ArcSwap<Gateway>>,
    registry: Registry,
}

impl AdminApp {
    /// Serves `registry` at `/metrics` and the health of `gateway`.
    pub fn new(gateway: Arc<ArcSwap<Gateway>>, registry: Registry) -> AdminApp {
        AdminApp { gateway, registry }
    }

    async fn route(
        &self,
        method: &http::Method,
        path: &str,
    ) -> (StatusCode, &'static str, Vec<u8>) {
        if method != http::Method::GET && method != http::Method::HEAD {
            return (
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                b"method not allowed\n".to_vec(),
            );
        }
        match path {
            "/healthz" => (StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            "/readyz" => match self.gateway.load().store.ping().await {
                Ok(()) => (StatusCode::OK, "text/plain", b"ready\n".to_vec()),
                Err(e) => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("not ready: {e}\n").into_bytes(),
                ),
            },
            "/metrics" => {
                let mut buf = Vec::new();
                let encoder = TextEncoder::new();
                match encoder.encode(&self.registry.gather(), &mut buf) {
                    Ok(()) => (StatusCode::OK, "text/plain; version=0.0.4", buf),
                    Err(e) => (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        e.to_string().into_bytes(),
                    ),
                }
            }
            _ => (StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let (method, path) = (req.method.clone(), req.uri.path().to_string());
        let (status, content_type, body) = self.route(&method, &path).await;
        let len = body.len();
        Response::builder()
            .status(status)
            .header("content-type", content_type)
            .header("content-length", len)
            .body(body)
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}

//! `http`: a CloudEvents batch (`application/cloudevents-batch+json`, a JSON array) per
//! delivery, as OpenMeter's ingest API takes it; any 2xx acknowledges the whole batch.
//!
//! `https://` is rustls on aws-lc-rs (see [`crate::tls`]), trusting the webpki roots and the
//! sink's `ca_file`; redirects are not followed (a 3xx did not take the batch).

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Sink, SinkError};

/// The batch content type of CloudEvents' JSON format.
pub const CONTENT_TYPE: &str = "application/cloudevents-batch+json";

/// POSTs batches to an ingest URL.
pub struct HttpSink {
    client: reqwest::Client,
    url: String,
}

impl HttpSink {
    /// A sink posting to `url`, each request bounded by `timeout`, trusting `ca` besides the
    /// webpki roots.
    pub fn new(
        url: &str,
        timeout: Duration,
        ca: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Result<HttpSink, SinkError> {
        let tls = crate::tls::client_config(ca).map_err(SinkError::Tls)?;
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SinkError::Http(e.to_string()))?;
        Ok(HttpSink {
            client,
            url: url.to_string(),
        })
    }
}

/// The events as one JSON array, without re-encoding them.
pub fn json_array(batch: &[Bytes]) -> Vec<u8> {
    let mut body = Vec::with_capacity(batch.iter().map(|e| e.len() + 1).sum::<usize>() + 2);
    body.push(b'[');
    for (i, event) in batch.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(event);
    }
    body.push(b']');
    body
}

#[async_trait]
impl Sink for HttpSink {
    async fn deliver(&mut self, batch: &[Bytes]) -> Result<(), SinkError> {
        let response = self
            .client
            .post(&self.url)
            .header(http::header::CONTENT_TYPE, CONTENT_TYPE)
            .body(json_array(batch))
            .send()
            .await
            .map_err(|e| SinkError::Http(super::with_causes(&e)))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(SinkError::Http(format!("the receiver answered {status}")))
        }
    }
}

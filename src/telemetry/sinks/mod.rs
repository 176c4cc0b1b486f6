//! Sinks: where spooled usage events go. Each is one small module behind [`Sink`]; the
//! delivery loop in `service.rs` gives every sink its own spool position, batches, retries and
//! lag, so a sink only has to say whether a batch arrived.

pub mod file;
pub mod http;
pub mod nats;
pub mod plugin;
pub mod redis_stream;
pub mod webhook;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use rand::Rng;

use super::metrics::Metrics;
use crate::config::{SinkConfig, SinkKind};

/// Why a batch was not acknowledged. The delivery loop retries it with backoff.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// A file or socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// Redis refused or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis answered with an error, or with something that is not a Redis reply.
    #[error("redis: {0}")]
    RedisReply(String),
    /// A TLS connection could not be set up (a certificate not trusted, a bad server name).
    #[error("tls: {0}")]
    Tls(String),
    /// The HTTP receiver could not be reached or did not answer 2xx.
    #[error("http: {0}")]
    Http(String),
    /// The NATS server could not be reached or did not acknowledge.
    #[error("nats: {0}")]
    Nats(String),
    /// A plugin's sink did not accept the batch.
    #[error("plugin: {0}")]
    Plugin(String),
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// One destination of usage events. `deliver` returns `Ok` only once the whole batch is
/// durably accepted: that is what moves the sink's spool position.
#[async_trait]
pub trait Sink: Send {
    /// Sends `batch` (encoded events, in spool order). Must be safe to call again with the same
    /// batch after an error: the delivery loop does exactly that.
    async fn deliver(&mut self, batch: &[Bytes]) -> Result<(), SinkError>;

    /// The most events one delivery carries, given `telemetry.batch`: that, for a sink whose
    /// receiver wants bounded requests.
    fn max_batch(&self, configured: usize) -> usize {
        configured
    }
}

/// The sink a config entry describes. Connections are opened on first delivery, on the
/// background service's runtime (see NOTES-pingora: a connection's driver lives where it was made).
pub fn build(config: &SinkConfig, metrics: &Metrics) -> Result<Box<dyn Sink>, SinkError> {
    Ok(match &config.kind {
        SinkKind::File { path } => Box::new(file::FileSink::new(path.clone())),
        SinkKind::RedisStream {
            url,
            ca,
            stream,
            max_len,
            sentinels,
        } => Box::new(redis_stream::RedisStreamSink::new(
            url, ca, stream, *max_len, sentinels,
        )?),
        SinkKind::Http { url, timeout, ca } => Box::new(http::HttpSink::new(url, *timeout, ca)?),
        SinkKind::Nats {
            url,
            subject,
            stream,
            timeout,
        } => Box::new(nats::NatsSink::new(url, subject, stream.clone(), *timeout)?),
        SinkKind::Plugin(p) => Box::new(plugin::PluginSink::new(&p.0)?),
        SinkKind::Webhook(hook) => Box::new(
            webhook::WebhookSink::new(hook)?.count_give_ups(
                metrics
                    .events
                    .with_label_values(&[config.name.as_str(), "gave_up"]),
            ),
        ),
    })
}

/// How long to wait before attempt `attempt + 1` (0-based) of a failing batch: exponential from
/// 100 ms up to `max`, with full jitter in the upper half so that many gateways whose sink
/// came back at the same moment do not retry in lockstep.
pub fn backoff(attempt: u32, max: Duration) -> Duration {
    let base = Duration::from_millis(100)
        .saturating_mul(1u32 << attempt.min(16))
        .min(max);
    let half = base / 2;
    half + half.mul_f64(rand::rng().random::<f64>())
}

/// Awaits `fut` for at most `limit`.
pub async fn within<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, SinkError>>,
) -> Result<T, SinkError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| SinkError::Timeout(limit))?
}

/// An error with the chain of its causes: reqwest's own message ("error sending request for
/// url …") leaves out why, such as the certificate the receiver presented not being trusted.
pub(crate) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !out.contains(&cause_text) {
            out.push_str(": ");
            out.push_str(&cause_text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_bound_with_jitter() {
        let max = Duration::from_secs(2);
        for attempt in 0..20 {
            let d = backoff(attempt, max);
            let base = Duration::from_millis(100)
                .saturating_mul(1 << attempt.min(16))
                .min(max);
            assert!(d >= base / 2 && d <= base, "{attempt}: {d:?}");
        }
    }
}

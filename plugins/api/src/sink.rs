//! The telemetry hook: a plugin may provide a sink for the gateway's usage events.
//!
//! Why a hook of its own rather than a request-path hook: forwarding usage to a billing system
//! needs the network, retries and exactly the guarantees the gateway's telemetry spool already
//! gives its built-in sinks (each sink its own position on disk, at-least-once delivery,
//! backoff with jitter, lag and delivery metrics). A plugin that provides an [`EventSink`]
//! only has to say whether a batch arrived; the host wraps it as one more sink
//! (`telemetry.sinks: [{ kind: plugin, plugin: <name> }]`) and does the rest.

use std::future::Future;
use std::pin::Pin;

/// The future [`EventSink::deliver`] returns: boxed so the trait stays object-safe without an
/// async-trait macro in the API (and without naming any runtime's types).
pub type Delivery<'a> = Pin<Box<dyn Future<Output = Result<(), SinkFailure>> + Send + 'a>>;

/// A destination for usage events, provided by a plugin ([`crate::Plugin::event_sink`]).
///
/// The host calls `deliver` from one background task per sink, never concurrently, with
/// batches read from the spool in order. A batch moves the sink's spool position only when
/// `deliver` returns `Ok`; on `Err` the host waits (exponential backoff with jitter, bounded
/// by `telemetry.retry_max`) and calls `deliver` again with **the same batch**. So:
///
/// - return `Ok` only when every event of the batch is accepted (or deliberately skipped:
///   an event the destination will never take must not block the sink forever);
/// - make redelivery harmless: send stable identifiers the destination deduplicates on, and
///   remember what already went out so a retried batch does not resend it;
/// - never panic and never block the thread: this runs on the gateway's background runtime;
/// - bound every network wait (a request timeout), so a hung peer becomes an `Err` and a retry.
pub trait EventSink: Send {
    /// Delivers `events`: each one encoded CloudEvents JSON (SPEC §6), byte for byte what
    /// every other sink receives, in spool order.
    fn deliver<'a>(&'a mut self, events: &'a [&'a [u8]]) -> Delivery<'a>;
}

/// Why a batch was not accepted. The host logs it (first failure, then every tenth) and
/// retries the batch; it must never carry a secret such as an API key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SinkFailure {
    /// What went wrong, for the operator's log.
    pub message: String,
}

impl SinkFailure {
    /// A failure with `message`.
    pub fn new(message: impl Into<String>) -> SinkFailure {
        SinkFailure {
            message: message.into(),
        }
    }
}

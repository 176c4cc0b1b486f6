//! `telemetry:` — where usage events are spooled and which sinks they are delivered to
//! (SPEC §2, §6). The validated types live here too, so the section is one file.

use std::collections::BTreeSet;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tollgate_plugin::DynPlugin;

use super::decode::Decoder;
use super::node::Node;
use super::sections::opt_duration;
use crate::plugins::{registry, Configured};

/// `telemetry:`
#[derive(Debug, Clone)]
pub struct Telemetry {
    /// The spool directory: segment files and each sink's acknowledged position.
    pub spool: PathBuf,
    /// The `<instance>` of `source: tollgate/<instance>`.
    pub instance: String,
    /// Events the request path may queue in memory before the spool writer takes them.
    pub queue: NonZeroUsize,
    /// Most events one sink delivery carries; with this many queued, the spool writer writes at
    /// once instead of waiting for `flush_interval`.
    pub batch: NonZeroUsize,
    /// The spool's size bound, in bytes.
    pub max_spool_bytes: u64,
    /// What happens to events when the spool is full.
    pub on_full: OnFull,
    /// The longest wait between two delivery attempts of a failing sink.
    pub retry_max: Duration,
    /// How long the spool writer gathers events before a write that is not a full batch.
    pub flush_interval: Duration,
    /// The longest a written event waits for its fsync (and so for the sinks); at least
    /// `flush_interval`.
    pub sync_interval: Duration,
    /// The sinks, in config order; names are unique.
    pub sinks: Vec<SinkConfig>,
}

/// `telemetry.on_full`: what a full spool gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFull {
    /// New events are dropped (and counted) until the sinks catch up; nothing spooled is lost.
    DropNewest,
    /// The oldest segment is deleted (and its events counted) to make room for new events.
    DropOldest,
}

/// One entry of `telemetry.sinks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkConfig {
    /// Unique name: the `sink` label of the metrics and the name of its position file.
    pub name: String,
    /// Where the events go.
    pub kind: SinkKind,
}

/// A sink and its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkKind {
    /// JSON lines appended to a file.
    File {
        /// The file.
        path: PathBuf,
    },
    /// One Redis stream entry per event.
    RedisStream {
        /// `redis://…`, `rediss://…` (TLS) or `redis+unix://…`.
        url: String,
        /// `ca_file` (`rediss://` only): the certificates trusted for this Redis instead of the
        /// public roots.
        ca: Vec<rustls::pki_types::CertificateDer<'static>>,
        /// The stream key.
        stream: String,
        /// `MAXLEN ~` of every `XADD`.
        max_len: u64,
        /// `sentinels`: Redis Sentinels asked where the primary `url` names is (empty: `url`
        /// is the server's address).
        sentinels: Vec<String>,
    },
    /// A CloudEvents batch `POST`.
    Http {
        /// `http://…` or `https://…`.
        url: String,
        /// Upper bound on one request.
        timeout: Duration,
        /// `ca_file`: certificates trusted besides the webpki roots (an `https://` ingest
        /// behind a private CA), read and checked when the config loads.
        ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    },
    /// JetStream publish with `Nats-Msg-Id`.
    Nats {
        /// `nats://host:port`.
        url: String,
        /// The subject events are published on.
        subject: String,
        /// A stream to create on `subject` when none exists yet.
        stream: Option<String>,
        /// Upper bound on one publish acknowledgement.
        timeout: Duration,
    },
    /// A sink a plugin provides ([`tollgate_plugin::Plugin::event_sink`]).
    Plugin(PluginSink),
    /// An `onboarding.webhooks` entry: chosen milestones, each POSTed signed on its own. Never
    /// written under `telemetry.sinks`; the config adds one per webhook.
    Webhook(super::Webhook),
}

/// The plugin behind a `kind: plugin` sink: the one set up under the top-level `plugins:`.
/// Equal when it is the same built plugin (a reload builds a new one).
#[derive(Clone)]
pub struct PluginSink(pub Arc<dyn DynPlugin>);

impl std::fmt::Debug for PluginSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PluginSink({})", self.0.name())
    }
}

impl PartialEq for PluginSink {
    fn eq(&self, other: &PluginSink) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for PluginSink {}

impl SinkKind {
    /// The `kind:` word.
    pub fn as_str(&self) -> &'static str {
        match self {
            SinkKind::File { .. } => "file",
            SinkKind::RedisStream { .. } => "redis_stream",
            SinkKind::Http { .. } => "http",
            SinkKind::Nats { .. } => "nats",
            SinkKind::Plugin(_) => "plugin",
            SinkKind::Webhook(_) => "webhook",
        }
    }
}

/// `telemetry.sync_interval` when not written (or `flush_interval`, if that is longer). Why
/// 100 ms: an fsync and the deliveries after it cost the same for a few events as for many, and
/// at 20 ms they were a third of what telemetry cost a busy gateway (docs/benchmarks.md); a
/// power cut losing the last tenth of a second of usage is the trade, a process crash still
/// loses only `flush_interval`'s.
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(100);

const KEYS: &[&str] = &[
    "spool",
    "instance",
    "queue",
    "batch",
    "max_spool_mb",
    "on_full",
    "retry_max",
    "flush_interval",
    "sync_interval",
    "sinks",
];

pub(super) fn telemetry(d: &mut Decoder, n: &Node, plugins: &Configured) -> Option<Telemetry> {
    let f = d.fields(n, "`telemetry`", KEYS)?;
    let spool = match f.get("spool") {
        Some(n) => d.string(n, "`telemetry.spool`").map(PathBuf::from),
        None => Some(PathBuf::from("./data/spool")),
    };
    let instance = match f.get("instance") {
        Some(n) => d.string(n, "`telemetry.instance`").and_then(|s| {
            let ok = !s.is_empty() && !s.contains(char::is_whitespace);
            if !ok {
                d.err(
                    n.pos,
                    "`telemetry.instance` must be a non-empty name without spaces",
                );
            }
            ok.then_some(s)
        }),
        None => Some(host_name()),
    };
    let count = |d: &mut Decoder, key: &str, default: usize, max: i64| match f.get(key) {
        Some(n) => d
            .int(n, &format!("`telemetry.{key}`"), 1, max)
            .and_then(|v| NonZeroUsize::new(v as usize)),
        None => NonZeroUsize::new(default),
    };
    let queue = count(d, "queue", 65_536, 16_777_216);
    let batch = count(d, "batch", 512, 65_536);
    let max_spool_mb = count(d, "max_spool_mb", 1024, 1 << 20);
    let on_full = match f.get("on_full") {
        Some(n) => d.word(
            n,
            "`telemetry.on_full`",
            &[
                ("drop_newest", OnFull::DropNewest),
                ("drop_oldest", OnFull::DropOldest),
            ],
        ),
        None => Some(OnFull::DropNewest),
    };
    let retry_max = opt_duration(
        d,
        f.get("retry_max"),
        "`telemetry.retry_max`",
        Duration::from_secs(5),
    );
    let flush_interval = opt_duration(
        d,
        f.get("flush_interval"),
        "`telemetry.flush_interval`",
        Duration::from_millis(20),
    );
    let sync_interval = opt_duration(
        d,
        f.get("sync_interval"),
        "`telemetry.sync_interval`",
        DEFAULT_SYNC_INTERVAL.max(flush_interval.unwrap_or_default()),
    )
    .and_then(|sync| match (flush_interval, f.get("sync_interval")) {
        (Some(flush), Some(n)) if sync < flush => {
            d.err(
                n.pos,
                format!("`telemetry.sync_interval` ({sync:?}) must be at least `telemetry.flush_interval` ({flush:?}): events are fsynced after they are written"),
            );
            None
        }
        _ => Some(sync),
    });
    let sinks = d
        .require(&f, "sinks", "`telemetry`")
        .and_then(|n| sinks(d, n, plugins));
    Some(Telemetry {
        spool: spool?,
        instance: instance?,
        queue: queue?,
        batch: batch?,
        max_spool_bytes: max_spool_mb?.get() as u64 * 1024 * 1024,
        on_full: on_full?,
        retry_max: retry_max?,
        flush_interval: flush_interval?,
        sync_interval: sync_interval?,
        sinks: sinks?,
    })
}

fn sinks(d: &mut Decoder, n: &Node, plugins: &Configured) -> Option<Vec<SinkConfig>> {
    let items = d.list(n, "`telemetry.sinks`")?;
    if items.is_empty() {
        d.err(
            n.pos,
            "`telemetry.sinks` needs at least one sink (file, redis_stream, http, nats or plugin)",
        );
        return None;
    }
    let mut names = BTreeSet::new();
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for item in items {
        match sink(d, item, plugins) {
            Some(s) if !names.insert(s.name.clone()) => {
                d.err(item.pos, format!("two sinks are named `{}`; give one a distinct `name` (it names the sink's metrics and spool position)", s.name));
                ok = false;
            }
            Some(s) => out.push(s),
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn sink(d: &mut Decoder, n: &Node, plugins: &Configured) -> Option<SinkConfig> {
    const ALL: &[&str] = &[
        "kind",
        "name",
        "path",
        "url",
        "stream",
        "max_len",
        "subject",
        "timeout",
        "plugin",
        "ca_file",
        "sentinels",
    ];
    let f = d.fields(n, "a sink", ALL)?;
    let kind = d.require(&f, "kind", "a sink").and_then(|k| {
        d.word(
            k,
            "`kind` of a sink",
            &[
                ("file", "file"),
                ("redis_stream", "redis_stream"),
                ("http", "http"),
                ("nats", "nats"),
                ("plugin", "plugin"),
            ],
        )
    })?;
    let what = format!("sink of kind {kind}");
    let allowed: &[&str] = match kind {
        "file" => &["kind", "name", "path"],
        "redis_stream" => &[
            "kind",
            "name",
            "url",
            "stream",
            "max_len",
            "ca_file",
            "sentinels",
        ],
        "http" => &["kind", "name", "url", "timeout", "ca_file"],
        "plugin" => &["kind", "name", "plugin"],
        _ => &["kind", "name", "url", "subject", "stream", "timeout"],
    };
    for key in ALL.iter().filter(|k| !allowed.contains(k)) {
        if let Some(v) = f.get(key) {
            d.err(
                v.pos,
                format!(
                    "`{key}` does not apply to a {what}; it takes: {}",
                    allowed[1..].join(", ")
                ),
            );
        }
    }
    let text = |d: &mut Decoder, key: &str| -> Option<String> {
        let v = d.require(&f, key, &what)?;
        d.string(v, &format!("`{key}`"))
    };
    let url = |d: &mut Decoder, schemes: &[&str]| -> Option<String> {
        let v = d.require(&f, "url", &what)?;
        let url = d.string(v, "`url`")?;
        if !schemes.iter().any(|s| url.starts_with(s)) {
            d.err(
                v.pos,
                format!(
                    "`url` of a {what} must start with {}, found \"{url}\"",
                    schemes.join(" or ")
                ),
            );
            return None;
        }
        Some(url)
    };
    let timeout =
        |d: &mut Decoder| opt_duration(d, f.get("timeout"), "`timeout`", Duration::from_secs(10));
    let ca_file = |d: &mut Decoder, url: Option<&str>, scheme| {
        d.ca_file(f.get("ca_file"), "ca_file", url, scheme)
    };
    // A plugin sink is named after its plugin unless it says otherwise.
    let mut default_name = kind.to_string();
    let sink_kind = match kind {
        "plugin" => {
            let v = d.require(&f, "plugin", &what)?;
            let name = d.string(v, "`plugin`")?;
            let plugin = plugin_sink(d, v.pos, &name, plugins)?;
            default_name = name;
            SinkKind::Plugin(plugin)
        }
        "file" => SinkKind::File {
            path: text(d, "path")?.into(),
        },
        "redis_stream" => {
            let sentinels = f
                .get("sentinels")
                .map(|n| super::sections::sentinels(d, n, "`sentinels`"));
            let mut url = url(d, &["redis://", "rediss://", "redis+unix://", "unix://"]);
            if let (Some(_), Some(u), Some(v)) = (&sentinels, &url, f.get("url")) {
                if let Err(why) = super::sections::sentinel_primary(u, "`url`") {
                    d.err(v.pos, why);
                    url = None;
                }
            }
            let ca = ca_file(d, url.as_deref(), "rediss://");
            let stream = match f.get("stream") {
                Some(v) => d.string(v, "`stream`"),
                None => Some("tollgate:events".to_string()),
            };
            let max_len = match f.get("max_len") {
                Some(v) => d.int(v, "`max_len`", 1, i64::MAX).map(|m| m as u64),
                None => Some(1_000_000),
            };
            SinkKind::RedisStream {
                url: url?,
                ca: ca?,
                stream: stream?,
                max_len: max_len?,
                sentinels: sentinels.unwrap_or(Some(Vec::new()))?,
            }
        }
        "http" => {
            let url = url(d, &["http://", "https://"]);
            let ca = ca_file(d, url.as_deref(), "https://");
            SinkKind::Http {
                url: url?,
                timeout: timeout(d)?,
                ca: ca?,
            }
        }
        _ => {
            let url = url(d, &["nats://"]);
            let subject = text(d, "subject");
            let stream = f.get("stream").and_then(|v| d.string(v, "`stream`"));
            SinkKind::Nats {
                url: url?,
                subject: subject?,
                stream,
                timeout: timeout(d)?,
            }
        }
    };
    let name = match f.get("name") {
        Some(v) => d.string(v, "`name`").and_then(|s| {
            let ok = !s.is_empty()
                && s.len() <= 64
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok {
                d.err(v.pos, "a sink's `name` may use only letters, digits, `_` and `-` (at most 64): it names a file in the spool");
            }
            ok.then_some(s)
        })?,
        None => default_name,
    };
    Some(SinkConfig {
        name,
        kind: sink_kind,
    })
}

/// The plugin a `kind: plugin` sink names: compiled in, set up under the top-level `plugins:`
/// (where its settings live) and providing a sink. Asking it for one here, once, is how
/// `tollgate check` knows; the sink is built again when telemetry starts.
fn plugin_sink(
    d: &mut Decoder,
    pos: super::node::Pos,
    name: &str,
    plugins: &Configured,
) -> Option<PluginSink> {
    let Some(plugin) = plugins.built.get(name) else {
        if plugins.declared.contains(name) {
            // Set up but broken: its own errors say why.
        } else if registry::find(name).is_some() {
            d.err(pos, format!("a sink of kind plugin uses plugin `{name}`, which is not set up under the top-level `plugins`; add `{name}:` with its settings there"));
        } else {
            d.err(
                pos,
                format!(
                    "a sink of kind plugin uses unknown plugin `{name}`; this tollgate is built with: {}",
                    registry::names()
                ),
            );
        }
        return None;
    };
    match plugin.event_sink() {
        Ok(Some(_)) => Some(PluginSink(plugin.clone())),
        Ok(None) => {
            d.err(
                pos,
                format!("plugin `{name}` provides no telemetry sink; it cannot be a sink of kind plugin"),
            );
            None
        }
        Err(e) => {
            d.err(
                pos,
                format!(
                    "plugin `{name}` could not make its telemetry sink: {}",
                    e.message
                ),
            );
            None
        }
    }
}

/// The host name, for the default `instance`: what `hostname` prints, without a process.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

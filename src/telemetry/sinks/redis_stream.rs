//! `redis_stream`: one stream entry per event (field `event`), `XADD … MAXLEN ~`, pipelined in
//! slices of a batch.
//!
//! The sink speaks RESP itself over one connection (TCP, TLS for `rediss://`, or a unix socket)
//! instead of going through redis-rs: a
//! batch is one buffer of `XADD` commands written with the event bytes copied once, and the
//! replies are only checked (an entry id, or an error), never turned into values. Through
//! redis-rs each event cost about 5.5k instructions more (`benches/callgrind.sh`, telemetry
//! scenario): a `Cmd` per event, the pipeline's second encoding, the multiplexed connection's
//! channel and driver task, and a parsed `Value` per reply, all on the core that serves
//! requests. redis-rs still reads the URL, so every form it accepts (`redis://user:pass@host:port/db`,
//! `redis+unix:///path?db=N`) means the same here.

use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use redis::{ConnectionAddr, IntoConnectionInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{within, Sink, SinkError};
use crate::resp::bulk;
use crate::store::redis::sentinel::Sentinel;

/// Upper bound on connecting and on one pipelined batch.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Most `XADD`s written at once: a batch goes out in slices of this many, each slice's replies
/// read before the next is written.
///
/// Why not the whole batch (512 events by default) in one write: Redis then spends a
/// millisecond or more on it without pause, and whatever shares that Redis's core waits. In
/// `benches/telemetry.sh` that is the load generator and the origin, and the gateway's core
/// went idle 2–4% of the time, the idle spells falling where Redis ran on the other core
/// (`perf sched timehist`: 16.5 of 22.6 ms idle in a second). Slices of 64 left the gateway's
/// core 98–99% busy, as with the file sink. By hand, two sets of 3 interleaved rounds of 5 s
/// (req/s, medians): whole batches 26,640, slices of 64 27,733, of 16 27,747, the file sink
/// 27,854; then slices of 128 26,961, of 64 27,229, of 32 26,694. Slices cost a round trip
/// each, which the delivery thread easily affords (`cargo bench --bench telemetry`, README).
const PIPELINE: usize = 64;

/// Bounds asking one Sentinel where the primary is.
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(2);

/// Where and how to connect, read from the sink's URL once. (No `Debug`: it holds the password.)
struct Target {
    addr: Addr,
    /// Behind Redis Sentinel: asked where the primary is before each connection (`addr` is
    /// then only the primary's name).
    sentinel: Option<Sentinel>,
    /// For `rediss://`: the TLS client (trusting the sink's `ca_file`, else the public roots).
    tls: Option<tokio_rustls::TlsConnector>,
    username: Option<String>,
    password: Option<String>,
    db: i64,
}

enum Addr {
    Tcp(String, u16),
    #[cfg(unix)]
    Unix(std::path::PathBuf),
}

/// A connected socket, TCP or unix.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Appends events to a Redis stream.
pub struct RedisStreamSink {
    target: Target,
    /// The constant head of every `XADD` (up to the event's length prefix), encoded once.
    head: Vec<u8>,
    conn: Option<Box<dyn Io>>,
    /// The batch's commands; kept between batches so its capacity is reused.
    out: Vec<u8>,
    /// Replies read but not yet checked.
    input: BytesMut,
}

impl RedisStreamSink {
    /// A sink appending to `stream` at `url`, trimming it to about `max_len` entries. A
    /// `rediss://` URL connects with TLS, trusting `ca` when it is not empty, else the public
    /// roots. With `sentinels`, `url` names the primary they monitor (`redis://NAME/DB`), and
    /// each connection goes where they say it is now, so the stream follows a failover as the
    /// store does.
    pub fn new(
        url: &str,
        ca: &[rustls::pki_types::CertificateDer<'static>],
        stream: &str,
        max_len: u64,
        sentinels: &[String],
    ) -> Result<RedisStreamSink, SinkError> {
        let sentinel = match sentinels {
            [] => None,
            _ => Some(
                Sentinel::new(url, sentinels, ca, SENTINEL_TIMEOUT)
                    .map_err(|e| SinkError::RedisReply(e.to_string()))?,
            ),
        };
        let info = url.into_connection_info()?;
        let mut tls = None;
        let addr = match info.addr() {
            ConnectionAddr::Tcp(host, port) => Addr::Tcp(host.clone(), *port),
            ConnectionAddr::TcpTls {
                host,
                port,
                insecure: false,
                ..
            } => {
                let config = crate::tls::redis_client_config(ca).map_err(SinkError::Tls)?;
                tls = Some(tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)));
                Addr::Tcp(host.clone(), *port)
            }
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => Addr::Unix(path.clone()),
            other => {
                return Err(SinkError::Tls(format!(
                    "the redis_stream sink cannot connect to {other}: a server certificate is always checked"
                )))
            }
        };
        let settings = info.redis_settings();
        let target = Target {
            addr,
            sentinel,
            tls,
            username: settings.username().map(str::to_string),
            password: settings.password().map(str::to_string),
            db: settings.db(),
        };
        let mut head = Vec::with_capacity(96);
        head.extend_from_slice(b"*8\r\n");
        let max_len = max_len.to_string();
        for arg in [
            "XADD",
            stream,
            "MAXLEN",
            "~",
            max_len.as_str(),
            "*",
            "event",
        ] {
            bulk(&mut head, arg.as_bytes());
        }
        Ok(RedisStreamSink {
            target,
            head,
            conn: None,
            out: Vec::new(),
            input: BytesMut::with_capacity(16 * 1024),
        })
    }

    /// The `XADD`s of `batch` (a slice of one), one after the other, in `self.out`.
    fn encode(&mut self, batch: &[Bytes]) {
        self.out.clear();
        let per_event = self.head.len() + 1 + 20 + 4;
        self.out
            .reserve(batch.iter().map(|e| e.len() + per_event).sum());
        for event in batch {
            self.out.extend_from_slice(&self.head);
            bulk(&mut self.out, event);
        }
    }

    /// Sends the batch, [`PIPELINE`] commands at a time, and checks one reply per event. The
    /// connection is taken for the duration: one that fails, or a batch that times out
    /// (`deliver` drops this future), is dropped with it and the next batch connects afresh.
    /// An error reply keeps it: every reply was read, so it is still in step; except
    /// `READONLY`, from a server a failover demoted to a replica: the next batch connects
    /// afresh, to where the URL's name points now.
    async fn send(&mut self, batch: &[Bytes]) -> Result<(), SinkError> {
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => {
                self.input.clear();
                connect(&self.target).await?
            }
        };
        let mut first_error = None;
        for slice in batch.chunks(PIPELINE) {
            self.encode(slice);
            conn.write_all(&self.out).await?;
            for _ in 0..slice.len() {
                if let Err(e) = read_reply(&mut conn, &mut self.input).await? {
                    first_error.get_or_insert(e);
                }
            }
        }
        if !first_error
            .as_ref()
            .is_some_and(|e| e.starts_with("READONLY"))
        {
            self.conn = Some(conn);
        }
        match first_error {
            None => Ok(()),
            Some(e) => Err(SinkError::RedisReply(e)),
        }
    }
}

#[async_trait]
impl Sink for RedisStreamSink {
    async fn deliver(&mut self, batch: &[Bytes]) -> Result<(), SinkError> {
        if batch.is_empty() {
            return Ok(());
        }
        within(TIMEOUT, self.send(batch)).await
    }
}

/// Connects and prepares the connection: `AUTH` when the URL has a password, `SELECT` when
/// it names another database than 0.
async fn connect(target: &Target) -> Result<Box<dyn Io>, SinkError> {
    let found;
    let addr = match &target.sentinel {
        Some(s) => {
            let (host, port) = s
                .locate()
                .await
                .map_err(|e| SinkError::RedisReply(e.to_string()))?;
            found = Addr::Tcp(host, port);
            &found
        }
        None => &target.addr,
    };
    let mut conn: Box<dyn Io> = match addr {
        Addr::Tcp(host, port) => {
            let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
            stream.set_nodelay(true)?;
            match &target.tls {
                None => Box::new(stream),
                Some(tls) => {
                    let name = rustls::pki_types::ServerName::try_from(host.clone())
                        .map_err(|e| SinkError::Tls(format!("{host}: {e}")))?;
                    Box::new(
                        tls.connect(name, stream)
                            .await
                            .map_err(|e| SinkError::Tls(format!("TLS with {host}:{port}: {e}")))?,
                    )
                }
            }
        }
        #[cfg(unix)]
        Addr::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await?),
    };
    let mut hello = Vec::new();
    let mut replies = 0;
    if let Some(password) = &target.password {
        match &target.username {
            Some(user) => {
                hello.extend_from_slice(b"*3\r\n");
                bulk(&mut hello, b"AUTH");
                bulk(&mut hello, user.as_bytes());
            }
            None => {
                hello.extend_from_slice(b"*2\r\n");
                bulk(&mut hello, b"AUTH");
            }
        }
        bulk(&mut hello, password.as_bytes());
        replies += 1;
    }
    if target.db != 0 {
        hello.extend_from_slice(b"*2\r\n");
        bulk(&mut hello, b"SELECT");
        bulk(&mut hello, target.db.to_string().as_bytes());
        replies += 1;
    }
    if replies > 0 {
        conn.write_all(&hello).await?;
        let mut input = BytesMut::with_capacity(256);
        for _ in 0..replies {
            read_reply(&mut conn, &mut input)
                .await?
                .map_err(SinkError::RedisReply)?;
        }
    }
    Ok(conn)
}

/// One reply as the sink sees it: anything but an error, or the error's message.
type Reply = Result<(), String>;

/// Reads one complete reply: `Ok(Ok(()))` for any reply but an error, `Ok(Err(message))` for
/// an error reply, `Err` when the connection fails or speaks something that is not RESP.
async fn read_reply(
    conn: &mut (impl AsyncRead + Unpin),
    input: &mut BytesMut,
) -> Result<Reply, SinkError> {
    loop {
        match skip_reply(input)? {
            Some((len, outcome)) => {
                input.advance(len);
                return Ok(outcome);
            }
            None => {
                if input.capacity() - input.len() < 4096 {
                    input.reserve(16 * 1024);
                }
                if conn.read_buf(input).await? == 0 {
                    return Err(SinkError::Io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the stream's Redis closed the connection",
                    )));
                }
            }
        }
    }
}

/// Most nesting [`skip_reply`] follows (an `XADD` reply has none).
const MAX_DEPTH: usize = 8;

/// The length of the complete reply at the start of `buf` and whether it is an error, or
/// `None` when more bytes are needed. RESP2 and RESP3 types are understood; what is not RESP
/// is an error.
fn skip_reply(buf: &[u8]) -> Result<Option<(usize, Reply)>, SinkError> {
    let mut pos = 0;
    // Elements still to skip at each open aggregate level; the reply ends when none is left.
    let mut pending: [i64; MAX_DEPTH] = [0; MAX_DEPTH];
    let mut depth = 0;
    let mut outcome = Ok(());
    loop {
        let Some(end) = line_end(buf, pos) else {
            return Ok(None);
        };
        if end == pos {
            return Err(not_resp(b"an empty line"));
        }
        let start = pos;
        let kind = buf[pos];
        let line = &buf[pos + 1..end];
        pos = end + 2;
        match kind {
            b'+' | b':' | b'_' | b',' | b'#' | b'(' => {}
            b'-' => {
                if depth == 0 {
                    outcome = Err(String::from_utf8_lossy(line).into_owned());
                }
            }
            b'$' | b'=' | b'!' => {
                let n = number(line)?;
                if n >= 0 {
                    let n = usize::try_from(n).map_err(|_| not_resp(line))?;
                    if buf.len() < pos + n + 2 {
                        return Ok(None);
                    }
                    if kind == b'!' && depth == 0 {
                        outcome = Err(String::from_utf8_lossy(&buf[pos..pos + n]).into_owned());
                    }
                    pos += n + 2;
                }
            }
            b'*' | b'%' | b'~' | b'>' | b'|' => {
                let n = number(line)?;
                let items = if matches!(kind, b'%' | b'|') {
                    n * 2
                } else {
                    n
                };
                if items > 0 {
                    if depth == MAX_DEPTH {
                        return Err(not_resp(b"a reply nested too deeply"));
                    }
                    pending[depth] = items;
                    depth += 1;
                    continue;
                }
            }
            _ => return Err(not_resp(&buf[start..end])),
        }
        // One element done: close every aggregate it completes.
        loop {
            if depth == 0 {
                return Ok(Some((pos, outcome)));
            }
            pending[depth - 1] -= 1;
            if pending[depth - 1] > 0 {
                break;
            }
            depth -= 1;
        }
    }
}

/// The index of the `\r` of the line starting at `from`, if the whole line is there.
fn line_end(buf: &[u8], from: usize) -> Option<usize> {
    let rest = buf.get(from..)?;
    let i = rest.windows(2).position(|w| w == b"\r\n")?;
    Some(from + i)
}

fn number(line: &[u8]) -> Result<i64, SinkError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| not_resp(line))
}

fn not_resp(what: &[u8]) -> SinkError {
    SinkError::RedisReply(format!(
        "not a Redis reply: {:?}",
        String::from_utf8_lossy(&what[..what.len().min(64)])
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skip(buf: &[u8]) -> Option<(usize, Reply)> {
        skip_reply(buf).unwrap()
    }

    #[test]
    fn replies_are_measured_whole() {
        assert_eq!(skip(b"$15\r\n1700000000000-0\r\n"), Some((22, Ok(()))));
        assert_eq!(skip(b"+OK\r\n$3\r\nabc\r\n"), Some((5, Ok(()))));
        assert_eq!(skip(b":42\r\n"), Some((5, Ok(()))));
        assert_eq!(skip(b"$-1\r\n"), Some((5, Ok(()))));
        assert_eq!(skip(b"*-1\r\n"), Some((5, Ok(()))));
        assert_eq!(skip(b"*0\r\n"), Some((4, Ok(()))));
        assert_eq!(
            skip(b"*2\r\n*2\r\n:1\r\n$1\r\na\r\n+x\r\n:9\r\n"),
            Some((23, Ok(())))
        );
        assert_eq!(skip(b"%1\r\n+k\r\n:1\r\n"), Some((12, Ok(()))));
        assert_eq!(
            skip(b"-WRONGTYPE Operation against a key\r\n"),
            Some((36, Err("WRONGTYPE Operation against a key".into())))
        );
        assert_eq!(skip(b"!3\r\nERR\r\n"), Some((9, Err("ERR".into()))));
    }

    #[test]
    fn a_partial_reply_asks_for_more() {
        let whole = b"*2\r\n$15\r\n1700000000000-0\r\n:7\r\n";
        for cut in 0..whole.len() {
            assert_eq!(skip(&whole[..cut]), None, "cut at {cut}");
        }
        assert_eq!(skip(whole), Some((whole.len(), Ok(()))));
    }

    #[test]
    fn what_is_not_resp_is_an_error() {
        assert!(skip_reply(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(skip_reply(b"$x\r\n").is_err());
    }

    #[test]
    fn xadds_are_encoded_as_resp() {
        let mut sink =
            RedisStreamSink::new("redis://127.0.0.1:1/0", &[], "tg:events", 1000, &[]).unwrap();
        sink.encode(&[Bytes::from_static(b"{\"a\":1}")]);
        assert_eq!(
            sink.out,
            b"*8\r\n$4\r\nXADD\r\n$9\r\ntg:events\r\n$6\r\nMAXLEN\r\n$1\r\n~\r\n$4\r\n1000\r\n\
$1\r\n*\r\n$5\r\nevent\r\n$7\r\n{\"a\":1}\r\n"
                .to_vec()
        );
    }
}

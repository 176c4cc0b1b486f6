//! `nats`: one JetStream message per event on the subject, header `Nats-Msg-Id` = event id, so
//! the stream drops a redelivered event within its duplicate window.
//!
//! A small client of the NATS text protocol instead of the `async-nats` crate: the sink needs
//! only CONNECT, SUB on a reply inbox, HPUB and reading `MSG`/`HMSG` replies, and that is a
//! couple of hundred lines against a dependency tree several times the size of the gateway's.
//! Publishes of a batch are pipelined; the batch is acknowledged only when every message has
//! its JetStream ack (`{"stream":…,"seq":…}`, possibly `"duplicate":true`).

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use super::{within, Sink, SinkError};
use crate::telemetry::event::id_of;

/// Publishes events to a JetStream subject.
pub struct NatsSink {
    addr: String,
    subject: String,
    stream: Option<String>,
    timeout: Duration,
    conn: Option<Conn>,
    stream_ready: bool,
}

/// One message the server sent to our inbox.
struct Reply {
    subject: String,
    /// The status of a header block, e.g. `503` (no responders).
    status: Option<String>,
    payload: Vec<u8>,
}

struct Conn {
    rd: BufReader<OwnedReadHalf>,
    wr: OwnedWriteHalf,
    inbox: String,
    next: u64,
}

fn err(what: impl Into<String>) -> SinkError {
    SinkError::Nats(what.into())
}

impl NatsSink {
    /// A sink publishing to `subject` on the server at `url` (`nats://host[:port]`); with
    /// `stream`, a file-backed stream of that name is created on the subject when missing.
    pub fn new(
        url: &str,
        subject: &str,
        stream: Option<String>,
        timeout: Duration,
    ) -> Result<NatsSink, SinkError> {
        let hostport = url.trim_start_matches("nats://").trim_end_matches('/');
        let addr = if hostport.contains(':') {
            hostport.to_string()
        } else {
            format!("{hostport}:4222")
        };
        Ok(NatsSink {
            addr,
            subject: subject.to_string(),
            stream,
            timeout,
            conn: None,
            stream_ready: false,
        })
    }

    async fn publish(&mut self, batch: &[Bytes]) -> Result<(), SinkError> {
        if self.conn.is_none() {
            self.conn = Some(within(self.timeout, Conn::open(&self.addr)).await?);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(err("not connected"));
        };
        if let (Some(stream), false) = (&self.stream, self.stream_ready) {
            let config =
                serde_json::json!({"name": stream, "subjects": [self.subject], "storage": "file"});
            let api = format!("$JS.API.STREAM.CREATE.{stream}");
            let answer = within(
                self.timeout,
                conn.request(&api, config.to_string().as_bytes()),
            )
            .await?;
            let v: serde_json::Value = serde_json::from_slice(&answer).unwrap_or_default();
            // 10058: a stream of that name exists already, which is what we want.
            if v.get("error").is_some() && v["error"]["err_code"] != 10058 {
                return Err(err(format!("creating stream {stream}: {}", v["error"])));
            }
            self.stream_ready = true;
        }
        let mut out = Vec::with_capacity(batch.iter().map(|e| e.len() + 128).sum());
        let mut waiting = HashSet::with_capacity(batch.len());
        for event in batch {
            let id = id_of(event).unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
            let reply = conn.reply_subject();
            let headers = format!("NATS/1.0\r\nNats-Msg-Id: {id}\r\n\r\n");
            out.extend_from_slice(
                format!(
                    "HPUB {} {reply} {} {}\r\n",
                    self.subject,
                    headers.len(),
                    headers.len() + event.len()
                )
                .as_bytes(),
            );
            out.extend_from_slice(headers.as_bytes());
            out.extend_from_slice(event);
            out.extend_from_slice(b"\r\n");
            waiting.insert(reply);
        }
        conn.wr.write_all(&out).await?;
        while !waiting.is_empty() {
            let reply = within(self.timeout, conn.read_reply()).await?;
            if !waiting.remove(&reply.subject) {
                continue;
            }
            check_ack(&reply, &self.subject)?;
        }
        Ok(())
    }
}

/// A JetStream publish ack, or why there is none.
fn check_ack(reply: &Reply, subject: &str) -> Result<(), SinkError> {
    if reply.status.as_deref() == Some("503") {
        return Err(err(format!(
            "no JetStream stream listens on `{subject}` (create one, or set the sink's `stream`)"
        )));
    }
    let v: serde_json::Value = serde_json::from_slice(&reply.payload)
        .map_err(|e| err(format!("unreadable publish ack: {e}")))?;
    if let Some(e) = v.get("error") {
        return Err(err(format!("publish refused: {e}")));
    }
    if v.get("seq").is_none() {
        return Err(err(format!("unexpected publish answer: {v}")));
    }
    Ok(())
}

#[async_trait]
impl Sink for NatsSink {
    async fn deliver(&mut self, batch: &[Bytes]) -> Result<(), SinkError> {
        let result = self.publish(batch).await;
        if result.is_err() {
            // Replies of this attempt may still arrive on the old connection: start afresh.
            self.conn = None;
        }
        result
    }
}

// === impl Conn ===

impl Conn {
    async fn open(addr: &str) -> Result<Conn, SinkError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (rd, wr) = stream.into_split();
        let mut conn = Conn {
            rd: BufReader::new(rd),
            wr,
            inbox: format!("_INBOX.{}", uuid::Uuid::now_v7().simple()),
            next: 0,
        };
        let info = conn.line().await?;
        if !info.starts_with("INFO ") {
            return Err(err(format!("expected INFO from the server, got {info:?}")));
        }
        let connect = r#"{"verbose":false,"pedantic":false,"headers":true,"no_responders":true,"lang":"rust","name":"tollgate","protocol":1}"#;
        let sub = format!("CONNECT {connect}\r\nSUB {}.* 1\r\nPING\r\n", conn.inbox);
        conn.wr.write_all(sub.as_bytes()).await?;
        loop {
            let line = conn.line().await?;
            match line.as_str() {
                "PONG" => return Ok(conn),
                l if l.starts_with("-ERR") => return Err(err(l.to_string())),
                _ => continue,
            }
        }
    }

    fn reply_subject(&mut self) -> String {
        self.next += 1;
        format!("{}.{}", self.inbox, self.next)
    }

    /// A request/reply exchange (for the JetStream API).
    async fn request(&mut self, subject: &str, payload: &[u8]) -> Result<Vec<u8>, SinkError> {
        let reply = self.reply_subject();
        let mut out = format!("PUB {subject} {reply} {}\r\n", payload.len()).into_bytes();
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
        self.wr.write_all(&out).await?;
        loop {
            let r = self.read_reply().await?;
            if r.subject == reply {
                if r.status.as_deref() == Some("503") {
                    return Err(err(
                        "JetStream is not enabled on the server (no responders)",
                    ));
                }
                return Ok(r.payload);
            }
        }
    }

    async fn line(&mut self) -> Result<String, SinkError> {
        let mut line = String::new();
        if self.rd.read_line(&mut line).await? == 0 {
            return Err(err("the server closed the connection"));
        }
        Ok(line.trim_end().to_string())
    }

    /// The next `MSG`/`HMSG`, answering `PING`s on the way.
    async fn read_reply(&mut self) -> Result<Reply, SinkError> {
        loop {
            let line = self.line().await?;
            let parts: Vec<&str> = line.split_ascii_whitespace().collect();
            let num = |s: &str| {
                s.parse::<usize>()
                    .map_err(|_| err(format!("bad line {line:?}")))
            };
            match parts.first().copied() {
                Some("PING") => self.wr.write_all(b"PONG\r\n").await?,
                Some("MSG") if parts.len() >= 4 => {
                    let len = num(parts[parts.len() - 1])?;
                    let payload = self.body(len).await?;
                    return Ok(Reply {
                        subject: parts[1].to_string(),
                        status: None,
                        payload,
                    });
                }
                Some("HMSG") if parts.len() >= 5 => {
                    let (hlen, total) =
                        (num(parts[parts.len() - 2])?, num(parts[parts.len() - 1])?);
                    let mut payload = self.body(total).await?;
                    let head = String::from_utf8_lossy(&payload[..hlen.min(total)]).to_string();
                    let status = head
                        .lines()
                        .next()
                        .and_then(|l| l.split_ascii_whitespace().nth(1))
                        .map(str::to_string);
                    payload.drain(..hlen.min(total));
                    return Ok(Reply {
                        subject: parts[1].to_string(),
                        status,
                        payload,
                    });
                }
                Some(l) if l.starts_with("-ERR") => return Err(err(line.clone())),
                _ => continue,
            }
        }
    }

    async fn body(&mut self, len: usize) -> Result<Vec<u8>, SinkError> {
        let mut buf = vec![0u8; len + 2];
        self.rd.read_exact(&mut buf).await?;
        buf.truncate(len);
        Ok(buf)
    }
}

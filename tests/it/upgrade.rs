//! WebSocket pass-through: the handshake is a metered call like any other, and once the
//! upstream switches protocols the gateway carries bytes both ways until either side closes or
//! a read timeout ends an idle socket; the call stays charged however the socket ends.
//!
//! The upstream here is a raw TCP server that answers an upgrade request with `101` and then
//! echoes every byte, so what the client reads back went through the gateway twice.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::common::{month_key, render, Gateway, RedisServer, ACME_KEY};

const YAML: &str = r#"
server: { listen: "{listen}", threads: 2 }
admin: { listen: "{admin}" }
store: { kind: redis, url: "{redis}", timeout: 2s, on_outage: fail_closed }
upstreams:
  sockets: { targets: ["{upstream}"], read_timeout: 1s }
tenants:
  acme: { plan: free, keys: [{ id: acme-1, sha256: "{acme_sha}" }] }
plans:
  free: { meters: { requests: { limit: 1000, period: month } } }
routes:
  - { name: live, match: { path_prefix: /live }, upstream: sockets, meter: { requests: 1 } }
"#;

/// A raw upstream: answers a WebSocket handshake with `101 Switching Protocols` and echoes what
/// follows; anything else gets `426 Upgrade Required`. Keeps each request head it read.
struct EchoSocket {
    addr: String,
    heads: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl EchoSocket {
    async fn start() -> EchoSocket {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let (head, rest) = read_head(&mut conn).await;
                    let upgrade = head.to_ascii_lowercase().contains("\r\nupgrade: websocket");
                    seen.lock().unwrap().push(head);
                    if !upgrade {
                        let _ = conn
                            .write_all(
                                b"HTTP/1.1 426 Upgrade Required\r\ncontent-length: 0\r\n\r\n",
                            )
                            .await;
                        return;
                    }
                    // (The accept value is not checked by the test's client.)
                    let _ = conn
                        .write_all(
                            b"HTTP/1.1 101 Switching Protocols\r\n\
                              Upgrade: websocket\r\n\
                              Connection: Upgrade\r\n\
                              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
                        )
                        .await;
                    let _ = conn.write_all(&rest).await;
                    let mut buf = [0u8; 4096];
                    loop {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if conn.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        EchoSocket { addr, heads, task }
    }

    fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

impl Drop for EchoSocket {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads up to the end of a message head: (the head, the bytes read after it).
async fn read_head(conn: &mut TcpStream) -> (String, Vec<u8>) {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        if let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
            return (head, bytes[end + 4..].to_vec());
        }
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .expect("no whole message head within 10 s")
            .unwrap();
        assert!(n > 0, "closed before the end of the head: {bytes:?}");
        bytes.extend_from_slice(&buf[..n]);
    }
}

/// The value of header `name` in a message head, case-insensitively.
fn header<'h>(head: &'h str, name: &str) -> Option<&'h str> {
    head.split("\r\n").skip(1).find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Sends a WebSocket handshake for `/live/feed` with API key `key`: (the connection, the
/// answer's head, what came after it).
async fn handshake(gateway: &str, key: &str) -> (TcpStream, String, Vec<u8>) {
    let mut conn = TcpStream::connect(gateway).await.unwrap();
    let request = format!(
        "GET /live/feed HTTP/1.1\r\n\
         Host: api.example.com\r\n\
         X-Api-Key: {key}\r\n\
         Upgrade: websocket\r\n\
         Connection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let (head, rest) = read_head(&mut conn).await;
    (conn, head, rest)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_is_one_metered_call_for_its_whole_life() {
    let redis = RedisServer::start().await;
    let upstream = EchoSocket::start().await;
    let gateway = Gateway::start(&render(YAML, &redis.url(), &upstream.addr)).await;

    let (mut conn, head, rest) = handshake(gateway.listen_addr(), ACME_KEY).await;

    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!(header(&head, "upgrade"), Some("websocket"), "{head}");
    assert_eq!(
        header(&head, "connection").map(str::to_ascii_lowercase),
        Some("upgrade".into()),
        "{head}"
    );
    assert!(header(&head, "sec-websocket-accept").is_some(), "{head}");
    // The handshake is the metered call.
    assert!(
        header(&head, "ratelimit").is_some_and(|v| v.contains("\"requests\";r=999")),
        "{head}"
    );

    // Frames are opaque to the gateway: any bytes, several times, in both directions.
    for message in [&b"\x81\x05hello"[..], b"\x81\x03two", &[0x82, 0x02, 0, 255]] {
        conn.write_all(message).await.unwrap();
        let mut back = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut back))
            .await
            .expect("no echo within 10 s")
            .unwrap();
        assert_eq!(back, message);
    }
    // Idle past the upstream's `read_timeout`, the socket is closed, and the call that was
    // served stays charged (a timeout before the switch would have refunded it).
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
        .await
        .expect("the idle socket was not closed within 10 s");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;

    let heads = upstream.heads();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let up = &heads[0];
    assert_eq!(header(up, "upgrade"), Some("websocket"), "{up}");
    assert_eq!(
        header(up, "connection").map(str::to_ascii_lowercase),
        Some("upgrade".into()),
        "{up}"
    );
    assert_eq!(
        header(up, "sec-websocket-key"),
        Some("dGhlIHNhbXBsZSBub25jZQ=="),
        "{up}"
    );
    assert_eq!(header(up, "x-tollgate-tenant"), Some("acme"), "{up}");
    assert_eq!(header(up, "x-api-key"), None, "credentials stay: {up}");
    assert_eq!(redis.get_int(&month_key("acme", "requests")).await, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_websocket_handshake_is_answered_and_not_upgraded() {
    let redis = RedisServer::start().await;
    let upstream = EchoSocket::start().await;
    let gateway = Gateway::start(&render(YAML, &redis.url(), &upstream.addr)).await;

    // Without a key the gateway answers itself: 401, no upgrade, nothing reaches the upstream.
    let (_conn, head, _body) = handshake(gateway.listen_addr(), "tg_test_unknown").await;

    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert_eq!(header(&head, "upgrade"), None, "{head}");
    assert!(upstream.heads().is_empty());
    assert_eq!(redis.get_int(&month_key("acme", "requests")).await, 0);
}

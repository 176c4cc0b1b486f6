//! A real `nats-server` with JetStream, private to one test, and a minimal request/reply
//! client to ask the JetStream API about what arrived.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One `nats-server -js` child process on a free port; killed when dropped.
pub struct NatsServer {
    _dir: TempDir,
    port: u16,
    child: Child,
}

impl NatsServer {
    /// Starts a server with JetStream (file storage in a temporary directory) and waits until
    /// it accepts connections. Fails, never skips, when `nats-server` is not installed.
    pub async fn start() -> NatsServer {
        let dir = tempfile::Builder::new()
            .prefix("tg-nats-")
            .tempdir()
            .unwrap();
        let port: u16 = super::gateway::free_addr()
            .rsplit_once(':')
            .unwrap()
            .1
            .parse()
            .unwrap();
        let log = std::fs::File::create(dir.path().join("nats.log")).unwrap();
        // CI's PATH has /usr/sbin, an interactive shell's may not.
        let binary = if std::path::Path::new("/usr/sbin/nats-server").exists() {
            "/usr/sbin/nats-server"
        } else {
            "nats-server"
        };
        let spawned = Command::new(binary)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) => panic!(
                "nats-server is not installed; these tests need a real NATS server with \
                 JetStream: apt-get install nats-server ({e})"
            ),
        };
        let server = NatsServer {
            _dir: dir,
            port,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Client::connect(port).await.is_none() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    /// Decodes standard base64 (the JetStream API's encoding of stored messages).
    pub fn base64(text: &str) -> Vec<u8> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u32, 0);
        for c in text.bytes().filter(|c| *c != b'=') {
            let v = ALPHABET.iter().position(|a| *a == c).unwrap() as u32;
            acc = (acc << 6) | v;
            bits += 6;
            if bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
                acc &= (1 << bits) - 1;
            }
        }
        out
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A JetStream API request (`$JS.API.<api>`), answered as JSON.
    pub async fn api(&self, api: &str, body: Value) -> Value {
        let mut client = Client::connect(self.port)
            .await
            .expect("connect to nats-server");
        client
            .request(&format!("$JS.API.{api}"), &body.to_string())
            .await
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Client {
    rd: BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    async fn connect(port: u16) -> Option<Client> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::new(rd);
        let mut line = String::new();
        rd.read_line(&mut line).await.ok()?;
        wr.write_all(
            b"CONNECT {\"verbose\":false,\"headers\":true}\r\nSUB _INBOX.test 1\r\nPING\r\n",
        )
        .await
        .ok()?;
        loop {
            line.clear();
            rd.read_line(&mut line).await.ok()?;
            if line.starts_with("PONG") {
                return Some(Client { rd, wr });
            }
        }
    }

    async fn request(&mut self, subject: &str, body: &str) -> Value {
        let publish = format!("PUB {subject} _INBOX.test {}\r\n{body}\r\n", body.len());
        self.wr.write_all(publish.as_bytes()).await.unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            self.rd.read_line(&mut line).await.unwrap();
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.first() == Some(&"MSG") {
                let len: usize = parts.last().unwrap().parse().unwrap();
                let mut buf = vec![0; len + 2];
                self.rd.read_exact(&mut buf).await.unwrap();
                return serde_json::from_slice(&buf[..len]).unwrap();
            }
        }
    }
}

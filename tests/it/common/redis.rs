//! A real `redis-server`, private to one test, listening on a unix socket (and, when asked, on a
//! TLS port of 127.0.0.1 as well).

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use tempfile::TempDir;

/// One `redis-server` child process; killed when dropped.
pub struct RedisServer {
    dir: TempDir,
    child: Option<Child>,
    /// The TLS port, when the server also serves TLS (certificate files in `dir`).
    tls_port: Option<u16>,
    /// The TCP port of 127.0.0.1, when the server listens on one (replication and Sentinel
    /// need addresses).
    port: Option<u16>,
    /// More arguments for `redis-server` (`--replicaof …`).
    args: Vec<String>,
}

// === impl RedisServer ===

impl RedisServer {
    /// Starts a fresh server and waits until it answers `PING`.
    ///
    /// Fails (never skips) when `redis-server` is not installed, because a skipped test would
    /// hide exactly the failure modes these tests exist to show.
    pub async fn start() -> RedisServer {
        RedisServer::spawned(tempdir(), None, None, Vec::new()).await
    }

    async fn spawned(
        dir: TempDir,
        tls_port: Option<u16>,
        port: Option<u16>,
        args: Vec<String>,
    ) -> RedisServer {
        let mut server = RedisServer {
            dir,
            child: None,
            tls_port,
            port,
            args,
        };
        server.spawn().await;
        server
    }

    /// Starts a server that also takes TLS connections on a free port of 127.0.0.1, presenting
    /// `ca`'s server certificate (clients are not asked for one). The unix socket stays, for
    /// the test's own reads.
    pub async fn start_tls(ca: &crate::common::tls::TestCa) -> RedisServer {
        let dir = tempdir();
        std::fs::write(dir.path().join("tls.crt"), &ca.server_cert_pem).unwrap();
        std::fs::write(dir.path().join("tls.key"), &ca.server_key_pem).unwrap();
        let port = crate::common::gateway::free_port();
        RedisServer::spawned(dir, Some(port), None, Vec::new()).await
    }

    /// Starts a server that takes TLS connections on a free port of 127.0.0.1 (as
    /// [`RedisServer::start_tls`]) and replicates over TLS, trusting `ca` (`ca.crt` in its
    /// directory); a replica of the server at `primary_tls_port` when given.
    pub async fn start_tls_replicating(
        ca: &crate::common::tls::TestCa,
        primary_tls_port: Option<u16>,
    ) -> RedisServer {
        let dir = tempdir();
        std::fs::write(dir.path().join("tls.crt"), &ca.server_cert_pem).unwrap();
        std::fs::write(dir.path().join("tls.key"), &ca.server_key_pem).unwrap();
        let ca_file = dir.path().join("ca.crt");
        std::fs::write(&ca_file, &ca.ca_pem).unwrap();
        let mut args = vec![
            "--tls-replication".to_string(),
            "yes".to_string(),
            "--tls-ca-cert-file".to_string(),
            ca_file.display().to_string(),
        ];
        if let Some(port) = primary_tls_port {
            args.extend([
                "--replicaof".to_string(),
                "127.0.0.1".to_string(),
                port.to_string(),
            ]);
        }
        let port = crate::common::gateway::free_port();
        RedisServer::spawned(dir, Some(port), None, args).await
    }

    /// The TLS port of a server started with [`RedisServer::start_tls`] or
    /// [`RedisServer::start_tls_replicating`].
    pub fn tls_port(&self) -> u16 {
        self.tls_port.expect("started with TLS")
    }

    /// Starts a server that also listens on a free TCP port of 127.0.0.1, with `args` added
    /// to its command line (`["--replicaof", "127.0.0.1", "<port>"]` for a replica).
    pub async fn start_on_port(args: &[&str]) -> RedisServer {
        let port = crate::common::gateway::free_port();
        let args = ["--bind", "127.0.0.1"].iter().chain(args);
        RedisServer::spawned(
            tempdir(),
            None,
            Some(port),
            args.map(|a| a.to_string()).collect(),
        )
        .await
    }

    /// The TCP port of a server started with [`RedisServer::start_on_port`].
    pub fn port(&self) -> u16 {
        self.port.expect("started with start_on_port")
    }

    /// The server's `INFO replication` as `field:value` lines.
    pub async fn replication(&self) -> String {
        let mut conn = self.conn().await;
        redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    /// `rediss://127.0.0.1:<tls port>/0`, for a server started with [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> String {
        let port = self.tls_port.expect("started with start_tls");
        format!("rediss://127.0.0.1:{port}/0")
    }

    /// The server's own directory (removed with it).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The unix socket path; the same across restarts.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// The URL the gateway is configured with.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// A fresh multiplexed connection for the test's own reads and writes.
    pub async fn conn(&self) -> MultiplexedConnection {
        let client = redis::Client::open(self.url()).unwrap();
        tokio::time::timeout(
            Duration::from_secs(5),
            client.get_multiplexed_async_connection(),
        )
        .await
        .expect("connecting to the test redis-server timed out")
        .expect("connecting to the test redis-server failed")
    }

    /// Reads an integer key; an absent key reads as 0 (nothing was ever counted).
    pub async fn get_int(&self, key: &str) -> i64 {
        let mut conn = self.conn().await;
        let value: Option<i64> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        value.unwrap_or(0)
    }

    /// Whether a key exists at all.
    pub async fn exists(&self, key: &str) -> bool {
        let mut conn = self.conn().await;
        redis::cmd("EXISTS")
            .arg(key)
            .query_async::<i64>(&mut conn)
            .await
            .unwrap()
            == 1
    }

    /// The key's TTL in seconds (`-1`: no expiry, `-2`: no key).
    pub async fn ttl(&self, key: &str) -> i64 {
        let mut conn = self.conn().await;
        redis::cmd("TTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    /// Runs one command and ignores its answer.
    pub async fn command(&self, args: &[&str]) {
        let mut conn = self.conn().await;
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        let _: redis::Value = cmd.query_async(&mut conn).await.unwrap();
    }

    /// Kills the server with SIGKILL: an outage, not a shutdown.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server with SIGSTOP: connections stay open but nothing answers (a hang).
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Thaws a server frozen by [`RedisServer::pause`]; it then answers what queued up.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self
            .child
            .as_ref()
            .expect("redis-server is not running")
            .id()
            .to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success(), "kill {signal} {pid} failed");
    }

    /// Starts the server again on the same socket path (with an empty dataset).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        let log_path = self.dir.path().join("redis.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let socket = self.socket();
        let spawned = Command::new("redis-server")
            .args([
                "--port",
                &self.port.unwrap_or(0).to_string(),
                "--unixsocket",
            ])
            .arg(&socket)
            .args([
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(&self.args)
            .args(["--daemonize", "no", "--dir"])
            .arg(self.dir.path())
            .args(self.tls_port.map_or_else(Vec::new, |port| {
                let file = |name: &str| self.dir.path().join(name).display().to_string();
                vec![
                    "--tls-port".to_string(),
                    port.to_string(),
                    "--tls-cert-file".to_string(),
                    file("tls.crt"),
                    "--tls-key-file".to_string(),
                    file("tls.key"),
                    "--tls-auth-clients".to_string(),
                    "no".to_string(),
                ]
            }))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not on PATH; these tests need a real Redis: \
                 apt-get install redis-server ({e})"
            ),
            Err(e) => panic!("could not start redis-server: {e}"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("redis-server exited with {status}:\n{}", read(&log_path));
            }
            if self.ping().await {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "redis-server did not answer PING within 10 s:\n{}",
                    read(&log_path)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.child = Some(child);
    }

    async fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let attempt = async {
            let mut conn = client.get_multiplexed_async_connection().await.ok()?;
            redis::cmd("PING")
                .query_async::<String>(&mut conn)
                .await
                .ok()
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(1), attempt).await,
            Ok(Some(pong)) if pong == "PONG"
        )
    }
}

fn tempdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("tg-redis-")
        .tempdir()
        .unwrap()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read(path: &std::path::Path) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let _ = std::io::Read::read_to_string(&mut file, &mut text);
    }
    text
}

//! A real Redis Sentinel (`redis-server --sentinel`), private to one test, watching one
//! primary on 127.0.0.1 under the name [`NAME`].

use std::fs::File;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The name the Sentinel monitors the primary under.
pub const NAME: &str = "tg-primary";

/// One Sentinel process; killed when dropped.
pub struct Sentinel {
    dir: TempDir,
    child: Child,
    port: u16,
    /// Over TLS: the CA that signed its certificate (and the servers'), PEM.
    ca_pem: Option<String>,
}

impl Sentinel {
    /// Starts a Sentinel monitoring the primary on `primary_port` with a quorum of one (so it
    /// fails over alone), declaring it down after 1 s without an answer, and waits until it
    /// knows the primary's `replicas` replicas (a failover needs one to promote).
    pub async fn start(primary_port: u16, replicas: usize) -> Sentinel {
        Sentinel::spawn(primary_port, replicas, None).await
    }

    /// [`Sentinel::start`] over TLS: it takes TLS connections only, presenting `ca`'s server
    /// certificate, and talks TLS to the servers (the primary's TLS port is `primary_port`).
    pub async fn start_tls(
        primary_port: u16,
        replicas: usize,
        ca: &crate::common::tls::TestCa,
    ) -> Sentinel {
        Sentinel::spawn(primary_port, replicas, Some(ca)).await
    }

    async fn spawn(
        primary_port: u16,
        replicas: usize,
        ca: Option<&crate::common::tls::TestCa>,
    ) -> Sentinel {
        let dir = tempfile::Builder::new()
            .prefix("tg-sentinel-")
            .tempdir()
            .unwrap();
        let port = crate::common::gateway::free_port();
        let conf = dir.path().join("sentinel.conf");
        let listen = match ca {
            None => format!("port {port}\n"),
            Some(ca) => {
                let file = |name: &str, text: &str| {
                    let path = dir.path().join(name);
                    std::fs::write(&path, text).unwrap();
                    path.display().to_string()
                };
                format!(
                    "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\n\
                     tls-ca-cert-file {}\ntls-replication yes\ntls-auth-clients no\n",
                    file("tls.crt", &ca.server_cert_pem),
                    file("tls.key", &ca.server_key_pem),
                    file("ca.crt", &ca.ca_pem)
                )
            }
        };
        std::fs::write(
            &conf,
            format!(
                "{listen}bind 127.0.0.1\ndaemonize no\ndir {dir}\n\
                 sentinel monitor {NAME} 127.0.0.1 {primary_port} 1\n\
                 sentinel down-after-milliseconds {NAME} 1000\n\
                 sentinel failover-timeout {NAME} 4000\n\
                 sentinel parallel-syncs {NAME} 1\n",
                dir = dir.path().display()
            ),
        )
        .unwrap();
        let log = File::create(dir.path().join("sentinel.log")).unwrap();
        let child = match Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not on PATH; the Sentinel tests need it: apt-get install redis-server ({e})"
            ),
            Err(e) => panic!("could not start redis-server --sentinel: {e}"),
        };
        let sentinel = Sentinel {
            dir,
            child,
            port,
            ca_pem: ca.map(|ca| ca.ca_pem.clone()),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if sentinel.known_replicas().await == Some(replicas) {
                return sentinel;
            }
            assert!(
                Instant::now() < deadline,
                "the Sentinel did not see {replicas} replica(s) within 30 s:\n{}",
                sentinel.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `redis://127.0.0.1:<port>` (`rediss://` over TLS), as `store.sentinels` takes it.
    pub fn url(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The Sentinel's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default()
    }

    async fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> redis::RedisResult<T> {
        let client = match &self.ca_pem {
            None => redis::Client::open(self.url())?,
            Some(ca) => redis::Client::build_with_tls(
                self.url(),
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.as_bytes().to_vec()),
                },
            )?,
        };
        let ask = async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            let mut cmd = redis::cmd(args[0]);
            for arg in &args[1..] {
                cmd.arg(*arg);
            }
            cmd.query_async::<T>(&mut conn).await
        };
        tokio::time::timeout(Duration::from_secs(2), ask)
            .await
            .unwrap_or_else(|_| Err((redis::ErrorKind::Io, "no answer within 2 s").into()))
    }

    /// How many replicas the Sentinel knows and takes as up, once it answers.
    async fn known_replicas(&self) -> Option<usize> {
        let replicas: Vec<std::collections::HashMap<String, String>> =
            self.query(&["SENTINEL", "REPLICAS", NAME]).await.ok()?;
        Some(
            replicas
                .iter()
                .filter(|r| r.get("flags").is_some_and(|f| f == "slave"))
                .count(),
        )
    }

    /// The port of the primary as the Sentinel names it now.
    pub async fn primary_port(&self) -> Option<u16> {
        self.query::<Option<(String, u16)>>(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", NAME])
            .await
            .ok()
            .flatten()
            .map(|(_, port)| port)
    }

    /// Asks for a failover now, as an operator would for maintenance.
    pub async fn failover(&self) {
        let _: redis::Value = self
            .query(&["SENTINEL", "FAILOVER", NAME])
            .await
            .unwrap_or_else(|e| panic!("SENTINEL FAILOVER: {e}\n{}", self.log()));
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

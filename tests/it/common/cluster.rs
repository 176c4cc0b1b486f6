//! A real Redis Cluster, private to one test: three `redis-server` primaries on free ports of
//! 127.0.0.1, joined with `redis-cli --cluster create`, each owning a third of the slots; in
//! plain text, or all TLS (clients and the cluster bus) with a test CA's certificate.

use std::fs::OpenOptions;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::gateway::free_port;

/// The cluster's nodes; every `redis-server` is killed when this is dropped.
pub struct RedisCluster {
    dir: TempDir,
    /// The CA that signed the nodes' certificate, PEM, when the cluster speaks TLS.
    ca_pem: Option<String>,
    ports: Vec<u16>,
    bus_ports: Vec<u16>,
    children: Vec<Option<Child>>,
}

// === impl RedisCluster ===

impl RedisCluster {
    /// Starts three primaries, creates the cluster and waits until every node reports
    /// `cluster_state:ok`. Fails (never skips) when `redis-server` or `redis-cli` is missing.
    pub async fn start() -> RedisCluster {
        RedisCluster::start_with(None).await
    }

    /// The same cluster over TLS only: clients and nodes connect with TLS and check the
    /// certificate `ca` signed for 127.0.0.1; the nodes ask no client certificate.
    pub async fn start_tls(ca: &crate::common::tls::TestCa) -> RedisCluster {
        RedisCluster::start_with(Some(ca)).await
    }

    async fn start_with(ca: Option<&crate::common::tls::TestCa>) -> RedisCluster {
        let dir = tempfile::Builder::new()
            .prefix("tg-cluster-")
            .tempdir()
            .unwrap();
        if let Some(ca) = ca {
            std::fs::write(dir.path().join("tls.crt"), &ca.server_cert_pem).unwrap();
            std::fs::write(dir.path().join("tls.key"), &ca.server_key_pem).unwrap();
            ca.write_ca(dir.path());
        }
        let mut cluster = RedisCluster {
            ca_pem: ca.map(|ca| ca.ca_pem.clone()),
            dir,
            ports: Vec::new(),
            bus_ports: Vec::new(),
            children: Vec::new(),
        };
        for _ in 0..3 {
            cluster.ports.push(free_port());
            cluster.bus_ports.push(free_port());
            let child = cluster.spawn_node(cluster.ports.len() - 1);
            cluster.children.push(Some(child));
        }
        for port in &cluster.ports {
            wait_for(&format!("node {port} answers PING"), || async {
                cluster.node_command(*port, &["PING"]).await.as_deref() == Some("PONG")
            })
            .await;
        }
        let mut create = tokio::process::Command::new("redis-cli");
        if cluster.ca_pem.is_some() {
            create
                .arg("--tls")
                .arg("--cacert")
                .arg(cluster.dir.path().join("ca.pem"));
        }
        create.arg("--cluster").arg("create");
        for port in &cluster.ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        // It waits for the nodes to meet without a bound of its own.
        let out = tokio::time::timeout(Duration::from_secs(30), create.output())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "redis-cli --cluster create did not finish within 30 s; node logs in {}",
                    cluster.dir.path().display()
                )
            })
            .unwrap_or_else(|e| {
                panic!("redis-cli is not on PATH; install it: apt-get install redis-tools ({e})")
            });
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_until_ok().await;
        cluster
    }

    async fn wait_until_ok(&self) {
        for port in self.ports.clone() {
            wait_for(&format!("node {port} reports cluster_state:ok"), || async {
                self.node_command(port, &["CLUSTER", "INFO"])
                    .await
                    .is_some_and(|info| info.contains("cluster_state:ok"))
            })
            .await;
        }
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://…` for a TLS cluster.
    fn url(&self, port: u16) -> String {
        let scheme = if self.ca_pem.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{port}")
    }

    /// What a client needs to trust the nodes, for a TLS cluster.
    fn certs(&self) -> Option<redis::TlsCertificates> {
        self.ca_pem.as_ref().map(|pem| redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(pem.as_bytes().to_vec()),
        })
    }

    /// A client of one node, not following the cluster's redirects.
    fn node_client(&self, port: u16) -> redis::Client {
        match self.certs() {
            Some(certs) => redis::Client::build_with_tls(self.url(port), certs).unwrap(),
            None => redis::Client::open(self.url(port)).unwrap(),
        }
    }

    /// One command on one node, without following redirects; `None` on any failure. Simple
    /// replies come back as text, integers as their decimal text.
    async fn node_command(&self, port: u16, args: &[&str]) -> Option<String> {
        let client = self.node_client(port);
        let attempt = async {
            let mut conn = client.get_multiplexed_async_connection().await.ok()?;
            let mut cmd = redis::cmd(args[0]);
            for arg in &args[1..] {
                cmd.arg(*arg);
            }
            match cmd.query_async::<redis::Value>(&mut conn).await.ok()? {
                redis::Value::Int(i) => Some(i.to_string()),
                v => redis::from_redis_value::<String>(v).ok(),
            }
        };
        tokio::time::timeout(Duration::from_secs(2), attempt)
            .await
            .ok()
            .flatten()
    }

    /// The seed URLs the gateway is configured with, as a YAML flow list.
    pub fn urls_yaml(&self) -> String {
        let urls: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("\"{}\"", self.url(*p)))
            .collect();
        format!("[{}]", urls.join(", "))
    }

    /// The CA certificate file of a TLS cluster, for `store.ca_file`.
    pub fn ca_file(&self) -> std::path::PathBuf {
        assert!(self.ca_pem.is_some(), "started with start_tls");
        self.dir.path().join("ca.pem")
    }

    /// A connection that follows the cluster's slots, for the test's own reads.
    pub async fn conn(&self) -> redis::cluster_async::ClusterConnection {
        let seeds: Vec<String> = self.ports.iter().map(|p| self.url(*p)).collect();
        let mut builder = redis::cluster::ClusterClient::builder(seeds);
        if let Some(certs) = self.certs() {
            builder = builder.certs(certs);
        }
        builder
            .build()
            .unwrap()
            .get_async_connection()
            .await
            .expect("connecting to the test cluster failed")
    }

    /// Reads an integer key wherever it lives; an absent key reads as 0.
    pub async fn get_int(&self, key: &str) -> i64 {
        let mut conn = self.conn().await;
        let value: Option<i64> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        value.unwrap_or(0)
    }

    /// Which node (index into the start order) owns `key`'s slot: the one that answers a
    /// plain `GET` without redirecting.
    pub async fn node_of(&self, key: &str) -> usize {
        for (i, port) in self.ports.iter().enumerate() {
            let client = self.node_client(*port);
            let mut conn = client.get_multiplexed_async_connection().await.unwrap();
            let answer: redis::RedisResult<Option<String>> =
                redis::cmd("GET").arg(key).query_async(&mut conn).await;
            if answer.is_ok() {
                return i;
            }
        }
        panic!("no node of the cluster owns {key}");
    }

    /// Runs one command on every node (for example `SCRIPT FLUSH`).
    pub async fn on_every_node(&self, args: &[&str]) {
        for port in &self.ports {
            assert!(
                self.node_command(*port, args).await.is_some(),
                "{args:?} on node {port} failed"
            );
        }
    }

    /// Kills node `i` with SIGKILL: an outage of the slots it owns.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again on its port, with its cluster identity and slots (kept in its
    /// `nodes-<port>.conf`) and no data, and waits until every node reports the cluster ok.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        let child = self.spawn_node(i);
        self.children[i] = Some(child);
        self.wait_until_ok().await;
    }

    fn spawn_node(&self, i: usize) -> Child {
        let (port, bus) = (self.ports[i], self.bus_ports[i]);
        let log_path = self.dir.path().join(format!("redis-{port}.log"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let file = |name: &str| self.dir.path().join(name).display().to_string();
        let listen: Vec<String> = match self.ca_pem {
            None => vec!["--port".into(), port.to_string()],
            Some(_) => [
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--tls-cluster",
                "yes",
                "--tls-cert-file",
                &file("tls.crt"),
                "--tls-key-file",
                &file("tls.key"),
                "--tls-ca-cert-file",
                &file("ca.pem"),
                "--tls-auth-clients",
                "no",
            ]
            .map(String::from)
            .to_vec(),
        };
        let spawned = Command::new("redis-server")
            .args(["--bind", "127.0.0.1"])
            .args(&listen)
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-port",
                &bus.to_string(),
            ])
            .arg("--cluster-config-file")
            .arg(self.dir.path().join(format!("nodes-{port}.conf")))
            // A node that is down takes only its own slots with it.
            .args(["--cluster-node-timeout", "2000"])
            .args(["--cluster-require-full-coverage", "no"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn();
        match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "redis-server is not on PATH; these tests need a real Redis: \
                 apt-get install redis-server ({e})"
            ),
            Err(e) => panic!("could not start redis-server: {e}"),
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `ready` every 50 ms for up to 20 s; panics naming `what` if it never holds.
async fn wait_for<F, Fut>(what: &str, mut ready: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ready().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

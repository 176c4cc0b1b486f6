//! A real Redis Cluster, private to one test: three `redis-server` primaries on free ports of
//! 127.0.0.1, joined with `redis-cli --cluster create`, each owning a third of the slots.

use std::fs::OpenOptions;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The cluster's nodes; every `redis-server` is killed when this is dropped.
pub struct RedisCluster {
    dir: TempDir,
    ports: Vec<u16>,
    bus_ports: Vec<u16>,
    children: Vec<Option<Child>>,
}

// === impl RedisCluster ===

impl RedisCluster {
    /// Starts three primaries, creates the cluster and waits until every node reports
    /// `cluster_state:ok`. Fails (never skips) when `redis-server` or `redis-cli` is missing.
    pub async fn start() -> RedisCluster {
        let dir = tempfile::Builder::new()
            .prefix("tg-cluster-")
            .tempdir()
            .unwrap();
        let mut cluster = RedisCluster {
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
                node_command(*port, &["PING"]).await.as_deref() == Some("PONG")
            })
            .await;
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for port in &cluster.ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!("redis-cli is not on PATH; install it: apt-get install redis-tools ({e})")
            });
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for port in cluster.ports.clone() {
            wait_for(&format!("node {port} reports cluster_state:ok"), || async {
                node_command(port, &["CLUSTER", "INFO"])
                    .await
                    .is_some_and(|info| info.contains("cluster_state:ok"))
            })
            .await;
        }
        cluster
    }

    /// The seed URLs the gateway is configured with, as a YAML flow list.
    pub fn urls_yaml(&self) -> String {
        let urls: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("\"redis://127.0.0.1:{p}\""))
            .collect();
        format!("[{}]", urls.join(", "))
    }

    /// A connection that follows the cluster's slots, for the test's own reads.
    pub async fn conn(&self) -> redis::cluster_async::ClusterConnection {
        let seeds: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect();
        redis::cluster::ClusterClient::new(seeds)
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
            let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap();
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
                node_command(*port, args).await.is_some(),
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
        for port in self.ports.clone() {
            wait_for(&format!("node {port} reports cluster_state:ok"), || async {
                node_command(port, &["CLUSTER", "INFO"])
                    .await
                    .is_some_and(|info| info.contains("cluster_state:ok"))
            })
            .await;
        }
    }

    fn spawn_node(&self, i: usize) -> Child {
        let (port, bus) = (self.ports[i], self.bus_ports[i]);
        let log_path = self.dir.path().join(format!("redis-{port}.log"));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let spawned = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
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

/// One command on one node, without following redirects; `None` on any failure. Simple
/// replies come back as text, integers as their decimal text.
async fn node_command(port: u16, args: &[&str]) -> Option<String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}")).ok()?;
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

/// A port of 127.0.0.1 that nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

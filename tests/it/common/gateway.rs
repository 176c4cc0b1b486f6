//! The real `tollgate` binary, run as a child process on free ports.

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The gateway binary Cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

/// One `tollgate serve` process and the directory holding its config and logs.
///
/// The YAML given to [`Gateway::start`] is a template: `{listen}` and `{admin}` become free
/// `127.0.0.1` ports and `{dir}` the gateway's temporary directory. (Tests fill in `{redis}` and
/// `{upstream}` themselves; see `common::render`.)
pub struct Gateway {
    dir: TempDir,
    template: String,
    child: Option<Child>,
    listen: String,
    admin: String,
    starts: usize,
    /// A hosts file the gateway sees as `/etc/hosts` (see [`Gateway::start_with_hosts`]).
    hosts: Option<std::path::PathBuf>,
}

// === impl Gateway ===

impl Gateway {
    /// Writes the config, spawns `tollgate serve` and waits until `/healthz` answers 200 and
    /// the proxy listener accepts connections.
    pub async fn start(yaml: &str) -> Gateway {
        let dir = tempfile::Builder::new().prefix("tg-gw-").tempdir().unwrap();
        Gateway::spawned(dir, yaml, None).await
    }

    async fn spawned(dir: TempDir, yaml: &str, hosts: Option<std::path::PathBuf>) -> Gateway {
        let mut gateway = Gateway {
            dir,
            template: yaml.to_owned(),
            child: None,
            listen: String::new(),
            admin: String::new(),
            starts: 0,
            hosts,
        };
        gateway.spawn().await;
        gateway
    }

    /// [`Gateway::start`], with `hosts` as the gateway's `/etc/hosts`: it runs in a mount
    /// namespace of its own (`unshare -m`) where a file holding `hosts` is bound over
    /// `/etc/hosts`, so the system resolver answers the test's names (several addresses for
    /// one, say) and nothing else on the machine sees them. [`Gateway::set_hosts`] changes the
    /// answers while it runs. Needs root and `unshare` (util-linux).
    pub async fn start_with_hosts(yaml: &str, hosts: &str) -> Gateway {
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
        assert!(
            root,
            "this test gives the gateway its own /etc/hosts with `unshare -m` and a bind mount, \
             which needs root: run the tests as root"
        );
        let dir = tempfile::Builder::new().prefix("tg-gw-").tempdir().unwrap();
        let path = dir.path().join("hosts");
        std::fs::write(&path, hosts).unwrap();
        Gateway::spawned(dir, yaml, Some(path)).await
    }

    /// Rewrites the hosts file of a gateway started with [`Gateway::start_with_hosts`] (in
    /// place, so the bind mount shows the new text).
    pub fn set_hosts(&self, hosts: &str) {
        let path = self.hosts.as_ref().expect("started with start_with_hosts");
        std::fs::write(path, hosts).unwrap();
    }

    /// `http://127.0.0.1:<port>` of the proxy listener.
    pub fn base(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// The proxy listener's `host:port`.
    pub fn listen_addr(&self) -> &str {
        &self.listen
    }

    /// A URL on the proxy listener.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }

    /// A URL on the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// The config file the gateway runs with (for CLI commands against the same store).
    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("tollgate.yaml")
    }

    /// Everything the gateway wrote to stderr so far (all runs), for failure messages.
    pub fn stderr(&self) -> String {
        let mut text = String::new();
        for run in 1..=self.starts {
            let path = self.dir.path().join(format!("stderr.{run}.log"));
            text.push_str(&std::fs::read_to_string(path).unwrap_or_default());
        }
        text
    }

    fn stderr_of_last_run(&self) -> String {
        let path = self.dir.path().join(format!("stderr.{}.log", self.starts));
        std::fs::read_to_string(path).unwrap_or_default()
    }

    /// Replaces the config file with `yaml` (same placeholders as `start`, same ports) the way
    /// editors do: written beside it, then renamed over it.
    pub fn rewrite_config(&self, yaml: &str) {
        let dir = self.dir.path().display().to_string();
        let text = yaml
            .replace("{listen}", &self.listen)
            .replace("{admin}", &self.admin)
            .replace("{dir}", &dir);
        let tmp = self.dir.path().join("tollgate.yaml.new");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.config_path()).unwrap();
    }

    /// Sends `signal` (e.g. `HUP`) to the process.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("the gateway is running");
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Stops the process: SIGTERM, then SIGKILL if it has not exited after 10 s.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Sends SIGTERM and waits (at most 30 s) for the process to exit: its exit status and how
    /// long it took.
    pub async fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let mut child = self.child.take().expect("the gateway is running");
        let started = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return (status, started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(30) {
                let _ = child.kill();
                panic!("the gateway did not exit within 30 s of SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the process with SIGKILL: a crash, with no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the gateway again in the same directory (same files), on fresh ports.
    pub async fn start_again(&mut self) {
        assert!(
            self.child.is_none(),
            "stop or kill the gateway before starting it again"
        );
        self.spawn().await;
    }

    async fn spawn_once(&mut self) {
        self.starts += 1;
        self.listen = free_addr();
        self.admin = free_addr();
        let dir = self.dir.path().display().to_string();
        let yaml = self
            .template
            .replace("{listen}", &self.listen)
            .replace("{admin}", &self.admin)
            .replace("{dir}", &dir);
        let config = self.dir.path().join("tollgate.yaml");
        std::fs::write(&config, yaml).unwrap();
        let stdout = File::create(self.dir.path().join(format!("stdout.{}.log", self.starts)));
        let stderr = File::create(self.dir.path().join(format!("stderr.{}.log", self.starts)));
        let mut command = match &self.hosts {
            None => Command::new(BIN),
            Some(hosts) => {
                let mut c = Command::new("unshare");
                c.args(["-m", "--propagation", "private", "sh", "-c"])
                    .arg(r#"mount --bind "$0" /etc/hosts && exec "$1" "$2" "$3" "$4""#)
                    .arg(hosts)
                    .arg(BIN);
                c
            }
        };
        let child = command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .current_dir(self.dir.path())
            .env(
                "TOLLGATE_LOG",
                std::env::var("TOLLGATE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(stdout.unwrap())
            .stderr(stderr.unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("could not spawn {BIN}: {e}"));
        self.child = Some(child);
        self.wait_healthy().await;
    }

    /// Spawns until the gateway binds its ports. Ports are picked by binding port 0 and letting
    /// go, so another test's socket can take one before the gateway binds it; the gateway then
    /// exits at once saying so, and a fresh pair of ports is tried (a few times at most).
    async fn spawn(&mut self) {
        for _ in 0..3 {
            self.spawn_once().await;
            if self.child.is_some() {
                return;
            }
        }
        panic!(
            "the gateway could not bind free ports three times:\n{}",
            self.stderr()
        );
    }

    async fn wait_healthy(&mut self) {
        tollgate::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap();
        let url = self.admin_url("/healthz");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                if self.stderr_of_last_run().contains("cannot be bound") {
                    return;
                }
                panic!(
                    "tollgate serve exited with {status} before it was healthy:\n{}",
                    self.stderr()
                );
            }
            // `/healthz` can answer before the proxy listener is bound (the admin service
            // starts first), so also wait until the proxy port accepts connections.
            let healthy = match client.get(&url).send().await {
                Ok(response) => response.status() == 200,
                Err(_) => false,
            };
            if healthy && tokio::net::TcpStream::connect(&self.listen).await.is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "GET {url} did not answer 200, or {} did not accept, within 20 s; stderr:\n{}",
                    self.listen,
                    self.stderr()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `tollgate <args> --config <gw's config>` (the `keys` commands); returns stdout,
/// asserting success.
pub fn keys_cli(gw: &Gateway, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(gw.config_path())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("could not spawn {BIN}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "tollgate {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `tollgate keys new --tenant <tenant>` filed in `gw`'s store: (key, its sha256 hex).
pub fn file_key(gw: &Gateway, tenant: &str) -> (String, String) {
    let out = keys_cli(gw, &["keys", "new", "--tenant", tenant]);
    let key = out
        .lines()
        .find_map(|l| l.strip_prefix("API key (shown once; store it now): "))
        .unwrap_or_else(|| panic!("no key in the output of keys new: {out}"))
        .to_string();
    let sha = tollgate::keys::sha256_hex(&key);
    (key, sha)
}

/// Runs `tollgate check --config <path>`: (exit code, stdout, stderr).
pub fn run_check(path: &Path) -> (i32, String, String) {
    let output = Command::new(BIN)
        .arg("check")
        .arg("--config")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("could not spawn {BIN}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code().unwrap_or(-1), stdout, stderr)
}

/// A `127.0.0.1:<port>` that was free a moment ago (bound, then released), and that this test
/// process has not handed out before: the kernel may give a released port out again at once,
/// and a gateway whose `listen` and `admin` came out equal never became healthy.
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A port of 127.0.0.1 that nothing listens on right now and that no earlier call returned.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().unwrap().insert(port) {
            return port;
        }
    }
}

//! A TCP port that forwards each new connection to a unix socket the test can change: what a
//! managed Redis's endpoint name does in a failover, when it moves to the new primary while
//! connections made before stay with the old one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, UnixStream};
use tokio::task::JoinHandle;

/// Listens on `127.0.0.1:<free port>` until dropped.
pub struct Forwarder {
    port: u16,
    target: Arc<Mutex<PathBuf>>,
    task: JoinHandle<()>,
}

impl Forwarder {
    /// Forwards new connections to the unix socket `to`.
    pub async fn start(to: &Path) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let target = Arc::new(Mutex::new(to.to_path_buf()));
        let current = target.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let to = current.lock().unwrap().clone();
                tokio::spawn(async move {
                    if let Ok(mut server) = UnixStream::connect(&to).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Forwarder { port, target, task }
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Connections made from now on go to `to`; those made before stay where they are.
    pub fn point_to(&self, to: &Path) {
        *self.target.lock().unwrap() = to.to_path_buf();
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

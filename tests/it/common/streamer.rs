//! An upstream that streams an event stream in two parts and holds the second back until the
//! test releases it: a gateway that buffered the body (instead of passing chunks on as they
//! come) would never deliver the first part while the second is held.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::{Body, Bytes, Frame};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Response;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;

/// An HTTP/1 server on `127.0.0.1:<free port>` answering every request with `first`, then,
/// once [`Streamer::release`] was called, `rest` (one chunk each), as `text/event-stream`.
pub struct Streamer {
    addr: SocketAddr,
    release: Arc<Notify>,
    task: JoinHandle<()>,
}

/// A body fed chunk by chunk through a channel; it ends when the sender is dropped.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

// === impl Streamer ===

impl Streamer {
    /// Binds a free port and serves in a background task.
    pub async fn start(first: Vec<String>, rest: Vec<String>) -> Streamer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let release = Arc::new(Notify::new());
        let gate = release.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (first, rest, gate) = (first.clone(), rest.clone(), gate.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |_req| {
                        let (tx, rx) = mpsc::channel(16);
                        let (first, rest, gate) = (first.clone(), rest.clone(), gate.clone());
                        tokio::spawn(async move {
                            for c in first {
                                let _ = tx.send(Bytes::from(c)).await;
                            }
                            gate.notified().await;
                            for c in rest {
                                let _ = tx.send(Bytes::from(c)).await;
                            }
                        });
                        let response = Response::builder()
                            .header("content-type", "text/event-stream")
                            .body(ChannelBody(rx))
                            .unwrap();
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Streamer {
            addr,
            release,
            task,
        }
    }

    /// `127.0.0.1:<port>`, as written in `upstreams.*.targets`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Lets the held-back part of the (next) answer go.
    pub fn release(&self) {
        self.release.notify_one();
    }
}

impl Drop for Streamer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

//! A real HTTP ingest receiver for the `http` sink: records every batch it is sent, and answers
//! 503 to the first few (after recording them, as a receiver that stored a batch but failed to
//! answer would), so the sink must deliver again.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::rustls;

/// What the receiver saw.
#[derive(Default)]
pub struct Seen {
    /// Every batch, in arrival order, with the status it was answered.
    pub batches: Vec<(u16, Vec<Value>)>,
    /// The `Content-Type` of every request.
    pub content_types: Vec<String>,
    /// Requests still to answer 503.
    fail_next: usize,
}

/// An HTTP/1 server on `127.0.0.1:<free port>` accepting CloudEvents batches at any path.
pub struct Receiver {
    addr: std::net::SocketAddr,
    scheme: &'static str,
    seen: Arc<Mutex<Seen>>,
    task: JoinHandle<()>,
}

impl Receiver {
    /// Starts a receiver that answers 503 to its first `fail_first` requests.
    pub async fn start(fail_first: usize) -> Receiver {
        Receiver::start_with(fail_first, None).await
    }

    /// The same over HTTPS, presenting the certificate of `tls`.
    pub async fn start_tls(fail_first: usize, tls: Arc<rustls::ServerConfig>) -> Receiver {
        Receiver::start_with(fail_first, Some(tls)).await
    }

    async fn start_with(fail_first: usize, tls: Option<Arc<rustls::ServerConfig>>) -> Receiver {
        let seen = Arc::new(Mutex::new(Seen {
            fail_next: fail_first,
            ..Seen::default()
        }));
        let scheme = if tls.is_some() { "https" } else { "http" };
        let (addr, task) = serve_with(seen.clone(), receive, tls).await;
        Receiver {
            addr,
            scheme,
            seen,
            task,
        }
    }

    /// The ingest URL.
    pub fn url(&self) -> String {
        format!("{}://{}/api/v1/events", self.scheme, self.addr)
    }

    /// Runs `f` on what was seen so far.
    pub fn seen<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.lock().unwrap())
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves HTTP/1 on `127.0.0.1:<free port>`, answering each request with `handler(state,
/// request)`; the task runs until aborted. Shared by the test receivers.
pub async fn serve<S, F, Fut>(
    state: Arc<Mutex<S>>,
    handler: F,
) -> (std::net::SocketAddr, JoinHandle<()>)
where
    S: Send + 'static,
    F: Fn(Arc<Mutex<S>>, Request<Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    serve_with(state, handler, None).await
}

/// [`serve`] over TLS, presenting the certificate of `tls`.
pub async fn serve_tls<S, F, Fut>(
    state: Arc<Mutex<S>>,
    handler: F,
    tls: Arc<rustls::ServerConfig>,
) -> (std::net::SocketAddr, JoinHandle<()>)
where
    S: Send + 'static,
    F: Fn(Arc<Mutex<S>>, Request<Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    serve_with(state, handler, Some(tls)).await
}

/// [`serve`], over TLS with `tls` when given.
async fn serve_with<S, F, Fut>(
    state: Arc<Mutex<S>>,
    handler: F,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (std::net::SocketAddr, JoinHandle<()>)
where
    S: Send + 'static,
    F: Fn(Arc<Mutex<S>>, Request<Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let state = state.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| handler(state.clone(), req));
                let http = http1::Builder::new();
                let _ = match acceptor {
                    // A client that does not trust the certificate ends the handshake: no request.
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(tls) => http.serve_connection(TokioIo::new(tls), service).await,
                        Err(_) => return,
                    },
                    None => http.serve_connection(TokioIo::new(stream), service).await,
                };
            });
        }
    });
    (addr, task)
}

async fn receive(
    seen: Arc<Mutex<Seen>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let content_type = req
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = req.into_body().collect().await.unwrap().to_bytes();
    let events: Vec<Value> = serde_json::from_slice(&body).unwrap();
    let mut seen = seen.lock().unwrap();
    let status = if seen.fail_next > 0 {
        seen.fail_next -= 1;
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::ACCEPTED
    };
    seen.content_types.push(content_type);
    seen.batches.push((status.as_u16(), events));
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    Ok(response)
}

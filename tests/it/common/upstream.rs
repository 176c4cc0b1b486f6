//! Real upstream HTTP/1 servers that echo what they received.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// An HTTP/1 server on `127.0.0.1:<free port>`.
///
/// `/status/<code>` answers that status; a path containing `/slow/<ms>` answers after that many
/// milliseconds; `/reason/...` answers with the reason phrase `Fine Thanks`; every other path answers 200 with a JSON echo of the
/// request: `{"method", "path", "headers": {name: [values]}}`. Every answer also carries the
/// hop-by-hop headers `Connection: x-hop`, `X-Hop: 1` and `Keep-Alive: timeout=5`, which the
/// gateway must not pass down to its client.
///
/// `/_health` is the gateway's health probes' path: it answers the status [`Upstream::set_health`]
/// set (200 at first) and is counted in [`Upstream::probes`], not in [`Upstream::hits`].
pub struct Upstream {
    addr: SocketAddr,
    hits: Arc<AtomicUsize>,
    health: Arc<Mutex<Health>>,
    task: JoinHandle<()>,
}

/// What `/_health` answers, and what it was asked.
#[derive(Debug, Clone)]
pub struct Health {
    /// The status it answers.
    pub status: u16,
    /// Probes answered.
    pub probes: usize,
    /// The `Host` and `User-Agent` of the last probe.
    pub last: Option<(String, String)>,
    /// The `Authorization` of the last probe (empty without one).
    pub last_authorization: String,
}

// === impl Upstream ===

impl Upstream {
    /// Binds a free port and serves in a background task of the test's runtime.
    pub async fn start() -> Upstream {
        Upstream::start_on("127.0.0.1:0").await
    }

    /// Binds `addr` (`IP:PORT`) and serves there, as [`Upstream::start`] does.
    pub async fn start_on(addr: &str) -> Upstream {
        Upstream::serve(addr, None).await
    }

    /// The same server over TLS (HTTPS), presenting `tls`'s certificate; a connection whose
    /// handshake fails never counts as a hit.
    pub async fn start_tls(tls: Arc<tokio_rustls::rustls::ServerConfig>) -> Upstream {
        Upstream::serve("127.0.0.1:0", Some(tokio_rustls::TlsAcceptor::from(tls))).await
    }

    async fn serve(addr: &str, tls: Option<tokio_rustls::TlsAcceptor>) -> Upstream {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let health = Arc::new(Mutex::new(Health {
            status: 200,
            probes: 0,
            last: None,
            last_authorization: String::new(),
        }));
        let (counter, probed) = (hits.clone(), health.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (counter, probed) = (counter.clone(), probed.clone());
                let tls = tls.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let (counter, probed) = (counter.clone(), probed.clone());
                        async move {
                            if req.uri().path() == "/_health" {
                                return Ok(health_answer(&probed, &req));
                            }
                            counter.fetch_add(1, Ordering::SeqCst);
                            answer(req).await
                        }
                    });
                    // Header names go out title-cased (`X-Upstream`), so a test can see
                    // whether the gateway kept their case.
                    let http = http1::Builder::new().title_case_headers(true).clone();
                    let _ = match tls {
                        None => http.serve_connection(TokioIo::new(stream), service).await,
                        Some(tls) => match tls.accept(stream).await {
                            Ok(stream) => {
                                http.serve_connection(TokioIo::new(stream), service).await
                            }
                            Err(_) => return,
                        },
                    };
                });
            }
        });
        Upstream {
            addr,
            hits,
            health,
            task,
        }
    }

    /// Makes `/_health` answer `status` from now on.
    pub fn set_health(&self, status: u16) {
        self.health.lock().unwrap().status = status;
    }

    /// What `/_health` answers and was asked so far.
    pub fn health(&self) -> Health {
        self.health.lock().unwrap().clone()
    }

    /// `127.0.0.1:<port>`, as written in `upstreams.*.targets`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// How many requests reached this server.
    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A `127.0.0.1` address where nothing listens: bound once, then released.
pub fn refused_addr() -> String {
    super::gateway::free_addr()
}

/// A health probe's answer: the status set, empty.
fn health_answer(health: &Mutex<Health>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let mut h = health.lock().unwrap();
    h.probes += 1;
    h.last = Some((header(http::header::HOST), header(http::header::USER_AGENT)));
    h.last_authorization = header(http::header::AUTHORIZATION);
    Response::builder()
        .status(h.status)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    if let Some(answer) = llm(&path).or_else(|| super::providers::answer(&path)) {
        return Ok(answer);
    }
    // `/slow/<ms>...`: the echo, after that long.
    if let Some(ms) = path
        .split("/slow/")
        .nth(1)
        .and_then(|r| r.split(['/', '?']).next())
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
    }
    let (status, content_type, body) = match path.strip_prefix("/status/") {
        Some(code) => {
            let status = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok());
            let status = status.unwrap_or(StatusCode::BAD_REQUEST);
            (
                status,
                "text/plain",
                format!("upstream answered {}", status.as_u16()),
            )
        }
        None => (StatusCode::OK, "application/json", echo(&req, &path)),
    };
    let mut response = Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("x-upstream", "echo")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    // `/reason/...`: the status line says `200 Fine Thanks` instead of `200 OK`.
    if path.starts_with("/reason/") {
        response
            .extensions_mut()
            .insert(hyper::ext::ReasonPhrase::from_static(b"Fine Thanks"));
    }
    Ok(response)
}

/// OpenAI-shaped answers with known token counts, for response-measured meters:
/// `/llm/json/<n>` (JSON with `usage.total_tokens = n`), `/llm/sse/<n>` (an event stream whose
/// last usage event says n, after an earlier one that says less), `/llm/none` (JSON without
/// `usage`), `/llm/header/<n>` (header `x-units: n`).
fn llm(path: &str) -> Option<Response<Full<Bytes>>> {
    let rest = path.strip_prefix("/llm/")?;
    let n = |s: &str| {
        s.split(['/', '?'])
            .next()
            .unwrap_or("0")
            .parse::<u64>()
            .unwrap_or(0)
    };
    let (content_type, body, units) = if let Some(t) = rest.strip_prefix("json/") {
        let t = n(t);
        let body = format!(
            r#"{{"id":"chatcmpl-1","choices":[{{"message":{{"content":"hi"}}}}],"usage":{{"prompt_tokens":1,"completion_tokens":{},"total_tokens":{t}}}}}"#,
            t.saturating_sub(1)
        );
        ("application/json", body, None)
    } else if let Some(t) = rest.strip_prefix("sse/") {
        let t = n(t);
        let body = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"h\"}}}}],\"usage\":null}}\n\n\
             data: {{\"choices\":[],\"usage\":{{\"total_tokens\":{}}}}}\n\n\
             data: {{\"choices\":[],\"usage\":{{\"total_tokens\":{t}}}}}\n\n\
             data: [DONE]\n\n",
            t / 2
        );
        ("text/event-stream", body, None)
    } else if rest.starts_with("none") {
        (
            "application/json",
            r#"{"id":"chatcmpl-2","choices":[]}"#.to_string(),
            None,
        )
    } else if let Some(u) = rest.strip_prefix("header/") {
        ("text/plain", "ok".to_string(), Some(n(u)))
    } else {
        return None;
    };
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", content_type);
    if let Some(u) = units {
        builder = builder.header("x-units", u.to_string());
    }
    Some(builder.body(Full::new(Bytes::from(body))).unwrap())
}

fn echo(req: &Request<Incoming>, path: &str) -> String {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in req.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(value);
    }
    serde_json::json!({
        "method": req.method().as_str(),
        "path": path,
        "headers": headers,
    })
    .to_string()
}

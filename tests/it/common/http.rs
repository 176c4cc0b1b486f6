//! HTTP helpers: a plain client, fully read answers, problem bodies, structured header lists,
//! and a raw-socket request for headers a client library might rewrite.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Client, Method};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// HTTP/1.1 only, never follows redirects, 10 s per call.
pub fn client() -> Client {
    tollgate::install_crypto_provider();
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .http1_only()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A response read to the end.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

// === impl Answer ===

impl Answer {
    /// One header as text; panics if it is repeated, because these headers must not be.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut values = self.headers.get_all(name).iter();
        let first = values.next()?;
        assert!(
            values.next().is_none(),
            "header {name} is repeated: {:?}",
            self.headers
        );
        Some(first.to_str().unwrap())
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }

    /// The body as an RFC 9457 problem, after checking its Content-Type and `status` member.
    pub fn problem(&self, status: u16) -> Value {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.body
        );
        let content_type = self.header("content-type").unwrap_or_default();
        assert!(
            content_type.starts_with("application/problem+json"),
            "Content-Type is {content_type:?}, not application/problem+json"
        );
        let body = self.json();
        assert_eq!(body["status"], status, "problem body: {body}");
        body
    }

    /// The upstream's echo of the request it received (see `common::upstream`).
    pub fn echoed_headers(&self) -> BTreeMap<String, Vec<String>> {
        assert_eq!(
            self.status, 200,
            "expected the upstream's echo; body: {}",
            self.body
        );
        serde_json::from_value(self.json()["headers"].clone()).unwrap()
    }
}

/// Sends a request with `Authorization: Bearer <key>` (when a key is given) and reads it all.
pub async fn send(client: &Client, method: Method, url: &str, key: Option<&str>) -> Answer {
    let mut request = client.request(method, url);
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    read(
        request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}")),
    )
    .await
}

/// A call to `gw`'s admin listener with `token` (when given) and a JSON `body` (when given).
pub async fn admin(
    client: &Client,
    gw: &super::Gateway,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Answer {
    let mut req = client.request(method, gw.admin_url(path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    read(req.send().await.unwrap()).await
}

/// `GET` with an optional bearer key.
pub async fn get(client: &Client, url: &str, key: Option<&str>) -> Answer {
    send(client, Method::GET, url, key).await
}

/// Reads a reqwest response to the end.
pub async fn read(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await.unwrap();
    Answer {
        status,
        headers,
        body,
    }
}

/// One member of a structured-field list such as `"requests";r=741;t=345600`.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub name: String,
    pub params: BTreeMap<String, String>,
}

// === impl Member ===

impl Member {
    /// A parameter parsed as an integer.
    pub fn int(&self, param: &str) -> i64 {
        let value = self
            .params
            .get(param)
            .unwrap_or_else(|| panic!("no {param} in {self:?}"));
        value
            .parse()
            .unwrap_or_else(|_| panic!("{param} is not an integer in {self:?}"))
    }
}

/// Parses a list like `"burst";q=20;w=1, "requests";q=1000;w=2592000` (quotes respected).
pub fn sf_list(value: &str) -> Vec<Member> {
    split_outside_quotes(value, ',')
        .into_iter()
        .map(|item| {
            let mut parts = split_outside_quotes(&item, ';').into_iter();
            let name = parts.next().unwrap_or_default();
            let name = unquote(name.trim());
            let params = parts
                .map(|p| match p.split_once('=') {
                    Some((k, v)) => (k.trim().to_owned(), unquote(v.trim())),
                    None => (p.trim().to_owned(), "?1".to_owned()),
                })
                .collect();
            Member { name, params }
        })
        .collect()
}

/// The member named `name` of a structured-field list header; panics if absent.
pub fn member(answer: &Answer, header: &str, name: &str) -> Member {
    let value = answer
        .header(header)
        .unwrap_or_else(|| panic!("no {header} header; headers: {:?}", answer.headers));
    sf_list(value)
        .into_iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no \"{name}\" member in {header}: {value}"))
}

fn split_outside_quotes(value: &str, separator: char) -> Vec<String> {
    let (mut parts, mut current, mut quoted) = (Vec::new(), String::new(), false);
    for c in value.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            c if c == separator && !quoted => parts.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    parts.push(current);
    parts
        .into_iter()
        .map(|p| p.trim().to_owned())
        .filter(|p| !p.is_empty())
        .collect()
}

fn unquote(value: &str) -> String {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
        .to_owned()
}

/// A response read off a raw socket: lowercase header names, in order, repeats kept.
#[derive(Debug)]
pub struct RawAnswer {
    /// The status line and header lines as they came, CRLF-separated.
    pub head: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Writes `head` (request line and headers, CRLF-separated, without the final blank line) to
/// `addr` exactly as given, with `Connection: close` semantics expected, and reads until EOF.
pub async fn raw(addr: &str, head: &str) -> RawAnswer {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{}\r\n\r\n",
        head.trim_end().replace('\n', "\r\n").replace("\r\r", "\r")
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes))
        .await
        .expect("the gateway did not close the connection within 10 s")
        .unwrap();
    parse_raw(&bytes)
}

fn parse_raw(bytes: &[u8]) -> RawAnswer {
    let split = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no end of headers");
    let head = String::from_utf8_lossy(&bytes[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = bytes[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    RawAnswer {
        head,
        status,
        headers,
        body,
    }
}

fn dechunk(mut bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = bytes.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = String::from_utf8_lossy(&bytes[..end]);
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&bytes[end + 2..end + 2 + size]);
        bytes = &bytes[end + 2 + size + 2..];
    }
}

//! Token issuers for the JWT tests: key pairs made and tokens signed by the `openssl` command
//! line tool (an implementation independent of the crate that verifies them), and a real HTTP
//! server publishing the JWKS.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use sha2::Sha256;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Runs `openssl` with `args`, feeding `input`; fails the test with what to install when the
/// tool is missing.
fn openssl(args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("the JWT tests sign tokens with the `openssl` tool ({e}); install it: apt-get install -y openssl")
        });
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The kind of a signing key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// RSA 2048, for RS256.
    Rsa,
    /// P-256, for ES256.
    Ec,
}

/// A private key on disk, its public half, and its JWK.
pub struct KeyPair {
    _dir: TempDir,
    pub kind: Kind,
    pub kid: String,
    private: PathBuf,
    /// The public key in PEM (SubjectPublicKeyInfo).
    pub public_pem: String,
    /// The public JWK, with `kid`, `use: sig` and `alg`.
    pub jwk: Value,
}

impl KeyPair {
    /// A fresh key pair made by `openssl`.
    pub fn generate(kind: Kind, kid: &str) -> KeyPair {
        let dir = tempfile::Builder::new()
            .prefix("tg-jwk-")
            .tempdir()
            .unwrap();
        let private = dir.path().join("key.pem");
        let p = private.to_str().unwrap();
        match kind {
            Kind::Rsa => openssl(
                &[
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                    "-out",
                    p,
                ],
                b"",
            ),
            Kind::Ec => openssl(
                &[
                    "genpkey",
                    "-algorithm",
                    "EC",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-out",
                    p,
                ],
                b"",
            ),
        };
        let public_pem = String::from_utf8(openssl(&["pkey", "-in", p, "-pubout"], b"")).unwrap();
        let jwk = match kind {
            Kind::Rsa => {
                let out = String::from_utf8(openssl(&["rsa", "-in", p, "-noout", "-modulus"], b""))
                    .unwrap();
                let n = hex::decode(out.trim().trim_start_matches("Modulus=")).unwrap();
                json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                       "n": B64.encode(n), "e": "AQAB"})
            }
            Kind::Ec => {
                let der = openssl(&["pkey", "-in", p, "-pubout", "-outform", "DER"], b"");
                // The uncompressed point 04 || x || y ends the SubjectPublicKeyInfo.
                let point = &der[der.len() - 65..];
                assert_eq!(point[0], 4);
                json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                       "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..])})
            }
        };
        KeyPair {
            _dir: dir,
            kind,
            kid: kid.to_owned(),
            private,
            public_pem,
            jwk,
        }
    }

    /// The private key file.
    pub fn private_path(&self) -> &Path {
        &self.private
    }

    /// The JOSE algorithm this key signs with.
    pub fn alg(&self) -> &'static str {
        match self.kind {
            Kind::Rsa => "RS256",
            Kind::Ec => "ES256",
        }
    }

    /// A token with this key's `alg` and `kid` over `claims`.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with_header(
            &json!({"alg": self.alg(), "typ": "JWT", "kid": self.kid}),
            claims,
        )
    }

    /// A token with exactly `header` over `claims`, signed by this key with SHA-256.
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> String {
        let input = signing_input(header, claims);
        let sig = openssl(
            &["dgst", "-sha256", "-sign", self.private.to_str().unwrap()],
            input.as_bytes(),
        );
        let sig = match self.kind {
            Kind::Rsa => sig,
            Kind::Ec => der_to_raw_p256(&sig),
        };
        format!("{input}.{}", B64.encode(sig))
    }
}

/// `base64url(header).base64url(claims)`.
pub fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    )
}

/// An HS256 token over exactly `header` and `claims`, keyed with `secret`.
pub fn hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
    let input = signing_input(header, claims);
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", B64.encode(mac.finalize().into_bytes()))
}

/// An ECDSA signature as JWS wants it (r || s, 32 bytes each) from openssl's DER.
fn der_to_raw_p256(der: &[u8]) -> Vec<u8> {
    // SEQUENCE { INTEGER r, INTEGER s }, each possibly with a leading zero byte.
    assert_eq!(der[0], 0x30);
    let mut i = 2;
    let mut out = Vec::with_capacity(64);
    for _ in 0..2 {
        assert_eq!(der[i], 0x02);
        let len = der[i + 1] as usize;
        let int = &der[i + 2..i + 2 + len];
        let int = &int[int.len().saturating_sub(32)..];
        out.extend(std::iter::repeat_n(0, 32 - int.len()));
        out.extend_from_slice(int);
        i += 2 + len;
    }
    out
}

/// A JWKS document holding `keys`.
pub fn jwks(keys: &[&KeyPair]) -> String {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()}).to_string()
}

/// A real HTTP server publishing a JWKS at every path, whose document and status the test
/// changes while it runs, and which counts the fetches it served.
pub struct JwksServer {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

struct State {
    doc: Mutex<String>,
    cache_control: Mutex<String>,
    /// 0: answer 200 with the document; else answer this status.
    status: AtomicU16,
    hits: AtomicUsize,
}

impl JwksServer {
    /// Serves `doc` on a free port.
    pub async fn start(doc: String) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            doc: Mutex::new(doc),
            cache_control: Mutex::new("max-age=3600".into()),
            status: AtomicU16::new(0),
            hits: AtomicUsize::new(0),
        });
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |_req: Request<Incoming>| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.answer()) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        JwksServer { addr, state, task }
    }

    /// The JWKS URL.
    pub fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.addr)
    }

    /// Publishes another document from now on.
    pub fn publish(&self, doc: String) {
        *self.state.doc.lock().unwrap() = doc;
    }

    /// The `Cache-Control` header of later answers.
    pub fn set_cache_control(&self, value: &str) {
        *self.state.cache_control.lock().unwrap() = value.to_owned();
    }

    /// Answers `status` instead of the document (0 restores the document).
    pub fn fail_with(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    /// Fetches served so far (failed ones included).
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }
}

impl State {
    fn answer(&self) -> Response<Full<Bytes>> {
        self.hits.fetch_add(1, Ordering::SeqCst);
        let status = self.status.load(Ordering::SeqCst);
        if status != 0 {
            return Response::builder()
                .status(status)
                .body(Full::new(Bytes::from_static(b"issuer down")))
                .unwrap();
        }
        Response::builder()
            .header("content-type", "application/json")
            .header("cache-control", self.cache_control.lock().unwrap().clone())
            .body(Full::new(Bytes::from(self.doc.lock().unwrap().clone())))
            .unwrap()
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

//! Step 2 for signed-in users: bearer JWTs from the issuers in `auth.jwt`.
//!
//! Verification is done in this order, and the order is the security argument:
//!
//! 1. the token's shape (three base64url parts of bounded size, JSON header and claims);
//! 2. the header's `crit`: any critical extension is refused, since none is implemented;
//! 3. the issuer, from the *unverified* `iss`: it only selects which configured keys and pinned
//!    algorithms to try, and an unknown `iss` is refused before any key is touched;
//! 4. the header's `alg` must be one of the issuer's pinned algorithms (exact, case-sensitive:
//!    `none`, `None`, or `HS256` against an RSA issuer all stop here);
//! 5. the key: the issuer's own (from its JWKS, PEM file or secret), chosen by `kid`. The
//!    `jku`, `x5u`, `jwk` and `x5c` headers are never read, so a token cannot bring its own key;
//! 6. the signature, with that key and the pinned algorithm;
//! 7. only then the claims (`exp`, `nbf`, `aud`, tenant, plan), so an unsigned token learns
//!    nothing about which claims would have passed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::identity::AuthFailure;
use crate::config::{JwtIssuer, JwtKeys};

/// Longest token accepted; real ones are well under 4 KiB.
const MAX_TOKEN: usize = 16 * 1024;
/// An unknown `kid` refetches the issuer's JWKS at most this often.
pub const UNKNOWN_KID_REFETCH: Duration = Duration::from_secs(30);
/// Time allowed for one JWKS fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document accepted.
const MAX_JWKS: usize = 1024 * 1024;

/// Whether a bearer credential is shaped like a JWT (two dots) rather than an API key (none).
pub fn looks_like_jwt(credential: &str) -> bool {
    credential.bytes().filter(|b| *b == b'.').count() == 2
}

/// What a verified token says about its caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// Index of the issuer in `auth.jwt`.
    pub issuer: usize,
    /// The tenant claim.
    pub tenant: String,
    /// The plan claim, checked against the configured plans by the caller of `verify`.
    pub plan: Option<String>,
    /// The user claim.
    pub user: Option<String>,
}

/// The configured issuers and their keys.
pub struct JwtAuth {
    issuers: Vec<Issuer>,
    verified: std::sync::Mutex<HashMap<[u8; 32], Verified>>,
}

/// Most tokens remembered as verified. Past it, expired ones are dropped, then all.
const VERIFIED_MAX: usize = 10_000;

/// A token that passed every check: what it says, and what must be checked again on reuse.
///
/// Clients send the same token for many calls (for its whole lifetime, minutes to hours), and
/// a signature check costs 30–80 µs (RS256/ES256), more than the rest of a call. So a token
/// that verified is remembered by the SHA-256 of its full text and, on reuse, only its time
/// claims are checked again. The entry is void when the issuer's key set has changed since
/// (`generation`), so a key removed by rotation stops its tokens on the next call.
#[derive(Clone)]
struct Verified {
    claims: Claims,
    times: Times,
    generation: u64,
}

/// A token's time claims, in Unix seconds, and the issuer's leeway.
#[derive(Clone, Copy)]
struct Times {
    exp: f64,
    nbf: Option<f64>,
    leeway: f64,
}

impl Times {
    fn check(&self, now: i64) -> Result<(), AuthFailure> {
        let now = now as f64;
        if now > self.exp + self.leeway {
            return Err(AuthFailure::Expired);
        }
        if self.nbf.is_some_and(|nbf| now + self.leeway < nbf) {
            return Err(AuthFailure::NotYetValid);
        }
        Ok(())
    }
}

struct Issuer {
    config: JwtIssuer,
    keys: IssuerKeys,
}

enum IssuerKeys {
    Fixed(DecodingKey),
    Jwks(Arc<Jwks>),
}

impl JwtAuth {
    /// The issuers of `auth.jwt`, without fetching anything yet.
    pub fn new(issuers: &[JwtIssuer]) -> JwtAuth {
        JwtAuth {
            issuers: issuers
                .iter()
                .map(|c| Issuer {
                    keys: match &c.keys {
                        JwtKeys::Secret(k) | JwtKeys::PublicKey(k) => IssuerKeys::Fixed(k.clone()),
                        JwtKeys::Jwks { url } => IssuerKeys::Jwks(Arc::new(Jwks::new(
                            &c.issuer,
                            url,
                            c.jwks_min_refresh,
                            c.jwks_max_refresh,
                        ))),
                    },
                    config: c.clone(),
                })
                .collect(),
            verified: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// Whether any issuer is configured.
    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// The issuer config at `index` (from [`Claims::issuer`]).
    pub fn issuer(&self, index: usize) -> Option<&JwtIssuer> {
        self.issuers.get(index).map(|i| &i.config)
    }

    /// Every JWKS-backed key set, for the background refresher.
    pub fn key_sets(&self) -> Vec<Arc<Jwks>> {
        self.issuers
            .iter()
            .filter_map(|i| match &i.keys {
                IssuerKeys::Jwks(j) => Some(j.clone()),
                IssuerKeys::Fixed(_) => None,
            })
            .collect()
    }

    /// Verifies `token` at `now` (Unix seconds). May await one JWKS refetch when the token
    /// names a key id the cache lacks (at most one per issuer per [`UNKNOWN_KID_REFETCH`]).
    pub async fn verify(&self, token: &str, now: i64) -> Result<Claims, AuthFailure> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(hit) = self.remembered(&digest) {
            hit.times.check(now)?;
            return Ok(hit.claims);
        }
        let verified = self.verify_fully(token, now).await?;
        let claims = verified.claims.clone();
        self.remember(digest, verified, now);
        Ok(claims)
    }

    /// [`verify`](Self::verify) without the memory of verified tokens: what a token seen for
    /// the first time costs (benchmarks use it; the request path does not).
    pub async fn verify_uncached(&self, token: &str, now: i64) -> Result<Claims, AuthFailure> {
        self.verify_fully(token, now).await.map(|v| v.claims)
    }

    fn generation(&self, issuer: usize) -> u64 {
        match self.issuers.get(issuer).map(|i| &i.keys) {
            Some(IssuerKeys::Jwks(j)) => j.generation.load(Ordering::Acquire),
            _ => 0,
        }
    }

    fn remembered(&self, digest: &[u8; 32]) -> Option<Verified> {
        let hit = self.verified.lock().ok()?.get(digest).cloned()?;
        (hit.generation == self.generation(hit.claims.issuer)).then_some(hit)
    }

    fn remember(&self, digest: [u8; 32], verified: Verified, now: i64) {
        let Ok(mut map) = self.verified.lock() else {
            return;
        };
        if map.len() >= VERIFIED_MAX {
            map.retain(|_, v| v.times.check(now).is_ok());
            if map.len() >= VERIFIED_MAX {
                map.clear();
            }
        }
        map.insert(digest, verified);
    }

    /// Every check, signature included.
    async fn verify_fully(&self, token: &str, now: i64) -> Result<Verified, AuthFailure> {
        let parsed = Parsed::new(token)?;
        if parsed.header.contains_key("crit") {
            return Err(AuthFailure::CriticalHeader);
        }
        let iss = parsed.claims.get("iss").and_then(Value::as_str);
        let (index, issuer) = self
            .issuers
            .iter()
            .enumerate()
            .find(|(_, i)| Some(i.config.issuer.as_str()) == iss)
            .ok_or(AuthFailure::WrongIssuer)?;
        let alg_name = parsed.header.get("alg").and_then(Value::as_str);
        let alg = issuer
            .config
            .algorithms
            .iter()
            .copied()
            .find(|a| Some(alg_name_of(*a)) == alg_name)
            .ok_or_else(|| AuthFailure::AlgorithmNotAllowed {
                alg: printable(alg_name.unwrap_or("")),
            })?;
        let kid = match parsed.header.get("kid") {
            None => None,
            Some(Value::String(k)) => Some(k.as_str()),
            Some(_) => return Err(malformed("the `kid` header is not a string")),
        };
        // Read before the keys are: a key set swapped in meanwhile voids this entry.
        let generation = self.generation(index);
        let verified = match &issuer.keys {
            IssuerKeys::Fixed(key) => parsed.signed_by(key, alg),
            IssuerKeys::Jwks(jwks) => {
                let mut set = jwks.current();
                if set.is_empty() || kid.is_some_and(|k| !set.has(k)) {
                    jwks.refetch_for_unknown_kid().await;
                    // Another call's refetch may have brought the key while this one waited.
                    set = jwks.current();
                }
                if set.is_empty() {
                    return Err(AuthFailure::KeysUnavailable);
                }
                let candidates = set.candidates(kid, alg);
                if candidates.is_empty() {
                    return Err(AuthFailure::UnknownKeyId);
                }
                candidates.into_iter().any(|k| parsed.signed_by(k, alg))
            }
        };
        if !verified {
            return Err(AuthFailure::BadSignature);
        }
        let (times, tenant, plan, user) = check_claims(&issuer.config, &parsed.claims, now)?;
        Ok(Verified {
            claims: Claims {
                issuer: index,
                tenant,
                plan,
                user,
            },
            times,
            generation,
        })
    }
}

fn malformed(why: &'static str) -> AuthFailure {
    AuthFailure::MalformedToken { why }
}

/// Token algorithms by their JOSE names. `none` is not among them, in any casing.
pub const ALGORITHMS: &[(&str, Algorithm)] = &[
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("EdDSA", Algorithm::EdDSA),
    ("HS256", Algorithm::HS256),
    ("HS384", Algorithm::HS384),
    ("HS512", Algorithm::HS512),
];

/// The JOSE name of an algorithm.
pub fn alg_name_of(a: Algorithm) -> &'static str {
    ALGORITHMS
        .iter()
        .find(|(_, x)| *x == a)
        .map_or("", |(n, _)| n)
}

/// An attacker-chosen string made safe to echo in a problem detail: short and plain.
fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(16)
        .collect()
}

/// A token split into its parts, header and claims decoded but nothing verified.
struct Parsed<'t> {
    signing_input: &'t str,
    signature: &'t str,
    header: Map<String, Value>,
    claims: Map<String, Value>,
}

impl<'t> Parsed<'t> {
    fn new(token: &'t str) -> Result<Parsed<'t>, AuthFailure> {
        if token.len() > MAX_TOKEN {
            return Err(malformed("the token is too long"));
        }
        let (signing_input, signature) = token
            .rsplit_once('.')
            .ok_or(malformed("a JWT has three dot-separated parts"))?;
        let (header, claims) = signing_input
            .split_once('.')
            .ok_or(malformed("a JWT has three dot-separated parts"))?;
        if signature.is_empty() {
            return Err(malformed("the signature is missing"));
        }
        Ok(Parsed {
            signing_input,
            signature,
            header: json_part(header, "the header is not base64url-encoded JSON")?,
            claims: json_part(claims, "the claims are not base64url-encoded JSON")?,
        })
    }

    fn signed_by(&self, key: &DecodingKey, alg: Algorithm) -> bool {
        // A key of another family (an RSA key offered for HS256) never verifies.
        key.family() == alg.family()
            && jsonwebtoken::crypto::verify(self.signature, self.signing_input.as_bytes(), key, alg)
                .unwrap_or(false)
    }
}

fn json_part(part: &str, why: &'static str) -> Result<Map<String, Value>, AuthFailure> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| malformed(why))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(malformed(why)),
    }
}

type Checked = (Times, String, Option<String>, Option<String>);

/// `exp` (required), `nbf`, `aud`, then the tenant, plan and user claims.
fn check_claims(
    issuer: &JwtIssuer,
    claims: &Map<String, Value>,
    now: i64,
) -> Result<Checked, AuthFailure> {
    let exp = match claims.get("exp") {
        None => return Err(malformed("the `exp` claim is missing")),
        Some(v) => numeric_date(v).ok_or(malformed("the `exp` claim is not a NumericDate"))?,
    };
    let nbf = match claims.get("nbf") {
        None => None,
        Some(v) => Some(numeric_date(v).ok_or(malformed("the `nbf` claim is not a NumericDate"))?),
    };
    let times = Times {
        exp,
        nbf,
        leeway: issuer.leeway.as_secs() as f64,
    };
    times.check(now)?;
    let audience_ok = match claims.get("aud") {
        Some(Value::String(a)) => issuer.audiences.contains(a),
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(Value::as_str)
            .any(|a| issuer.audiences.iter().any(|ours| ours == a)),
        _ => false,
    };
    if !audience_ok {
        return Err(AuthFailure::WrongAudience);
    }
    let tenant = match claims.get(&issuer.tenant_claim) {
        Some(Value::String(t)) if crate::config::valid_tenant_id(t) => t.clone(),
        Some(Value::String(_)) => return Err(AuthFailure::BadTenantClaim),
        _ => {
            return Err(AuthFailure::MissingClaim {
                claim: issuer.tenant_claim.clone(),
            })
        }
    };
    let plan = match issuer.plan_claim.as_ref().and_then(|c| claims.get(c)) {
        None | Some(Value::Null) => None,
        Some(Value::String(p)) => Some(p.clone()),
        Some(_) => return Err(AuthFailure::UnknownPlanClaim),
    };
    let user = issuer
        .user_claim
        .as_ref()
        .and_then(|c| claims.get(c))
        .and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
    Ok((times, tenant, plan, user))
}

/// RFC 7519 NumericDate: a JSON number of seconds (a string is not one).
fn numeric_date(v: &Value) -> Option<f64> {
    v.as_f64().filter(|f| f.is_finite())
}

/// One issuer's JWKS: the last good key set, refreshed in the background and on unknown `kid`s.
pub struct Jwks {
    issuer: String,
    url: String,
    min_refresh: Duration,
    max_refresh: Duration,
    client: Option<reqwest::Client>,
    keys: ArcSwap<KeySet>,
    /// Bumped each time a key set is swapped in; voids remembered verifications.
    generation: AtomicU64,
    /// When the background refresher fetches next (`None`: at once).
    next_refresh: std::sync::Mutex<Option<Instant>>,
    /// When an unknown `kid` last caused a refetch. Held across that fetch, so a burst of
    /// unknown kids waits for one fetch instead of starting many.
    last_kid_refetch: tokio::sync::Mutex<Option<Instant>>,
}

/// Verification keys by `kid`, plus those published without one.
#[derive(Default)]
pub struct KeySet {
    by_kid: HashMap<String, Vec<PublishedKey>>,
    without_kid: Vec<PublishedKey>,
}

struct PublishedKey {
    key: DecodingKey,
    /// The JWK's `alg`, when it pins one.
    alg: Option<Algorithm>,
}

impl KeySet {
    fn has(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }

    fn is_empty(&self) -> bool {
        self.by_kid.is_empty() && self.without_kid.is_empty()
    }

    /// The keys a token with `kid` and `alg` may be signed with: those of its kid, or, for a
    /// token without one, every key of the algorithm's family.
    fn candidates(&self, kid: Option<&str>, alg: Algorithm) -> Vec<&DecodingKey> {
        let fits =
            |k: &&PublishedKey| k.key.family() == alg.family() && k.alg.is_none_or(|a| a == alg);
        match kid {
            Some(kid) => self
                .by_kid
                .get(kid)
                .into_iter()
                .flatten()
                .filter(fits)
                .map(|k| &k.key)
                .collect(),
            None => self
                .by_kid
                .values()
                .flatten()
                .chain(&self.without_kid)
                .filter(fits)
                .map(|k| &k.key)
                .collect(),
        }
    }

    /// Parses a JWKS document, skipping keys that are not for signatures or not understood.
    pub fn parse(body: &[u8]) -> Result<KeySet, JwksError> {
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<Value>,
        }
        let doc: Doc = serde_json::from_slice(body).map_err(|_| JwksError::NotJwks)?;
        let mut set = KeySet::default();
        for v in doc.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(v) else {
                continue;
            };
            if matches!(&jwk.common.public_key_use, Some(u) if *u != jsonwebtoken::jwk::PublicKeyUse::Signature)
            {
                continue;
            }
            let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok());
            let published = PublishedKey { key, alg };
            match jwk.common.key_id {
                Some(kid) => set.by_kid.entry(kid).or_default().push(published),
                None => set.without_kid.push(published),
            }
        }
        if set.is_empty() {
            return Err(JwksError::NoKeys);
        }
        Ok(set)
    }
}

/// Why a JWKS fetch failed; the last good key set keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// No HTTP client could be built.
    #[error("no HTTP client is available")]
    NoClient,
    /// Network failure or timeout.
    #[error("fetching failed: {0}")]
    Fetch(String),
    /// A non-2xx status.
    #[error("the server answered {0}")]
    Status(u16),
    /// Over [`MAX_JWKS`].
    #[error("the document is larger than 1 MiB")]
    TooLarge,
    /// Not a JWKS document.
    #[error("the document is not a JWKS (`{{\"keys\": [...]}}`)")]
    NotJwks,
    /// A JWKS with no usable signing key.
    #[error("the document holds no usable signing key")]
    NoKeys,
}

impl Jwks {
    fn new(issuer: &str, url: &str, min_refresh: Duration, max_refresh: Duration) -> Jwks {
        Jwks {
            issuer: issuer.to_string(),
            url: url.to_string(),
            min_refresh,
            max_refresh,
            client: http_client(),
            keys: ArcSwap::from_pointee(KeySet::default()),
            generation: AtomicU64::new(0),
            next_refresh: std::sync::Mutex::new(None),
            last_kid_refetch: tokio::sync::Mutex::new(None),
        }
    }

    /// The issuer this key set belongs to.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    fn current(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    /// Fetches the key set and, when it is good, swaps it in. Returns how long to keep it:
    /// the response's `max-age` clamped to `jwks_refresh`, or the ceiling without one.
    pub async fn fetch(&self) -> Result<Duration, JwksError> {
        let client = self.client.as_ref().ok_or(JwksError::NoClient)?;
        let fetch = async {
            let mut resp = client
                .get(&self.url)
                .header("accept", "application/json")
                .send()
                .await
                .map_err(|e| JwksError::Fetch(e.without_url().to_string()))?;
            if !resp.status().is_success() {
                return Err(JwksError::Status(resp.status().as_u16()));
            }
            let ttl = resp
                .headers()
                .get("cache-control")
                .and_then(|v| v.to_str().ok())
                .and_then(max_age)
                .unwrap_or(self.max_refresh)
                .clamp(self.min_refresh, self.max_refresh);
            let mut body = Vec::new();
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| JwksError::Fetch(e.without_url().to_string()))?
            {
                if body.len() + chunk.len() > MAX_JWKS {
                    return Err(JwksError::TooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            Ok((KeySet::parse(&body)?, ttl))
        };
        let (set, ttl) = tokio::time::timeout(FETCH_TIMEOUT, fetch)
            .await
            .map_err(|_| JwksError::Fetch("timed out".into()))??;
        self.keys.store(Arc::new(set));
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(ttl)
    }

    /// One refetch for a token whose `kid` the cache lacks, unless one ran within
    /// [`UNKNOWN_KID_REFETCH`]. Callers arriving during a refetch wait for it and then look
    /// again.
    async fn refetch_for_unknown_kid(&self) {
        let mut last = self.last_kid_refetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < UNKNOWN_KID_REFETCH) {
            return;
        }
        *last = Some(Instant::now());
        if let Err(e) = self.fetch().await {
            tracing::warn!(issuer = %self.issuer, error = %e, "Refetching the JWKS for an unknown key id failed; the last good key set stays.");
        }
    }

    /// Whether the key set's lifetime has run out.
    pub fn is_due(&self) -> bool {
        self.next_refresh
            .lock()
            .map(|n| n.is_none_or(|t| Instant::now() >= t))
            .unwrap_or(true)
    }

    /// Fetches the key set when its lifetime has run out (at once, the first time): the last
    /// answer's `max-age` clamped to `jwks_refresh`; after a failure, `jwks_refresh.min`.
    pub async fn refresh_if_due(&self) {
        if !self.is_due() {
            return;
        }
        let wait = match self.fetch().await {
            Ok(ttl) => {
                tracing::debug!(issuer = %self.issuer, ttl_s = ttl.as_secs(), "JWKS refreshed.");
                ttl
            }
            Err(e) => {
                tracing::warn!(issuer = %self.issuer, error = %e, "Fetching the JWKS failed; the last good key set stays.");
                self.min_refresh
            }
        };
        if let Ok(mut next) = self.next_refresh.lock() {
            *next = Some(Instant::now() + wait);
        }
    }
}

/// `max-age` of a Cache-Control value; `no-cache`/`no-store` read as zero (the floor applies).
fn max_age(cache_control: &str) -> Option<Duration> {
    let mut out = None;
    for directive in cache_control.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return Some(Duration::ZERO);
        }
        if let Some(v) = lower.strip_prefix("max-age=") {
            out = v.trim_matches('"').parse().ok().map(Duration::from_secs);
        }
    }
    out
}

/// An HTTP client for JWKS fetches: TLS by rustls on aws-lc-rs (the crypto jsonwebtoken uses),
/// with the webpki roots, no redirects to other schemes, no proxy surprises.
fn http_client() -> Option<reqwest::Client> {
    let tls = crate::tls::client_config(&[]).ok()?;
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::limited(3))
        .connect_timeout(FETCH_TIMEOUT)
        .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};
    use serde_json::json;

    const SECRET: &[u8] = b"a-test-secret-of-at-least-32-bytes!!";
    const NOW: i64 = 1_800_000_000;

    fn auth() -> JwtAuth {
        JwtAuth::new(&[JwtIssuer {
            issuer: "https://idp/".into(),
            audiences: vec!["api".into()],
            algorithms: vec![Algorithm::HS256],
            keys: JwtKeys::Secret(DecodingKey::from_secret(SECRET)),
            tenant_claim: "org".into(),
            plan_claim: Some("plan".into()),
            default_plan: None,
            user_claim: Some("sub".into()),
            leeway: Duration::from_secs(30),
            jwks_min_refresh: Duration::from_secs(60),
            jwks_max_refresh: Duration::from_secs(3600),
        }])
    }

    /// An HS256 token over `claims`, signed without jsonwebtoken.
    fn token(claims: Value) -> String {
        let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let input = format!("{}.{}", b64(json!({"alg": "HS256"})), b64(claims));
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET).unwrap();
        mac.update(input.as_bytes());
        let sig =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{input}.{sig}")
    }

    fn claims(exp: i64, nbf: Option<i64>) -> Value {
        let mut c =
            json!({"iss": "https://idp/", "aud": "api", "org": "acme", "sub": "u1", "exp": exp});
        if let Some(nbf) = nbf {
            c["nbf"] = json!(nbf);
        }
        c
    }

    #[tokio::test]
    async fn leeway_boundaries_are_exact_to_the_second() {
        let auth = auth();
        let at = |c| {
            let auth = &auth;
            async move { auth.verify(&token(c), NOW).await }
        };
        // exp: valid through exp + leeway, refused one second later.
        assert!(at(claims(NOW - 30, None)).await.is_ok());
        assert_eq!(at(claims(NOW - 31, None)).await, Err(AuthFailure::Expired));
        // nbf: valid from nbf - leeway, refused one second earlier.
        assert!(at(claims(NOW + 60, Some(NOW + 30))).await.is_ok());
        assert_eq!(
            at(claims(NOW + 60, Some(NOW + 31))).await,
            Err(AuthFailure::NotYetValid)
        );
    }

    #[tokio::test]
    async fn a_remembered_token_still_expires_on_time() {
        let auth = auth();
        let t = token(claims(NOW - 30, Some(NOW + 30)));
        assert!(auth.verify(&t, NOW).await.is_ok(), "verified fully");
        assert!(auth.verify(&t, NOW).await.is_ok(), "remembered");
        assert_eq!(auth.verify(&t, NOW + 1).await, Err(AuthFailure::Expired));
        assert_eq!(
            auth.verify(&t, NOW - 1).await,
            Err(AuthFailure::NotYetValid)
        );
    }

    #[tokio::test]
    async fn a_verified_token_yields_tenant_plan_and_user() {
        let mut c = claims(NOW + 60, None);
        c["plan"] = json!("pro");
        let got = auth().verify(&token(c), NOW).await.unwrap();
        assert_eq!(
            got,
            Claims {
                issuer: 0,
                tenant: "acme".into(),
                plan: Some("pro".into()),
                user: Some("u1".into())
            }
        );
    }

    #[test]
    fn jwks_documents_skip_keys_they_cannot_use() {
        let doc = json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "enc", "use": "enc"},
            {"kty": "XYZ", "kid": "odd"},
            {"kty": "EC", "crv": "P-256", "kid": "ec",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]});
        let set = KeySet::parse(doc.to_string().as_bytes()).unwrap();
        assert!(set.has("ec") && !set.has("enc") && !set.has("odd"));
        assert!(matches!(
            KeySet::parse(br#"{"keys": []}"#),
            Err(JwksError::NoKeys)
        ));
        assert!(matches!(KeySet::parse(b"<html>"), Err(JwksError::NotJwks)));
    }

    #[test]
    fn max_age_is_read_and_no_cache_means_zero() {
        assert_eq!(
            max_age("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
    }

    #[test]
    fn only_two_dots_look_like_a_jwt() {
        assert!(looks_like_jwt("a.b.c"));
        assert!(!looks_like_jwt("tg_live_abc"));
        assert!(!looks_like_jwt("a.b.c.d"));
    }
}

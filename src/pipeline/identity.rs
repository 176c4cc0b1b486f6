//! Step 2: who is calling. API keys now; JWT and anonymous callers join here later.

use std::collections::HashMap;
use std::sync::Arc;

use http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use std::net::IpAddr;

use hmac::{Hmac, Mac};

use super::client_ip::client_ip;
use crate::config::{Anonymous, Cidr, Tenant};
use crate::keys;

/// Issued keys by the SHA-256 of the key.
pub type KeyIndex = HashMap<[u8; 32], KeyEntry, DigestHash>;

/// Hashes a SHA-256 digest by folding its four 64-bit words together. The default SipHash
/// guards a map against keys an attacker picks to collide; a digest's bytes are already
/// uniform, and choosing keys whose digests collide in 64 bits is out of reach, so the digest
/// can be its own hash (one look-up per API-key call, no SipHash rounds).
#[derive(Debug, Clone, Copy, Default)]
pub struct DigestHash;

impl std::hash::BuildHasher for DigestHash {
    type Hasher = DigestHasher;
    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(0)
    }
}

/// See [`DigestHash`].
#[derive(Debug, Default)]
pub struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as its length (ignored below), then its bytes.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }
    fn write_usize(&mut self, _length: usize) {}
}

/// One issued key.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    /// Whose key it is.
    pub tenant: Arc<Tenant>,
    /// The key's id (shared with every call made with the key: no copy per call).
    pub id: Arc<str>,
    /// SHA-256 of the key.
    pub sha256: [u8; 32],
}

/// Compares two digests in constant time, eight bytes at a time: `subtle` over the bytes takes
/// a fenced step per byte, which on every keyed call cost about as much as hashing the key.
fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    fn words(d: &[u8; 32]) -> [u64; 4] {
        let mut w = [0u64; 4];
        for (w, c) in w.iter_mut().zip(d.as_chunks::<8>().0) {
            *w = u64::from_ne_bytes(*c);
        }
        w
    }
    bool::from(words(a)[..].ct_eq(&words(b)[..]))
}

/// An identified caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The tenant the call is billed to.
    pub tenant: Arc<Tenant>,
    /// How they proved it.
    pub identity: IdentityKind,
    /// The id of the key used (never the key).
    pub key_id: Option<Arc<str>>,
    /// The end user inside the tenant, when the credential names one (a JWT's `user_claim`).
    pub user: Option<String>,
    /// The visitor's client-side anonymous id (`onboarding.anonymous_id_header`), when the call
    /// sent a well-formed one and onboarding is configured.
    pub client_anonymous_id: Option<String>,
}

impl Caller {
    /// The `anonymous_id` of events: the client-side anonymous id the call carried, else, for
    /// an anonymous caller, the keyed hash the anonymous tier counts its client IP under (never
    /// the IP itself). An identified caller that sent one has both ids in its events.
    pub fn anonymous_id(&self) -> Option<&str> {
        self.client_anonymous_id.as_deref().or_else(|| {
            (self.identity == IdentityKind::Anonymous).then_some(self.tenant.name.as_str())
        })
    }
}

/// Longest client-side anonymous id taken; analytics SDKs send UUIDs (36 characters).
pub const ANONYMOUS_ID_MAX: usize = 128;

/// The client-side anonymous id in `header`: 1–[`ANONYMOUS_ID_MAX`] visible ASCII characters,
/// surrounding quotes and spaces ignored. Anything else is not an id and is ignored (it is a
/// hint for analytics, not a credential, so a malformed one never refuses a call).
pub fn client_anonymous_id(headers: &HeaderMap, header: &HeaderName) -> Option<String> {
    let value = headers.get(header)?.to_str().ok()?.trim().trim_matches('"');
    let ok = !value.is_empty()
        && value.len() <= ANONYMOUS_ID_MAX
        && value.bytes().all(|b| b.is_ascii_graphic());
    ok.then(|| value.to_string())
}

/// The anonymous tier: callers with no credentials at all, each client IP its own tenant.
///
/// The tenant id is `anon-` and a keyed hash (HMAC-SHA-256 with `auth.anonymous.secret`) of the
/// client IP: stable, the same on every instance that shares the secret, and not the IP itself.
/// (A plain hash would not do: the IPv4 space is small enough to reverse it by trying them all.)
pub struct AnonymousTier {
    plan: String,
    trusted: Vec<Cidr>,
    mac: Hmac<Sha256>,
}

impl AnonymousTier {
    /// The tier configured in `auth.anonymous`.
    pub fn new(config: &Anonymous) -> Option<AnonymousTier> {
        let mac = Hmac::<Sha256>::new_from_slice(config.secret.as_bytes()).ok()?;
        Some(AnonymousTier {
            plan: config.plan.clone(),
            trusted: config.trusted_proxies.clone(),
            mac,
        })
    }

    /// The caller behind a call without credentials from `peer`.
    pub fn caller(&self, peer: IpAddr, headers: &HeaderMap) -> Caller {
        let ip = client_ip(peer, headers, &self.trusted);
        let mut mac = self.mac.clone();
        match ip {
            IpAddr::V4(v4) => mac.update(&v4.octets()),
            IpAddr::V6(v6) => mac.update(&v6.octets()),
        }
        let digest = mac.finalize().into_bytes();
        let id = format!("anon-{}", hex::encode(&digest[..12]));
        Caller {
            tenant: Arc::new(Tenant::new(id, self.plan.clone(), None, Vec::new())),
            identity: IdentityKind::Anonymous,
            key_id: None,
            user: None,
            client_anonymous_id: None,
        }
    }
}

/// How a caller was identified (`identity` in events).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityKind {
    /// An API key.
    ApiKey,
    /// A signed JWT from a configured issuer.
    Jwt,
    /// No credentials; counted per client IP.
    Anonymous,
}

impl IdentityKind {
    /// The `identity` field of events.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::ApiKey => "api_key",
            IdentityKind::Jwt => "jwt",
            IdentityKind::Anonymous => "anonymous",
        }
    }
}

/// Why a caller could not be identified. Messages never echo the credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    /// No credential at all.
    #[error("No credentials were sent. Send an API key as `Authorization: Bearer <key>` or `X-Api-Key: <key>`.")]
    Missing,
    /// A credential header that cannot hold a key.
    #[error("The {header} header is malformed: {why}.")]
    Malformed {
        /// Which header.
        header: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A key on file whose tenant has no plan this gateway knows.
    #[error(
        "The caller's tenant has no plan on this gateway. Ask the API's operator to assign one."
    )]
    NoPlan,
    /// A well-formed key nobody issued (or a revoked one).
    #[error(
        "The API key is not recognised. Check that it was copied whole and has not been revoked."
    )]
    UnknownKey,
    /// A bearer token that is not a well-formed JWT.
    #[error("The token is malformed: {why}.")]
    MalformedToken {
        /// What is wrong with it.
        why: &'static str,
    },
    /// A JWT whose header marks an extension as critical (`crit`); none is implemented.
    #[error(
        "The token marks header extensions as critical (`crit`), which this API does not support."
    )]
    CriticalHeader,
    /// `iss` is not a configured issuer.
    #[error("The token's issuer is not one this API accepts.")]
    WrongIssuer,
    /// `alg` is not pinned for the issuer.
    #[error(
        "The token is signed with algorithm `{alg}`, which its issuer is not configured to use."
    )]
    AlgorithmNotAllowed {
        /// The token's `alg`, reduced to plain characters.
        alg: String,
    },
    /// No key of the issuer has the token's `kid`.
    #[error("The token's key id is unknown: the issuer publishes no such key. Get a fresh token.")]
    UnknownKeyId,
    /// The issuer's keys could not be fetched yet.
    #[error("The issuer's signing keys are not available yet. Try again shortly.")]
    KeysUnavailable,
    /// The signature does not verify.
    #[error("The token's signature does not verify.")]
    BadSignature,
    /// `exp` is past (beyond the leeway).
    #[error("The token has expired. Get a fresh token.")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("The token is not valid yet (`nbf` is in the future). Check the issuer's clock.")]
    NotYetValid,
    /// `aud` does not name this API.
    #[error("The token's audience does not include this API.")]
    WrongAudience,
    /// The tenant claim is absent or not a string.
    #[error("The token has no `{claim}` claim naming the tenant.")]
    MissingClaim {
        /// The configured tenant claim.
        claim: String,
    },
    /// The tenant claim is not a usable tenant id.
    #[error(
        "The token's tenant claim is not a valid tenant id (letters, digits, `_-.@`, at most 128)."
    )]
    BadTenantClaim,
    /// The plan claim names no configured plan.
    #[error("The token's plan claim names no plan this API offers.")]
    UnknownPlanClaim,
}

/// What the config's keys say about a presented key.
pub enum KeyCheck {
    /// A key from the config.
    Found(Caller),
    /// Not in the config: look its digest up in the store.
    LookUp([u8; 32]),
}

/// API-key authentication against the static key index.
pub struct ApiKeys {
    headers: Vec<HeaderName>,
    index: KeyIndex,
}

impl ApiKeys {
    /// Looks for keys in `headers` (in order), checking them against `index`.
    pub fn new(headers: Vec<HeaderName>, index: KeyIndex) -> ApiKeys {
        ApiKeys { headers, index }
    }

    /// The headers keys are read from (`Authorization` among them by default).
    pub fn headers(&self) -> &[HeaderName] {
        &self.headers
    }

    /// Identifies the caller from the config's keys, without I/O. A key in the issued format
    /// whose checksum fails is refused here, before any look-up; any other key not in the config
    /// may be a runtime key, to be looked up in the store by its digest.
    pub fn authenticate(&self, req: &HeaderMap) -> Result<KeyCheck, AuthFailure> {
        let (key, header) = self.presented_key(req)?;
        if keys::shape(key) == keys::Shape::BadChecksum {
            return Err(AuthFailure::Malformed {
                header: header_title(header),
                why: "the key's checksum does not match: it was mistyped or cut short",
            });
        }
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        // The look-up is by digest, so its timing reveals nothing about any issued key; the
        // constant-time comparison afterwards keeps that true even if the index changes shape.
        match self.index.get(&digest) {
            Some(entry) if digests_equal(&digest, &entry.sha256) => Ok(KeyCheck::Found(Caller {
                tenant: entry.tenant.clone(),
                identity: IdentityKind::ApiKey,
                key_id: Some(entry.id.clone()),
                user: None,
                client_anonymous_id: None,
            })),
            _ => Ok(KeyCheck::LookUp(digest)),
        }
    }

    fn presented_key<'r>(
        &'r self,
        req: &'r HeaderMap,
    ) -> Result<(&'r str, &'r HeaderName), AuthFailure> {
        for name in &self.headers {
            let Some(value) = req.get(name) else { continue };
            let malformed = |why| AuthFailure::Malformed {
                header: header_title(name),
                why,
            };
            let value = value
                .to_str()
                .map_err(|_| malformed("it holds characters an API key never has"))?;
            let key = if name == http::header::AUTHORIZATION {
                let (scheme, token) = value
                    .split_once(' ')
                    .ok_or_else(|| malformed("expected `Bearer <key>`"))?;
                if !scheme.eq_ignore_ascii_case("bearer") {
                    return Err(malformed("expected the Bearer scheme"));
                }
                token.trim()
            } else {
                value.trim()
            };
            if key.is_empty() {
                return Err(malformed("the key is empty"));
            }
            return Ok((key, name));
        }
        Err(AuthFailure::Missing)
    }
}

/// The credential of an `Authorization: Bearer <credential>` header, if the call sent one.
pub fn bearer_token(req: &HeaderMap) -> Option<&str> {
    let value = req.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

fn header_title(name: &HeaderName) -> String {
    match name.as_str() {
        "authorization" => "Authorization".into(),
        "x-api-key" => "X-Api-Key".into(),
        other => other.to_string(),
    }
}

/// Builds the key index of the static tenants.
pub fn static_index<'a>(tenants: impl Iterator<Item = &'a Arc<Tenant>>) -> KeyIndex {
    let mut index = KeyIndex::default();
    for t in tenants {
        for k in &t.keys {
            index.insert(
                k.sha256,
                KeyEntry {
                    tenant: t.clone(),
                    id: Arc::from(k.id.as_str()),
                    sha256: k.sha256,
                },
            );
        }
    }
    index
}

#[cfg(test)]
mod tests {
    use super::digests_equal;

    #[test]
    fn digests_are_equal_only_when_every_byte_is() {
        let a: [u8; 32] = std::array::from_fn(|i| i as u8 * 7);
        assert!(digests_equal(&a, &a));
        for i in 0..32 {
            for bit in [0x01, 0x80] {
                let mut b = a;
                b[i] ^= bit;
                assert!(!digests_equal(&a, &b), "byte {i}, bit {bit:#x}");
            }
        }
    }
}
